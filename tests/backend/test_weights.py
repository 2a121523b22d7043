"""Model files: exact round trip, and every kind of bad file refused with a sentence naming it."""
from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcmsr.config import tiny_config
from lcmsr.model import ModelInfo
from lcmsr.normalization import Normalization
from lcmsr.weights import ModelFileError, load_model, read_info, save_model

from _models_helpers import seeded_model


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
