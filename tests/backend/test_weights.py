"""Model files: exact round trip, and every kind of bad file refused with a sentence naming it."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcmsr.config import tiny_config
from lcmsr.model import ModelInfo
from lcmsr.normalization import Normalization
from lcmsr.weights import ModelFileError, load_model, read_info, save_model

from _models_helpers import seeded_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = tiny_config(scale=4, bands=4)
    model = seeded_model(cfg)
    model.latent_scale.fill_(0.7)
    info = ModelInfo(scale=4, bands=4, band_names=["blue", "green", "red", "nir"],
                     normalization=Normalization([1, 2, 3, 4], [900, 1000, 1100, 4000]), config=cfg,
                     training={"steps": 12, "val_psnr": 27.5}, data_type="UInt16")
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_model(path, model, info)
    return model, info, path


def _rewrite(src, dst, tensors=None, metadata=None, drop=None):
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    state = load_file(str(src))
    if drop:
        del state[drop]
    state.update(tensors or {})
    if metadata is not None:
        meta = metadata
    save_file(state, str(dst), metadata=meta)
    return dst


def test_round_trip_gives_bit_identical_sr(saved):
    model, info, path = saved
    loaded = load_model(path)
    assert loaded.encoder is None and not loaded.training
    lr = torch.randn(2, 4, 9, 13)
    noise = torch.randn((2,) + model.latent_shape(9, 13))
    assert torch.equal(model.sr(lr, noise=noise), loaded.sr(lr, noise=noise))
    assert float(loaded.latent_scale) == pytest.approx(0.7)
    assert loaded.info == info
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]   # no temp file left behind


def test_file_holds_only_the_inference_tensors(saved):
    _, _, path = saved
    names = set(load_file(str(path)))
    assert "latent_scale" in names
    assert all(n == "latent_scale" or n.split(".")[0] in {"decoder", "condnet", "denoiser"} for n in names)
    assert not any(n.startswith("encoder.") for n in names)


def test_read_info_reads_the_header(saved):
    _, info, path = saved
    got = read_info(path)
    assert got.band_names == ["blue", "green", "red", "nir"] and got.data_type == "UInt16"
    assert got.format_version == 2 and got.config == info.config


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.safetensors was not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        read_info(tmp_path)


def test_pickles_are_refused(saved, tmp_path):
    model, _, _ = saved
    zipped = tmp_path / "model.pt"
    torch.save(model.state_dict(), zipped)
    with pytest.raises(ModelFileError, match="model.pt is a PyTorch pickle.*refused"):
        load_model(zipped)
    raw = tmp_path / "model.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ModelFileError, match="pickle"):
        read_info(raw)


def test_truncated_and_garbled_files_are_refused(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[:5])
    with pytest.raises(ModelFileError, match="only 5 bytes"):
        load_model(short)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="cut.safetensors is truncated"):
        load_model(cut)
    header_cut = tmp_path / "hcut.safetensors"
    header_cut.write_bytes(data[:40])
    with pytest.raises(ModelFileError, match="truncated or not a safetensors"):
        read_info(header_cut)
    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(struct.pack("<Q", 16) + b"{not json at all" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="garbled.safetensors is not a safetensors file: its header is garbled"):
        load_model(garbled)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2 ** 40) + b"{}")
    with pytest.raises(ModelFileError, match="too large"):
        read_info(huge)


def test_safetensors_without_lcmsr_metadata(saved, tmp_path):
    _, _, path = saved
    other = _rewrite(path, tmp_path / "other.safetensors", metadata={})
    with pytest.raises(ModelFileError, match="other.safetensors .*not an LCMSR model.*'lcmsr' metadata"):
        load_model(other)


def test_wrong_format_version_says_which_is_supported(saved, tmp_path):
    _, info, path = saved
    meta = dict(info.to_dict(), format_version=99)
    future = _rewrite(path, tmp_path / "future.safetensors", metadata={"lcmsr": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="format version 99, but this lcmsr supports format version 1"):
        read_info(future)


def test_missing_tensor_is_named(saved, tmp_path):
    _, _, path = saved
    bad = _rewrite(path, tmp_path / "missing.safetensors", drop="decoder.tail.weight")
    with pytest.raises(ModelFileError, match="missing tensor 'decoder.tail.weight'"):
        load_model(bad)


def test_wrong_shape_names_tensor_expected_and_found(saved, tmp_path):
    _, _, path = saved
    bad = _rewrite(path, tmp_path / "shape.safetensors", tensors={"decoder.tail.bias": torch.zeros(7)})
    with pytest.raises(ModelFileError, match=r"tensor 'decoder.tail.bias' of shape \[7\], expected \[4\]"):
        load_model(bad)


def test_non_finite_values_are_refused(saved, tmp_path):
    _, _, path = saved
    state = load_file(str(path))
    w = state["denoiser.conv_in.weight"].clone()
    w.view(-1)[3] = float("nan")
    bad = _rewrite(path, tmp_path / "nan.safetensors", tensors={"denoiser.conv_in.weight": w})
    with pytest.raises(ModelFileError, match="non-finite.*'denoiser.conv_in.weight'"):
        load_model(bad)


def test_unexpected_tensor_is_refused(saved, tmp_path):
    _, _, path = saved
    bad = _rewrite(path, tmp_path / "extra.safetensors", tensors={"encoder.body.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ModelFileError, match="unexpected tensor 'encoder.body.conv_in.weight'"):
        load_model(bad)


def test_save_is_atomic_when_writing_fails(saved, tmp_path, monkeypatch):
    model, info, path = saved
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"previous model")
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_model(target, model, info)
    assert target.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_info_command_describes_the_file_and_the_environment(saved, capsys):
    from lcmsr.cli import main

    _, _, path = saved
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for expected in ("format version  2", "scale           x4", "blue, green, red, nir", "UInt16",
                     "nir: 4..4000", "val_psnr=27.5", "denoiser"):
        assert expected in out
    assert main(["info", "--diagnostics"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device (auto)" in out
    assert main(["info", str(path.parent / "absent.safetensors")]) == 2
    assert "absent.safetensors was not found" in capsys.readouterr().err


def test_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A valid file whose header length's low byte is 0x80 (the pickle magic) must load."""
    import json
    import struct

    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import load_model, save_model

    path = tmp_path / "m.safetensors"
    model = build_model(tiny_config(), with_encoder=False)
    for pad in range(256):
        model.info.training = {"note": "x" * pad}
        save_model(path, model)
        raw = path.read_bytes()
        if raw[0] == 0x80:
            break
    else:
        raise AssertionError("could not produce a header length ending in 0x80")
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])  # really a safetensors file
    load_model(path)


# ---------------------------------------------------------------- crafted descriptions and degenerate values
# Each file below keeps a VALID checksum (recomputed after the edit), so only the validator can refuse it.

def _craft(src, dst, edit_meta=None, edit_tensors=None):
    from safetensors import safe_open

    from lcmsr.weights import DIGEST_KEY, METADATA_KEY, content_digest

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    tensors = load_file(str(src))
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    text = json.dumps(meta)
    save_file(tensors, str(dst), metadata={METADATA_KEY: text, DIGEST_KEY: content_digest(text, tensors)})
    return dst


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _refused_everywhere(path, match):
    """read_info, check_model, load_model and `lcmsr info` all refuse in one line naming the file."""
    from lcmsr.cli import main
    from lcmsr.weights import check_model

    for reader in (read_info, check_model, load_model):
        with pytest.raises(ModelFileError, match=match) as err:
            reader(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert main(["info", str(path)]) == 2


@pytest.mark.parametrize("where, value", [
    (("decoder", "features"), "8"), (("decoder", "features"), 8.0), (("decoder", "blocks_per_group"), True),
    (("decoder", "norm_groups"), 0), (("denoiser", "head_channels"), 0), (("consistency", "sigma_data"), 0),
    (("decoder", "distill_rate"), float("nan")), (("consistency", "timestep_scaling"), float("inf")),
    (("decoder", "features"), 10 ** 30), (("decoder", "level_widths"), [8] * 20), (("denoiser", "channel_mults"), 2),
    (("schedule", "timesteps"), 1), (("latent_channels",), 65)])
def test_config_values_of_the_wrong_type_or_range_are_refused_naming_the_field(saved, tmp_path, where, value,
                                                                               capsys):
    _, _, path = saved
    bad = _craft(path, tmp_path / "bad.safetensors", _set("config", *where, value))
    _refused_everywhere(bad, "config: " + r"\.".join(where) + " must be")
    assert "bad.safetensors" in capsys.readouterr().err


def test_every_config_field_has_bounds():
    """A new config field must get a type and bounds, or a file could set it to anything."""
    import dataclasses

    from lcmsr import config

    for cls in (config.EncoderConfig, config.DecoderConfig, config.DenoiserConfig, config.ScheduleConfig,
                config.ConsistencyConfig):
        assert {f.name for f in dataclasses.fields(cls)} == set(config._FIELDS[cls.__name__]), cls.__name__
    nested = {"encoder", "condnet", "decoder", "denoiser", "schedule", "consistency"}
    assert {f.name for f in dataclasses.fields(config.ModelConfig)} - nested == set(config._FIELDS["ModelConfig"])


@pytest.mark.parametrize("edit, match", [
    (_set("scale", "4"), "scale must be a whole number"), (_set("bands", 4.0), "bands must be a whole number"),
    (_set("band_names", "abcd"), "band_names must be a list"), (_set("data_type", "UInt64"), "data_type must be"),
    (_set("training", [1]), "training must be a mapping"), (_set("normalization", "lo", ["1", 2, 3, 4]), "lo' and 'hi"),
    (_set("normalization", "hi", [10 ** 400] * 4), "lo' and 'hi"), (_set("format_version", True), "format version")])
def test_description_values_of_the_wrong_type_are_refused(saved, tmp_path, edit, match):
    _, _, path = saved
    _refused_everywhere(_craft(path, tmp_path / "bad.safetensors", edit), match)


def test_a_huge_network_is_refused_before_anything_is_allocated(saved, tmp_path, monkeypatch):
    """More decoder channels than a small file's tensors hold, and 3000 (the 16 GB allocation, beyond the
    memory budget): refused in one line, every network built for them built on the meta device."""
    import lcmsr.weights as weights

    _, _, path = saved
    devices = []

    class Spy(weights.LCMSR):
        def __init__(self, *args, **kwargs):
            devices.append(torch.empty(0).device.type)   # the default device the build allocates on
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(weights, "LCMSR", Spy)
    wide = _craft(path, tmp_path / "wide.safetensors", _set("config", "decoder", "features", 300))
    _refused_everywhere(wide, r"wide\.safetensors describes a network of \d+ parameters, but its \d+ bytes of "
                              "tensor data cannot hold them")
    huge = _craft(path, tmp_path / "huge.safetensors", _set("config", "decoder", "features", 3000))
    _refused_everywhere(huge, r"huge\.safetensors describes a network of \d+ M parameters .* GiB\), "
                              "more than the 2 GiB")
    assert devices and set(devices) == {"meta"}


def test_tensors_the_config_does_not_imply_are_refused_before_loading(saved, tmp_path):
    _, _, path = saved
    fewer = _craft(path, tmp_path / "levels.safetensors", _set("config", "denoiser", "channel_mults", [1, 2, 2]))
    _refused_everywhere(fewer, "missing tensor 'denoiser")
    ints = _craft(path, tmp_path / "ints.safetensors", edit_tensors=lambda t: t.__setitem__(
        "decoder.tail.bias", t["decoder.tail.bias"].to(torch.int32)))
    _refused_everywhere(ints, "tensor 'decoder.tail.bias' stored as I32")


@pytest.mark.parametrize("value", [0.0, 1e-38, -0.5, 1e30, float("inf"), float("nan")])
def test_a_degenerate_latent_scale_is_refused(saved, tmp_path, value):
    _, _, path = saved
    bad = _craft(path, tmp_path / "scale.safetensors",
                 edit_tensors=lambda t: t.__setitem__("latent_scale", torch.tensor(value)))
    _refused_everywhere(bad, "latent_scale")


@pytest.mark.parametrize("data_type, lo, hi", [
    ("UInt16", 0.0, 1e-45), ("UInt16", -1e308, 1e308), ("UInt16", 100.0, 100.001), ("Byte", 0.0, 1e6),
    ("Float32", 1e8, 1e8 + 1), ("Float32", 0.0, 1e-30)])
def test_a_degenerate_normalisation_is_refused(saved, tmp_path, data_type, lo, hi):
    _, _, path = saved
    bad = _craft(path, tmp_path / "norm.safetensors", lambda m: m.update(
        data_type=data_type, normalization={"lo": [lo] * 4, "hi": [hi] * 4}))
    _refused_everywhere(bad, "normalisation of band 1")


def test_sane_normalisations_pass():
    """The check's bounds leave real data alone: 8-bit, a flat UInt16 band, reflectance, stretched units."""
    Normalization([0.0], [255.0]).check_range("Byte")
    Normalization([65534.0], [65535.0]).check_range("UInt16")
    Normalization([0.0, -0.01], [0.4, 0.02]).check_range("Float32")
    Normalization([0.0], [1.0107]).check_range("Float32", stretched=True)


def test_huge_weights_are_refused(saved, tmp_path):
    _, _, path = saved
    bad = _craft(path, tmp_path / "big.safetensors", edit_tensors=lambda t: t.__setitem__(
        "denoiser.conv_in.weight", t["denoiser.conv_in.weight"] * 1e30))
    with pytest.raises(ModelFileError, match=r"big\.safetensors has weights of magnitude .* 'denoiser.conv_in.weight'"):
        load_model(bad)


def test_save_model_never_writes_a_file_the_reader_refuses(saved, tmp_path):
    model, info, _ = saved
    copy = seeded_model(info.config)
    copy.latent_scale.fill_(0.0)
    with pytest.raises(ValueError, match="latent_scale 0"):
        save_model(tmp_path / "m.safetensors", copy, info)
    assert not (tmp_path / "m.safetensors").exists()


def test_escape_codes_in_the_file_never_reach_a_terminal(saved, tmp_path, capsys):
    from lcmsr.cli import main

    _, _, path = saved
    esc = "\x1b[2J\x1b[31m"
    shady = _craft(path, tmp_path / "shady.safetensors", lambda m: m.update(
        band_names=[esc + "blue", "green\nOK", "red\u202e", "nir"], training={esc + "steps": 3, "note": esc}))
    info = read_info(shady)
    assert info.band_names[0] == "\\x1b[2J\\x1b[31mblue" and info.band_names[1] == "green\\nOK"
    assert load_model(shady).info.band_names == info.band_names
    assert main(["info", str(shady)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2Jblue" not in out and "\\x1b[31mblue" in out
    key = _craft(path, tmp_path / "key.safetensors", _set("config", "decoder", esc + "x", 1))
    with pytest.raises(ModelFileError) as err:
        read_info(key)
    assert "\x1b" not in str(err.value) and "\\x1b[31mx" in str(err.value)


def test_overlapping_tensor_bytes_are_refused(saved, tmp_path):
    """Tensors sharing bytes would let a small file claim large tensors; safetensors' tiling rule holds."""
    _, _, path = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in sorted(header) if k != "__metadata__" and header[k]["data_offsets"][0] > 0)
    size = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
    header[name]["data_offsets"] = [0, size]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    bad = tmp_path / "overlap.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(ModelFileError, match="overlap.safetensors is not a valid safetensors file"):
        read_info(bad)


def test_a_fifo_as_model_file_is_refused_instead_of_blocking_the_read(tmp_path):
    import os

    from lcmsr.weights import ModelFileError, read_info

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match=r"model\.safetensors is a named pipe \(FIFO\), not a regular file"):
        read_info(fifo)


def test_loading_a_model_file_does_not_import_sympy():
    """The validator builds the network on the meta device; a meta op that imports sympy broke loading
    inside QGIS, where Debian's older sympy can come first on the path (seen in the desktop test)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'sympy': raise ImportError('sympy blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from lcmsr.weights import load_model\n"
            f"load_model({str(REPO / 'resources' / 'models' / 'lcmsr_x4_rgb_small.safetensors')!r})\n"
            "print('loaded')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-2000:]


def test_int8_storage_quarters_the_file_and_keeps_the_output(saved, tmp_path):
    """int8 storage (a scale per output channel): about a quarter of fp32's bytes, weights within half a step of
    their channel's scale, the same tensors loaded; a scale that is missing, of the wrong shape, not positive, or
    on a weight that is not int8 is refused in one line."""
    import copy

    from safetensors.torch import load_file, save_file

    from lcmsr.weights import DIGEST_KEY, METADATA_KEY, QSCALE_SUFFIX, content_digest, load_model, save_model

    _, _, saved = saved
    model = load_model(saved)
    small = tmp_path / "int8.safetensors"
    info = copy.deepcopy(model.info)
    info.training = dict(info.training, storage="int8")
    save_model(small, model, info, storage="int8")
    assert small.stat().st_size < 0.35 * Path(saved).stat().st_size
    back = load_model(small)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        step = float(a.abs().reshape(a.shape[0], -1).amax(1).max()) / 127 if a.ndim >= 2 else 1e-3 * float(a.abs().max() + 1)
        assert float((a - b).abs().max()) <= step / 2 + 1e-6, name

    tensors = load_file(str(small))
    from safetensors import safe_open
    with safe_open(str(small), framework="pt") as f:
        meta = f.metadata()
    name = next(n for n, t in tensors.items() if t.dtype == torch.int8)

    def rewrite(changed: dict, path) -> str:
        save_file(changed, str(path), metadata={METADATA_KEY: meta[METADATA_KEY],
                                                DIGEST_KEY: content_digest(meta[METADATA_KEY], changed)})
        return str(path)

    cases = {
        "without its scale": {k: v for k, v in tensors.items() if k != name + QSCALE_SUFFIX},
        "one float per output channel": {**tensors, name + QSCALE_SUFFIX: tensors[name + QSCALE_SUFFIX][:1].clone()},
        "not a positive finite number": {**tensors, name + QSCALE_SUFFIX: -tensors[name + QSCALE_SUFFIX]},
        "which is not stored as int8": {**tensors, name: tensors[name].float().contiguous()},
    }
    for i, (words, changed) in enumerate(cases.items()):
        with pytest.raises(ModelFileError, match=words):
            load_model(rewrite(changed, tmp_path / f"bad{i}.safetensors"))


def test_a_model_file_gets_the_users_usual_mode_not_a_private_one(saved, tmp_path):
    """safetensors creates its file 0600; a model a user writes (fine-tuned, re-stored) is shared like any file:
    0666 less the umask."""
    import stat

    from lcmsr.weights import load_model, save_model

    _, _, path = saved
    umask = os.umask(0o022)
    os.umask(umask)
    out = save_model(tmp_path / "shared.safetensors", load_model(path))
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
