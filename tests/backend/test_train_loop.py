"""The training loop: the loss falls, resume is exact (also after kill -9), NaN stops with the last
good checkpoint kept, cancel leaves a resumable checkpoint, stage 2 writes a loadable model, stage 3
aligns only the decoder and writes a new one."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lcmsr.progress import Cancelled, Progress
from lcmsr.train import TrainingDiverged, TrainOptions, train_autoencoder, train_consistency, train_decoder
from lcmsr.train import checkpoint as ckpt
from _train_helpers import texture, write_texture_tif
from lcmsr.weights import load_model

torch.set_num_threads(1)


SOURCES = [texture(96, 96, 0), texture(64, 112, 1)]


def options(tmp_path, name, **kw):
    base = dict(sources=SOURCES, scale=4, patch=32, iterations=8, batch=2, lr=1e-3, config="tiny",
                checkpoint_dir=str(tmp_path / name), checkpoint_every=4, val_every=1000, log_every=2,
                device="cpu", lpips=False, seed=3)
    base.update(kw)
    return TrainOptions(**base)


def final_tensors(result):
    return ckpt.load_checkpoint(result.checkpoint).tensors


def assert_same_weights(a, b, prefixes):
    keys = [k for k in a if k.startswith(prefixes)]
    assert keys and set(keys) <= set(b)
    for k in keys:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


class CancelAt(Progress):
    def __init__(self, step):
        self.step, self.seen = step, 0

    def report(self, fraction, message=""):
        self.seen = int(message.split()[1].split("/")[0])

    def cancelled(self):
        return self.seen >= self.step


def test_stage1_loss_falls(tmp_path):
    smooth = [texture(96, 96, 0, noise=2.0), texture(64, 112, 1, noise=2.0)]
    r = train_autoencoder(options(tmp_path, "fall", sources=smooth, iterations=40, log_every=8, lr=2e-3))
    l1 = [h["l1"] for h in r.history if "l1" in h]
    assert r.steps == 40 and len(l1) == 5
    # The untrained decoder is exactly bicubic, so l1[0] is already the bicubic error: any steady fall
    # below it is learning.
    assert l1[-1] < 0.93 * l1[0] and l1[-1] < min(l1[:2]), l1
    assert r.latent_scale and np.isfinite(r.latent_scale)


def test_stage1_resume_after_kill_9_is_exact(tmp_path):
    ref = train_autoencoder(options(tmp_path, "ref", gan_start=2))
    np.save(tmp_path / "a.npy", SOURCES[0])
    np.save(tmp_path / "b.npy", SOURCES[1])
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, torch
        torch.set_num_threads(1)
        from lcmsr.progress import Progress
        from lcmsr.train import TrainOptions, train_autoencoder

        class KillAt5(Progress):
            def report(self, fraction, message=""):
                if message.startswith("step 5/"):
                    os.kill(os.getpid(), signal.SIGKILL)

        src = [np.load({str(tmp_path / 'a.npy')!r}), np.load({str(tmp_path / 'b.npy')!r})]
        train_autoencoder(TrainOptions(sources=src, scale=4, patch=32, iterations=8, batch=2, lr=1e-3, config="tiny",
                          checkpoint_dir={str(tmp_path / 'killed')!r}, checkpoint_every=4, val_every=1000,
                          log_every=2, device="cpu", lpips=False, seed=3, gan_start=2), KillAt5())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "killed")] == ["step-00000004.json"]
    resumed = train_autoencoder(options(tmp_path, "killed", gan_start=2, resume=True))
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert_same_weights(final_tensors(ref), final_tensors(resumed), ("encoder.", "decoder.", "disc.", "opt", "logvar"))
    assert resumed.latent_scale == pytest.approx(ref.latent_scale, rel=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import lcmsr.train.stage1 as stage1

    calls = {"n": 0}
    real_kl = stage1._kl

    def kl_turning_nan(mean, logvar):
        calls["n"] += 1
        value = real_kl(mean, logvar)
        return value * float("nan") if calls["n"] >= 7 else value

    monkeypatch.setattr(stage1, "_kl", kl_turning_nan)
    with pytest.raises(TrainingDiverged, match=r"step 7\b.*step-00000004\.json"):
        train_autoencoder(options(tmp_path, "nan", iterations=10))
    ck = ckpt.load_checkpoint(tmp_path / "nan")
    assert ck.step == 4
    assert all(torch.isfinite(v).all() for k, v in ck.tensors.items() if v.is_floating_point())


def test_stage2_cancel_writes_a_resumable_checkpoint_and_resume_is_exact(tmp_path):
    s1 = train_autoencoder(options(tmp_path, "s1", iterations=4))
    o = dict(stage1=s1.checkpoint, iterations=6, checkpoint_every=100)
    ref = train_consistency(options(tmp_path, "ref", out=str(tmp_path / "ref.safetensors"), **o))
    with pytest.raises(Cancelled):
        train_consistency(options(tmp_path, "cut", out=str(tmp_path / "cut.safetensors"), **o), CancelAt(3))
    assert ckpt.load_checkpoint(tmp_path / "cut").step == 3
    assert not (tmp_path / "cut.safetensors").exists()
    resumed = train_consistency(options(tmp_path, "cut", out=str(tmp_path / "cut.safetensors"), resume=True, **o))
    assert resumed.resumed_from == 3
    assert_same_weights(final_tensors(ref), final_tensors(resumed), ("condnet.", "denoiser.", "ema.", "opt."))
    from safetensors.torch import load_file

    a, b = load_file(ref.model_path), load_file(resumed.model_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_stage2_writes_a_model_that_super_resolves(tmp_path):
    s1 = train_autoencoder(options(tmp_path, "s1", iterations=2, out=str(tmp_path / "ae")))
    assert (tmp_path / "ae.json").exists() and s1.model_path == str(tmp_path / "ae.safetensors")
    val = [texture(64, 64, 9)]
    r = train_consistency(options(tmp_path, "s2", stage1=str(tmp_path / "ae.safetensors"), iterations=3,
                                  val_sources=val, val_every=3, out=str(tmp_path / "m.safetensors")))
    model = load_model(r.model_path)
    assert model.encoder is None and model.info.data_type == "Byte" and model.info.scale == 4
    assert model.info.training["steps"] == 3 and model.info.training["val_psnr"] == pytest.approx(r.val_psnr)
    assert float(model.latent_scale) == pytest.approx(s1.latent_scale, rel=1e-6)
    assert r.bicubic_psnr > 10 and np.isfinite(r.val_psnr)
    out = model.sr(torch.zeros(1, 3, 5, 7))
    assert out.shape == (1, 3, 20, 28)


def _stage2_model(tmp_path, sources=SOURCES):
    train_autoencoder(options(tmp_path, "s1", sources=sources, iterations=2, out=str(tmp_path / "ae")))
    r = train_consistency(options(tmp_path, "s2", sources=sources, stage1=str(tmp_path / "ae.safetensors"),
                                  iterations=2, out=str(tmp_path / "m.safetensors")))
    return r.model_path


def _one_step_psnr(model, hr_u8):
    hr = torch.from_numpy(hr_u8.astype(np.float32))[None] / 127.5 - 1
    from lcmsr.ops import downsample_bicubic

    lr = downsample_bicubic(hr, 4)
    sr = model.sr(lr, steps=1, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    mse = float((sr - hr)[..., 4:-4, 4:-4].pow(2).mean())
    return 10 * np.log10(4.0 / mse)


def test_stage3_tunes_only_the_decoder_and_improves_the_one_step_output(tmp_path):
    from lcmsr.weights import save_model

    smooth = [texture(96, 96, 0, noise=2.0), texture(64, 112, 1, noise=2.0)]
    model = load_model(_stage2_model(tmp_path, smooth))
    # A decoder that is off for the latents inference feeds it (as a briefly trained stage 1 leaves it).
    with torch.no_grad():
        model.decoder.tail.weight.add_(0.05 * torch.randn(model.decoder.tail.weight.shape,
                                                           generator=torch.Generator().manual_seed(0)))
    base = str(save_model(tmp_path / "off.safetensors", model))
    r = train_decoder(options(tmp_path, "s3", sources=smooth, base_model=base, iterations=40, lr=2e-3,
                              log_every=8, pixel_loss="l2", out=str(tmp_path / "m3.safetensors")))
    l2 = [h["l2"] for h in r.history if "l2" in h]
    assert len(l2) == 5 and l2[-1] < 0.93 * l2[0] and l2[-1] < min(l2[:2]), l2
    before, after = load_model(base), load_model(r.model_path)
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("decoder."):
            continue
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)   # CondNet, denoiser, scale: untouched
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    record = after.info.training["decoder_alignment"]
    assert record["steps"] == 40 and record["base_model"] == base and record["pixel_loss"] == "l2"
    assert after.info.training["stage1_steps"] == before.info.training["stage1_steps"]   # history kept
    # What inference returns (one step, fixed noise) got closer to the HR on the pixels it was tuned on.
    assert _one_step_psnr(after, smooth[0]) > _one_step_psnr(before, smooth[0]) + 3.0


def test_stage3_resume_is_exact_and_bad_requests_are_refused(tmp_path):
    base = _stage2_model(tmp_path)
    o = dict(base_model=base, iterations=6, checkpoint_every=100)
    ref = train_decoder(options(tmp_path, "ref", out=str(tmp_path / "ref.safetensors"), **o))
    with pytest.raises(Cancelled):
        train_decoder(options(tmp_path, "cut", out=str(tmp_path / "cut.safetensors"), **o), CancelAt(3))
    assert not (tmp_path / "cut.safetensors").exists()
    resumed = train_decoder(options(tmp_path, "cut", out=str(tmp_path / "cut.safetensors"), resume=True, **o))
    assert resumed.resumed_from == 3
    assert_same_weights(final_tensors(ref), final_tensors(resumed), ("decoder.", "opt."))
    with pytest.raises(ValueError, match="overrides"):
        train_decoder(options(tmp_path, "x", out=str(tmp_path / "x.safetensors"), overrides={"decoder": {}}, **o))
    with pytest.raises(ValueError, match="uint16.*Byte|UInt16.*Byte"):
        train_decoder(options(tmp_path, "y", sources=[texture(96, 96, 0, dtype=np.uint16)],
                              out=str(tmp_path / "y.safetensors"), **o))
    with pytest.raises(ValueError, match="pixel_loss must be one of l1, l2"):
        train_decoder(options(tmp_path, "z", out=str(tmp_path / "z.safetensors"), pixel_loss="l3", **o))
    from lcmsr.weights import ModelFileError

    checkpoint_not_model = str(tmp_path / "ref" / "step-00000006.safetensors")
    with pytest.raises(ModelFileError):
        train_decoder(options(tmp_path, "w", out=str(tmp_path / "w.safetensors"),
                              **dict(o, base_model=checkpoint_not_model)))
    assert not any(p.name.startswith(("x.", "y.", "z.", "w.")) for p in tmp_path.iterdir())


def test_resume_refuses_another_run_and_unfinished_stage1(tmp_path):
    train_autoencoder(options(tmp_path, "a", iterations=4, checkpoint_every=2))
    with pytest.raises(ckpt.CheckpointError, match="patch"):
        train_autoencoder(options(tmp_path, "a", iterations=6, patch=64, resume=True))
    with pytest.raises(Cancelled):
        train_autoencoder(options(tmp_path, "b", iterations=4), CancelAt(2))
    with pytest.raises(ckpt.CheckpointError, match="unfinished"):
        train_consistency(options(tmp_path, "c", stage1=str(tmp_path / "b"), out=str(tmp_path / "m.safetensors")))


def test_cli_trains_all_three_stages(tmp_path):
    pytest.importorskip("osgeo.gdal")
    from lcmsr.cli import main

    path = write_texture_tif(tmp_path / "train.tif")
    common = ["--config", "tiny", "--patch", "32", "--iterations", "3", "--batch", "2", "--device", "cpu",
              "--lr", "1e-3", "--quiet"]
    assert main(["train-autoencoder", path, *common, "--no-lpips", "--checkpoint-dir", str(tmp_path / "ae")]) == 0
    assert main(["train-autoencoder", path, *common[:4], "--iterations", "4", *common[6:], "--no-lpips",
                 "--checkpoint-dir", str(tmp_path / "ae"), "--resume"]) == 0
    assert ckpt.load_checkpoint(tmp_path / "ae").step == 4
    assert main(["train-consistency", path, *common, "--stage1", str(tmp_path / "ae"), "--set",
                 "consistency.loss=pseudo_huber", "--checkpoint-dir", str(tmp_path / "cm"),
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    assert load_model(tmp_path / "m.safetensors").config.consistency.loss == "pseudo_huber"
    assert os.path.exists(tmp_path / "cm" / "step-00000003.json")
    assert main(["train-decoder", path, *common, "--model", str(tmp_path / "m.safetensors"), "--pixel-loss", "l2",
                 "--no-lpips", "--checkpoint-dir", str(tmp_path / "dec"), "--out", str(tmp_path / "m3.safetensors")]) == 0
    aligned = load_model(tmp_path / "m3.safetensors")
    assert aligned.config.consistency.loss == "pseudo_huber"
    assert aligned.info.training["decoder_alignment"]["steps"] == 3


@pytest.mark.parametrize("command,stage", [("train-autoencoder", "autoencoder"), ("train-consistency", "consistency"),
                                           ("train-decoder", "decoder")])
def test_cli_options_are_the_train_options_of_the_stage(command, stage, tmp_path):
    """The CLI's defaults are TrainOptions' for that stage: parsing only the required arguments gives the
    options the backend would fill in itself, and every option the stage takes is there."""
    import dataclasses

    from lcmsr.cli import build_parser
    from lcmsr.commands.train import options_from_args
    from lcmsr.train_options import stage_options

    required = {"train-consistency": ["--stage1", "s1", "--out", "m.safetensors"],
                "train-decoder": ["--model", "m.safetensors", "--out", "m3.safetensors"]}.get(command, [])
    args = build_parser().parse_args([command, "a.tif", *required])
    opts = options_from_args(args)
    expected = TrainOptions(sources=["a.tif"], stage1=opts.stage1, base_model=opts.base_model, out=opts.out)
    assert opts.for_stage(stage) == expected.for_stage(stage)
    assert (opts.batch, opts.lpips_weight, opts.pixel_loss) == {
        "autoencoder": (8, 1.0, "l1"), "consistency": (16, None, None), "decoder": (8, 0.1, "l2")}[stage]
    taken = {f.name for f in stage_options(stage)} - {"sources", "resume"}
    assert taken <= set(vars(args)), taken - set(vars(args))
    assert not {f.name for f in dataclasses.fields(TrainOptions)} - {f.name for f in stage_options(stage)} & set(vars(args))
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "a.tif", *required, "--precision", "fp16"])


def test_train_options_import_without_torch():
    """The plugin lists its training parameters from lcmsr.train_options in a QGIS that may lack torch."""
    probe = ("import sys; sys.modules['torch'] = None; import lcmsr.train_options as o; "
             "print(sorted({'torch', 'numpy', 'osgeo'} & {k for k, v in sys.modules.items() if v is not None}), "
             "o.option_default('batch', 'consistency'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "16"]
