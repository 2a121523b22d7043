"""A model's default sampler (issue 27 item 4): chosen by scripts/choose_sampler.py's stated rule from the
validation figures, written in the model file, validated there as untrusted input, shown by `lcmsr info`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

GOOD = {"sampler": "faithful", "steps": 1, "rule": "the rule", "why": "the figures"}


def _tiny(path, default_sampler=None) -> str:
    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(0)
    model = build_model(tiny_config(scale=4, bands=3), with_encoder=False)
    model.info.default_sampler = default_sampler
    return str(save_model(path, model))


def _rewrite_metadata(path, change) -> None:
    """Change the file's description and re-sign it, so the checksum passes and the validator must judge."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lcmsr.weights import DIGEST_KEY, METADATA_KEY, content_digest

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    data = json.loads(meta[METADATA_KEY])
    change(data)
    text = json.dumps(data)
    save_file(tensors, str(path), metadata={METADATA_KEY: text, DIGEST_KEY: content_digest(text, tensors)})


def test_default_sampler_round_trips_and_files_without_it_still_load(tmp_path):
    from lcmsr.weights import check_model

    assert check_model(_tiny(tmp_path / "a.safetensors", GOOD)).default_sampler == GOOD
    assert check_model(_tiny(tmp_path / "b.safetensors")).default_sampler is None


@pytest.mark.parametrize("bad, words", [
    ({"sampler": "magic", "steps": 1, "rule": "r", "why": "w"}, "sampler must be one of"),
    ({"sampler": "consistency", "steps": 9, "rule": "r", "why": "w"}, "steps must be 1..4"),
    ({"sampler": "consistency", "steps": True, "rule": "r", "why": "w"}, "steps must be a int"),
    ({"sampler": "faithful", "steps": 3, "rule": "r", "why": "w"}, "must be 1 for the faithful"),
    ({"sampler": "faithful", "steps": 1, "rule": "r"}, "with the keys"),
    ({"sampler": "faithful", "steps": 1, "rule": "r", "why": "w", "code": "x"}, "with the keys"),
    ({"sampler": "faithful", "steps": 1, "rule": "r" * 5000, "why": "w"}, "longer than"),
    ("faithful", "with the keys"),
])
def test_a_crafted_default_sampler_is_refused_in_one_line(tmp_path, bad, words):
    from lcmsr.weights import ModelFileError, check_model, read_info

    path = _tiny(tmp_path / "m.safetensors")
    _rewrite_metadata(path, lambda d: d.update(default_sampler=bad))
    for reader in (read_info, check_model):
        with pytest.raises(ModelFileError, match=words) as caught:
            reader(path)
        assert "\n" not in str(caught.value) and "m.safetensors" in str(caught.value)


def test_the_rule_takes_the_best_psnr_under_the_lpips_cap_else_the_best_lpips():
    from choose_sampler import choose

    bic = {"psnr": 22.0, "lpips": 0.70}
    figures = {("faithful", 1): {"psnr": 22.5, "lpips": 0.40}, ("consistency", 1): {"psnr": 22.3, "lpips": 0.35},
               ("consistency", 2): {"psnr": 22.9, "lpips": 0.45}}
    assert choose(figures, bic)[0] == ("faithful", 1)            # 2 steps has more PSNR but LPIPS 0.64x bicubic
    figures[("consistency", 2)]["lpips"] = 0.41
    assert choose(figures, bic)[0] == ("consistency", 2)
    over = {k: dict(v, lpips=0.6) for k, v in figures.items()}
    over[("consistency", 1)]["lpips"] = 0.5
    best, why = choose(over, bic)
    assert best == ("consistency", 1) and "lowest LPIPS" in why
    tie = {("faithful", 1): {"psnr": 22.5, "lpips": 0.3}, ("consistency", 1): {"psnr": 22.501, "lpips": 0.3}}
    assert choose(tie, bic)[0] == ("faithful", 1)                # within 0.005 dB: fewer model calls


def test_choose_sampler_writes_the_choice_and_lcmsr_info_shows_it(tmp_path):
    from lcmsr.weights import check_model, load_model

    path = _tiny(tmp_path / "m.safetensors")
    figures = tmp_path / "eval.json"
    figures.write_text(json.dumps({"mean": {
        "bicubic": {"psnr": 22.0, "ssim": 0.5, "lpips": 0.7},
        "faithful (CondNet latent, no noise)": {"psnr": 22.2, "ssim": 0.5, "lpips": 0.5},
        "LCMSR, 1 step": {"psnr": 22.1, "ssim": 0.5, "lpips": 0.35},
        "LCMSR, 4-step consistency": {"psnr": 21.0, "ssim": 0.4, "lpips": 0.40}}}))
    env = {"PYTHONPATH": str(REPO / "backend"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    before = load_model(path).state_dict()
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "choose_sampler.py"), "--model", path, "--eval",
                           str(figures), "--write"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    chosen = check_model(path).default_sampler
    assert (chosen["sampler"], chosen["steps"]) == ("consistency", 1)   # faithful's LPIPS is 0.71x bicubic's
    assert "0.6x bicubic" in chosen["rule"] and "faithful +0.20 dB" in chosen["why"]
    after = load_model(path).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)         # the weights are untouched
    info = subprocess.run([sys.executable, "-m", "lcmsr", "info", path], env=env, capture_output=True, text=True)
    assert "default sampler consistency, 1 step (used when no sampler is given)" in info.stdout, info.stdout


def test_lcmsr_sr_uses_the_model_default_unless_a_sampler_or_steps_is_given(tmp_path, capsys, caplog):
    gdal = pytest.importorskip("osgeo.gdal")
    from lcmsr.cli import main
    from lcmsr.raster.io import PROVENANCE_PREFIX

    torch.set_num_threads(1)
    model = _tiny(tmp_path / "m.safetensors", GOOD)
    lr = str(tmp_path / "lr.tif")   # a 32 x 32 window of the sample: four runs in seconds
    gdal.Translate(lr, str(REPO / "resources" / "sample" / "neon_lr.tif"), srcWin=[0, 0, 32, 32])

    def sampler_of(*extra):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.tif"
        assert main(["sr", lr, str(out), "--model", model, "--device", "cpu", "--quiet", "--ignore-domain",
                     *extra]) == 0
        meta = gdal.Open(str(out)).GetMetadata()
        return meta[f"{PROVENANCE_PREFIX}SAMPLER"], meta[f"{PROVENANCE_PREFIX}STEPS"]

    assert sampler_of() == ("faithful", "1")
    captured = capsys.readouterr()
    assert "the model's default" in captured.err + captured.out + caplog.text
    assert sampler_of("--sampler", "consistency") == ("consistency", "1")
    assert sampler_of("--steps", "2") == ("consistency", "2")
    # The uncertainty raster needs noise: the faithful default gives way to the method's sampler.
    assert sampler_of("--uncertainty", str(tmp_path / "u.tif")) == ("consistency", "1")


def test_a_models_default_does_not_leak_into_the_next_raster_of_a_batch(tmp_path):
    """One SROptions for many rasters (lcmsr batch): the default of one model is settled on a copy."""
    from lcmsr.progress import Progress
    from lcmsr.raster.pipeline import SROptions, with_model_sampler
    from lcmsr.weights import read_info

    named = _tiny(tmp_path / "m.safetensors", GOOD)
    options = SROptions()
    settled = with_model_sampler(options, read_info(named), Progress())
    assert (settled.sampler, settled.steps) == (GOOD["sampler"], GOOD["steps"])
    assert (options.sampler, options.steps) == (None, None)
    plain = with_model_sampler(options, SimpleNamespace(default_sampler=None), Progress())
    assert (plain.sampler, plain.steps) == ("consistency", 1)
    given = with_model_sampler(SROptions(steps=3), read_info(named), Progress())
    assert (given.sampler, given.steps) == ("consistency", 3)
