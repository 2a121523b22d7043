"""Training does what METHOD.md says, term by term: each test fails when the method is wired wrong
(a loss term dropped or its weight ignored, the wrong target, the wrong weights shipped, the latent
scale measured on the wrong inputs), not only when a formula's text changes.

Every test builds a stage of the tiny config on small real patches (resources/sample/neon_hr.tif)
and watches what one step does: the gradient it sends to the parameters each term should train
(an optimiser stand-in records it and changes nothing), what the networks are called with, or
what the files hold.  Seconds each.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lcmsr.diffusion.consistency import consistency_function, gap_at
from lcmsr.ops import downsample_bicubic, upsample_bicubic
from lcmsr.progress import Progress
from lcmsr.train import TrainOptions, train_autoencoder, train_consistency
from lcmsr.train import checkpoint as ckpt
from lcmsr.train.data import PatchSampler, SourceSet, compute_normalization
from lcmsr.train.ddp import init_distributed
from lcmsr.train.loop import build_config
from lcmsr.train.stage1 import AutoencoderStage
from lcmsr.train.stage2 import ConsistencyStage, load_stage1
from lcmsr.train.stage3 import DecoderAlignStage

SAMPLE_HR = Path(__file__).resolve().parents[2] / "resources" / "sample" / "neon_hr.tif"


def options(**changes) -> TrainOptions:
    base = dict(sources=[str(SAMPLE_HR)], config="tiny", scale=4, patch=32, batch=4, iterations=3, lr=1e-3,
                device="cpu", precision="fp32", lpips=False, log_every=1, checkpoint_every=1000)
    base.update(changes)
    return TrainOptions(**base)


def ready(stage, **changes):
    """``stage`` set up as run_training would (without training), and a sampler of real patches."""
    torch.manual_seed(0)
    opts = options(**changes).for_stage(stage.name)
    stage.attach(opts, init_distributed("cpu"), Progress())
    sset = SourceSet.open(opts.sources, opts.bands)
    norm = stage.base_normalization or compute_normalization(sset, np.random.default_rng(0))
    stage.setup(build_config(opts, len(sset.bands), stage.base_config), norm, sset)
    return stage, PatchSampler(sset, opts.scale, opts.patch, norm, seed=3, multiple=stage.config.hr_multiple)


class _GradientRecorder:
    """Stands in for a stage's optimiser: keeps the gradients one step computed and changes no weight."""

    def __init__(self, named):
        self.named, self.grads = named, None
        self.param_groups = [{"lr": 0.0}]

    def zero_grad(self, set_to_none=True):
        for p in self.named.values():
            p.grad = None

    def step(self):
        self.grads = {k: None if p.grad is None else p.grad.detach().clone() for k, p in self.named.items()}


def step_gradients(stage, hr, lr, named, step=0):
    real, stage.opt = stage.opt, _GradientRecorder(named)
    try:
        stage.train_step(hr, lr, step)
        return stage.opt.grads
    finally:
        stage.opt = real


def reference_gradients(loss, named):
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True, retain_graph=True)
    return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(named.items(), grads)}


def distance(got, want, prefix=""):
    """Relative L2 distance between two gradient sets, over the parameters whose name starts with ``prefix``."""
    keys = [k for k in want if k.startswith(prefix)]
    diff = sum(float(((0 if got[k] is None else got[k]) - want[k]).pow(2).sum()) for k in keys)
    norm = sum(float(want[k].pow(2).sum()) for k in keys)
    return math.sqrt(diff / max(norm, 1e-30))


def abar(t):
    """METHOD.md's schedule, written here independently: beta = linspace(sqrt(0.0015), sqrt(0.0155), 1000)^2."""
    betas = torch.linspace(0.0015 ** 0.5, 0.0155 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[t.long()].reshape(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("stage1")
    return train_autoencoder(options(iterations=2, checkpoint_dir=str(folder))).checkpoint


@pytest.fixture(scope="module")
def stage2_run(stage1_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage2")
    return train_consistency(options(iterations=3, stage1=stage1_checkpoint, checkpoint_dir=str(folder / "ck"),
                                     out=str(folder / "model.safetensors")))


# --- stage 1 ------------------------------------------------------------------------------------------------

def test_stage1_step_follows_pixel_plus_lpips_with_learned_logvar_plus_weighted_kl():
    """The gradient of one stage-1 step is that of the paper's loss
    sum(pixel + w_lpips * LPIPS) / exp(logvar) + logvar, per sample, + w_kl * KL, and each term moves it."""
    w_lpips, w_kl = 0.7, 3.0
    stage, sampler = ready(AutoencoderStage(), lpips=True, lpips_weight=w_lpips, pixel_loss="l1",
                           overrides={"consistency": {"kl_weight": w_kl}})
    assert stage.lpips is not None, "LPIPS weights are needed for this test (make metric-weights)"
    with torch.no_grad():
        stage.net.logvar.fill_(0.4)  # the learned weighting away from 1
    hr, lr = sampler.sample(2)
    named = dict(stage.net.named_parameters())
    noise = stage.posterior_gen.get_state()
    got = step_gradients(stage, hr, lr, named)

    stage.posterior_gen.set_state(noise)  # the same posterior sample as the step drew
    post = stage.model.encoder(hr, upsample_bicubic(lr, 4))
    rec = stage.model.decoder(lr, post.sample(stage.posterior_gen))
    pixel = (rec - hr).abs()
    lpips = stage.lpips(hr, rec).float().view(-1, 1, 1, 1)
    logvar = stage.net.logvar
    kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).sum(dim=(1, 2, 3)).mean()
    b = hr.shape[0]

    def grads(rec_term, weighted=True, kl_weight=w_kl):
        nll = ((rec_term / logvar.exp() + logvar) if weighted else rec_term).sum() / b
        return reference_gradients(nll + kl_weight * kl, named)

    want = grads(pixel + w_lpips * lpips)
    for part in ("encoder.", "decoder.", "logvar"):
        assert distance(got, want, part) < 1e-4, f"{part}: the step's gradient is not the paper loss's"
    # Each mutation moves the gradient far beyond that tolerance (so the assertions above catch it).
    wrong = {"pixel term dropped": grads(w_lpips * lpips), "LPIPS term dropped": grads(pixel),
             "LPIPS weight ignored": grads(pixel + lpips),
             "log-variance weighting dropped": grads(pixel + w_lpips * lpips, weighted=False),
             "KL dropped": grads(pixel + w_lpips * lpips, kl_weight=0.0),
             "KL weight ignored (paper's 1e-6)": grads(pixel + w_lpips * lpips, kl_weight=1e-6)}
    for what, bad in wrong.items():
        assert max(distance(bad, want, part) for part in ("encoder.", "decoder.", "logvar")) > 1e-2, what


def test_stage1_gan_term_has_the_adaptive_weight_and_the_discriminator_the_hinge_loss():
    """From gan_start on, the generator's gradient gains d_weight * grad(-D(rec)) with
    d_weight = disc_weight * ||grad_last nll|| / (||grad_last g|| + 1e-4) at the decoder's last layer, and the
    discriminator takes a hinge step on real HR against the detached reconstruction; before gan_start, neither."""
    w_disc = 0.8
    stage, sampler = ready(AutoencoderStage(), gan_start=1, disc_weight=w_disc)
    hr, lr = sampler.sample(2)
    named = dict(stage.net.named_parameters())
    named_d = dict(stage.disc.named_parameters())
    noise = stage.posterior_gen.get_state()
    real_disc_opt, stage.opt_disc = stage.opt_disc, _GradientRecorder(named_d)
    grads = {}
    for step in (0, 1):  # off, then on
        stage.posterior_gen.set_state(noise)
        grads[step] = step_gradients(stage, hr, lr, named, step=step)
    disc_grads, stage.opt_disc = stage.opt_disc.grads, real_disc_opt

    stage.posterior_gen.set_state(noise)
    post = stage.model.encoder(hr, upsample_bicubic(lr, 4))
    rec = stage.model.decoder(lr, post.sample(stage.posterior_gen))
    logvar = stage.net.logvar
    nll = ((rec - hr).abs() / logvar.exp() + logvar).sum() / hr.shape[0]
    kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).sum(dim=(1, 2, 3)).mean()
    base = nll + stage.config.consistency.kl_weight * kl
    g_loss = -stage.disc(rec).mean()
    last = stage.model.decoder.tail.weight
    g_nll, g_g = (torch.autograd.grad(x, last, retain_graph=True)[0] for x in (nll, g_loss))
    d_weight = w_disc * float(g_nll.norm() / (g_g.norm() + 1e-4))
    assert distance(grads[0], reference_gradients(base, named)) < 1e-4, "the GAN term acts before gan_start"
    want = reference_gradients(base + d_weight * g_loss, named)
    assert distance(grads[1], want) < 1e-4
    assert distance(reference_gradients(base, named), want, "decoder.") > 1e-2  # the GAN term shows
    assert distance(reference_gradients(base + d_weight / w_disc * g_loss, named), want, "decoder.") > 1e-2
    logits = stage.disc(torch.cat([hr, rec.detach()]))  # one batch, as the step's BatchNorm sees it
    real, fake = logits[:2], logits[2:]
    hinge = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    assert distance(disc_grads, reference_gradients(hinge, named_d)) < 1e-4


def _record_encoder_calls(monkeypatch):
    from lcmsr.nn.encoder import ResidualEncoder

    calls = []
    original = ResidualEncoder.forward

    def forward(self, hr, lr_up):
        post = original(self, hr, lr_up)
        calls.append({"hr": hr.detach().clone(), "lr_up": lr_up.detach().clone(), "mean": post.mean.detach().clone(),
                      "grad": torch.is_grad_enabled()})
        return post

    monkeypatch.setattr(ResidualEncoder, "forward", forward)
    return calls


def test_stage1_latent_scale_is_one_over_the_std_of_e_hr_lr_up(tmp_path, monkeypatch):
    """latent_scale = 1/std(E(HR, LR↑).mean) on the measuring batch (not E(HR, HR), not a sample), and it is
    stored with the stage-1 weights that stage 2 starts from."""
    torch.set_num_threads(1)
    calls = _record_encoder_calls(monkeypatch)
    said = []
    progress = Progress()
    progress.info = said.append
    result = train_autoencoder(options(iterations=1, checkpoint_dir=str(tmp_path / "ck")), progress)
    assert any(f"latent_scale {result.latent_scale:.4g}" in m for m in said), said  # the caller's progress hears it
    measured = [c for c in calls if not c["grad"]]  # after the training step, without gradient
    assert measured, "the latent scale was not measured with the encoder"
    for c in measured:
        lr_up = upsample_bicubic(downsample_bicubic(c["hr"], 4), 4)
        assert (c["hr"] - lr_up).abs().max() > 0.2  # the HR patch has detail bicubic loses ...
        assert (c["lr_up"] - lr_up).abs().max() < 0.05, "the encoder's second input is not LR↑ of its HR"
    means = torch.cat([c["mean"].double().flatten() for c in measured])
    expected = 1.0 / float(means.std(unbiased=False))
    assert result.latent_scale == pytest.approx(expected, rel=1e-4)
    hr_hr = torch.cat([_encode(tmp_path, c["hr"], c["hr"]) for c in measured])
    assert abs(1.0 / float(hr_hr.std(unbiased=False)) - expected) > 1e-3 * expected  # E(HR, HR) would differ
    saved = ckpt.load_checkpoint(result.checkpoint)
    assert float(saved.tensors["latent_scale"]) == pytest.approx(expected, rel=1e-4)
    assert load_stage1(result.checkpoint)  # marked measured: stage 2 accepts it


def _encode(tmp_path, hr, second):
    from lcmsr.model import build_model

    s1 = ckpt.load_checkpoint(tmp_path / "ck")
    model = build_model(build_config(options(), 3))
    ckpt.load_module("encoder", model.encoder, s1.tensors, "stage 1")
    with torch.no_grad():
        return model.encoder(hr, second).mean.double().flatten()


# --- stage 2 ------------------------------------------------------------------------------------------------

def _snapshot(stage):
    return ({k: g.get_state() for k, g in stage.generators.items()}, stage.ema.state_dict())


def _restore(stage, snap):
    for k, state in snap[0].items():
        stage.generators[k].set_state(state)
    stage.ema.load_state_dict(snap[1])


def test_stage2_kd_term_teaches_condnet_the_scaled_stage1_latent_with_kd_weight(stage1_checkpoint):
    """CondNet's gradient grows by kd_weight * grad MSE(CondNet(LR↑), latent_scale * E(HR, LR↑)) with kd_weight."""
    stage, sampler = ready(ConsistencyStage(load_stage1(stage1_checkpoint)), stage1=stage1_checkpoint)
    hr, lr = sampler.sample(2)
    named = {f"condnet.{k}": p for k, p in stage.model.condnet.named_parameters()}
    snap = _snapshot(stage)
    with_weight = {}
    for w in (0.0, 2.5):
        stage.config.consistency.kd_weight = w
        with_weight[w] = step_gradients(stage, hr, lr, named)
        _restore(stage, snap)
    lr_up = upsample_bicubic(lr, 4)
    with torch.no_grad():
        z = stage.model.encoder(hr, lr_up).mean * stage.model.latent_scale
    assert float(stage.model.latent_scale) != pytest.approx(1.0)  # the measured scale, so scaling shows
    kd = reference_gradients(F.mse_loss(stage.model.condnet(lr_up), z), named)
    added = {k: with_weight[2.5][k] - with_weight[0.0][k] for k in named}
    assert distance(added, {k: 2.5 * g for k, g in kd.items()}) < 1e-3


def test_stage2_ct_target_is_the_ema_at_t2_minus_gap_with_the_same_noise(stage1_checkpoint):
    """One CT step: the online denoiser sees x_t2, the EMA (without gradient) sees x_t1 with
    t1 = max(t2 - gap, 0) and the same noise; the denoiser's gradient is that of MSE(f_θ, f_EMA)."""
    stage, sampler = ready(ConsistencyStage(load_stage1(stage1_checkpoint)), stage1=stage1_checkpoint)
    with torch.no_grad():  # an EMA that differs from the online weights, as it does after some training
        for p in stage.ema.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = {"online": [], "ema": []}

    def recorder(name):
        def hook(module, args, output):
            calls[name].append({"x": args[0].detach().clone(), "t": torch.as_tensor(args[1]).clone(),
                                "cond": args[2].detach().clone(), "grad": torch.is_grad_enabled(),
                                "scale": args[3], "out_size": tuple(args[4])})
        return hook

    stage.model.denoiser.register_forward_hook(recorder("online"))
    stage.ema.module.register_forward_hook(recorder("ema"))
    hr, lr = sampler.sample(4)
    named = {f"denoiser.{k}": p for k, p in stage.model.denoiser.named_parameters()}
    snap = _snapshot(stage)
    got = step_gradients(stage, hr, lr, named)
    _restore(stage, snap)  # the EMA as the step saw it (its update followed the step)

    assert len(calls["online"]) == 1 and calls["online"][0]["grad"], calls["online"]
    assert len(calls["ema"]) == 1 and not calls["ema"][0]["grad"], "the CT target is not computed by the EMA"
    online, target = calls["online"][0], calls["ema"][0]
    for call in (online, target):  # the embeddings get the SR factor and the HR size of the patch
        assert call["scale"] == 4 and call["out_size"] == (32, 32), call
    t2, t1 = online["t"].long(), target["t"].long()
    gap = gap_at(0, stage.opts.iterations, stage.config.consistency)
    assert (t2 >= gap).any() and (t2 > 0).all()  # the draw exercises the gap (fixed seed)
    assert torch.equal(t1, (t2 - gap).clamp_min(0)), (t2, t1)
    with torch.no_grad():
        z = (stage.model.encoder(hr, upsample_bicubic(lr, 4)).mean * stage.model.latent_scale).double()
    noise2 = (online["x"].double() - abar(t2).sqrt() * z) / (1 - abar(t2)).sqrt()
    noise1 = (target["x"].double() - abar(t1).sqrt() * z) / (1 - abar(t1)).sqrt()
    assert float(noise2.std()) == pytest.approx(1.0, abs=0.3)
    assert torch.allclose(noise1, noise2, atol=1e-3), "x_t2 and x_t1 were not made with the same noise"
    cfg, T = stage.config.consistency, 1000
    pred = consistency_function(stage.model.denoiser, online["x"], t2, online["cond"], 4, (32, 32), cfg, T)
    with torch.no_grad():
        f_ema = consistency_function(stage.ema.module, target["x"], t1, target["cond"], 4, (32, 32), cfg, T)
        f_online = consistency_function(stage.model.denoiser, target["x"], t1, target["cond"], 4, (32, 32), cfg, T)
    want = reference_gradients(F.mse_loss(pred, f_ema), named)
    assert distance(got, want) < 1e-3
    wrong = reference_gradients(F.mse_loss(pred, f_online), named)
    assert distance(wrong, want) > 1e-2  # an online target would have been caught


def test_stage2_ema_follows_the_online_denoiser_with_the_warmup_decay(stage1_checkpoint):
    """After each step the EMA moves toward the new online weights by 1 - min(decay, (1+n)/(10+n))."""
    stage, sampler = ready(ConsistencyStage(load_stage1(stage1_checkpoint)), stage1=stage1_checkpoint)
    for n in range(2):
        before = {k: p.detach().clone() for k, p in stage.ema.module.named_parameters()}
        hr, lr = sampler.sample(2)
        stage.train_step(hr, lr, n)
        d = min(stage.config.consistency.ema_decay, (1 + n) / (10 + n))
        online = dict(stage.model.denoiser.named_parameters())
        moved = 0.0
        for k, p in stage.ema.module.named_parameters():
            expected = before[k] + (1 - d) * (online[k].detach() - before[k])
            assert torch.allclose(p, expected, atol=1e-6), f"step {n}: EMA of {k} is not the warm-up average"
            moved = max(moved, float((p - before[k]).abs().max()))
        assert moved > 1e-6, "the EMA did not move"


def test_stage2_model_file_ships_the_ema_denoiser_and_the_stage1_decoder(stage2_run, stage1_checkpoint):
    from safetensors.torch import load_file

    shipped = load_file(stage2_run.model_path)
    last = ckpt.load_checkpoint(stage2_run.checkpoint).tensors
    s1 = ckpt.load_checkpoint(stage1_checkpoint).tensors
    denoiser = [k for k in shipped if k.startswith("denoiser.")]
    assert denoiser
    differs = 0
    for k in denoiser:
        name = k[len("denoiser."):]
        assert torch.equal(shipped[k], last[f"ema.shadow.{name}"]), f"{k} is not the EMA weight"
        differs += not torch.equal(shipped[k], last[k])
    assert differs, "the EMA and the online denoiser are equal: the test would not see which one shipped"
    for k in (k for k in shipped if k.startswith(("condnet.", "decoder."))):
        assert torch.equal(shipped[k], (last if k.startswith("condnet.") else s1)[k]), k
    assert float(shipped["latent_scale"]) == pytest.approx(float(s1["latent_scale"]))
    assert not any(k.startswith("encoder.") for k in shipped)


def test_stage2_model_file_carries_the_stage1_normalisation_and_the_training_record(stage2_run, stage1_checkpoint):
    """What the plugin reads back from the file: the normalisation the weights were trained under (stage 1's),
    the data type and band names of the training data, and the record of both stages."""
    from lcmsr.normalization import Normalization
    from lcmsr.weights import load_model

    info = load_model(stage2_run.model_path).info
    s1 = ckpt.load_checkpoint(stage1_checkpoint)
    sset = SourceSet.open([str(SAMPLE_HR)], None)
    assert info.normalization == Normalization.from_dict(s1.state["run"]["normalization"])
    assert (info.scale, info.bands, info.data_type, info.band_names) == (4, 3, sset.data_type, sset.band_names)
    t = info.training
    assert (t["steps"], t["stage1_steps"], t["stage1"], t["patch"], t["batch"], t["lr"], t["world_size"]) == \
        (3, 2, str(s1.path), 32, 4, 1e-3, 1)
    assert t["data"] == [str(SAMPLE_HR)] and t["bands"] == sset.bands and t["seed"] == options().seed
    assert t["latent_scale"] == pytest.approx(float(s1.tensors["latent_scale"]))
    assert s1.state["seconds"] <= t["seconds"] <= stage2_run.seconds + s1.state["seconds"]  # both stages' time
    assert t["stage1_val_psnr"] == s1.state["val_psnr"]
    assert {"val_data", "val_psnr", "bicubic_psnr", "date"} <= set(t)


# --- stage 3 ------------------------------------------------------------------------------------------------

def _stage3(stage2_run, **changes):
    from lcmsr.weights import load_model

    base = load_model(stage2_run.model_path)
    return ready(DecoderAlignStage(base, stage2_run.model_path), base_model=stage2_run.model_path,
                 out="unused.safetensors", **changes)


@pytest.mark.parametrize("pixel", ["l1", "l2"])
def test_stage3_step_follows_pixel_plus_weighted_lpips_on_the_decoder(stage2_run, pixel):
    w = 0.6
    stage, sampler = _stage3(stage2_run, lpips=True, lpips_weight=w, pixel_loss=pixel)
    assert stage.lpips is not None, "LPIPS weights are needed for this test (make metric-weights)"
    seen = []
    stage.model.decoder.register_forward_hook(lambda m, args, out: seen.append([a.detach().clone() for a in args]))
    hr, lr = sampler.sample(2)
    named = {f"decoder.{k}": p for k, p in stage.model.decoder.named_parameters()}
    got = step_gradients(stage, hr, lr, named)
    assert len(seen) == 1
    out = stage.model.decoder(*seen[0])
    pixel = ((out - hr).abs() if pixel == "l1" else (out - hr).pow(2)).mean()
    lpips = stage.lpips(hr, out).float().mean()
    want = reference_gradients(pixel + w * lpips, named)
    assert distance(got, want) < 1e-4
    wrong = {"pixel dropped": w * lpips, "LPIPS dropped": pixel, "LPIPS weight ignored": pixel + lpips}
    for what, bad in wrong.items():
        assert distance(reference_gradients(bad, named), want) > 1e-2, what


def test_stage3_leaves_condnet_and_denoiser_untouched(stage2_run):
    stage, sampler = _stage3(stage2_run)
    frozen = {k: v.detach().clone() for k, v in stage.model.state_dict().items()
              if k.startswith(("condnet.", "denoiser."))}
    decoder = {k: v.detach().clone() for k, v in stage.model.decoder.state_dict().items()}
    for step in range(2):
        stage.train_step(*sampler.sample(2), step)
        for name in ("condnet", "denoiser"):
            assert all(p.grad is None for p in getattr(stage.model, name).parameters()), f"{name} got a gradient"
    after = stage.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(stage.model.decoder.state_dict()[k], v) for k, v in decoder.items())


def test_stage3_decoder_learns_on_the_latent_that_one_step_inference_decodes(stage2_run):
    """The decoder's input in a stage-3 step is D's input in LCMSR.sr(steps=1) for the same x_T:
    f(x_T, T-1, CondNet(LR↑)) / latent_scale, not a nearby timestep and not multiplied by the scale."""
    stage, sampler = _stage3(stage2_run)
    seen = []
    stage.model.decoder.register_forward_hook(lambda m, args, out: seen.append(args[1].detach().clone()))
    hr, lr = sampler.sample(2)
    noise_state = stage.noise_gen.get_state()
    step_gradients(stage, hr, lr, {f"decoder.{k}": p for k, p in stage.model.decoder.named_parameters()})
    stage.noise_gen.set_state(noise_state)
    x_T = torch.randn((2, stage.config.latent_channels, 4, 4), generator=stage.noise_gen)
    with torch.no_grad():
        stage.model.sr(lr, steps=1, noise=x_T)
    assert len(seen) == 2
    assert torch.equal(seen[0], seen[1])   # bit for bit: f at T-2 instead of T-1 differs by ~1e-6 only


def test_stage3_lpips_only_when_asked_and_weighted_and_a_cosine_learning_rate(stage2_run):
    from lcmsr.train_options import DECODER_LR

    assert _stage3(stage2_run, lpips=False)[0].lpips is None
    assert _stage3(stage2_run, lpips=True, lpips_weight=0.0)[0].lpips is None
    assert _stage3(stage2_run, lr=2e-3)[0].opt.param_groups[0]["lr"] == 2e-3   # a given lr wins
    stage, sampler = _stage3(stage2_run, lr=None, iterations=8)
    assert stage.learning_rate == DECODER_LR and stage.opt.param_groups[0]["lr"] == DECODER_LR
    assert [stage._lr_at(s) for s in (0, 4, 8, 12)] == pytest.approx([DECODER_LR, DECODER_LR / 2, 0.0, 0.0])
    stage.train_step(*sampler.sample(2), 2)
    assert stage.opt.param_groups[0]["lr"] == pytest.approx(DECODER_LR * 0.5 * (1 + math.cos(math.pi * 2 / 8)))


# --- optimisers ---------------------------------------------------------------------------------------------

def test_optimisers_and_learning_rates_follow_the_paper(stage1_checkpoint):
    """Adam β=(0.5, 0.9) for E, D, logvar and the discriminator at 3.6e-5 per batch of 8; AdamW for CondNet and
    the denoiser at 1.6e-4 per batch of 16 (linear in the batch); the EMA decay from the config."""
    from lcmsr.train_options import PAPER_LR

    s1, _ = ready(AutoencoderStage(), lr=None, gan_start=0)
    for opt, params in ((s1.opt, s1.net.parameters()), (s1.opt_disc, s1.disc.parameters())):
        group = opt.param_groups[0]
        assert type(opt) is torch.optim.Adam and group["betas"] == (0.5, 0.9)
        assert group["lr"] == pytest.approx(PAPER_LR["autoencoder"][0] * 4 / 8) == s1.learning_rate
        assert {id(p) for p in group["params"]} == {id(p) for p in params}
    s2, _ = ready(ConsistencyStage(load_stage1(stage1_checkpoint)), stage1=stage1_checkpoint, lr=None,
                  overrides={"consistency": {"ema_decay": 0.5}})
    group = s2.opt.param_groups[0]
    assert type(s2.opt) is torch.optim.AdamW
    assert group["lr"] == pytest.approx(PAPER_LR["consistency"][0] * 4 / 16) == s2.learning_rate
    trained = list(s2.model.condnet.parameters()) + list(s2.model.denoiser.parameters())
    assert {id(p) for p in group["params"]} == {id(p) for p in trained}
    assert s2.ema.decay == 0.5
    for stage in (AutoencoderStage(), ConsistencyStage(load_stage1(stage1_checkpoint))):  # a given lr wins
        stage, _ = ready(stage, stage1=stage1_checkpoint, lr=2e-3)
        assert stage.learning_rate == 2e-3 and stage.opt.param_groups[0]["lr"] == 2e-3


def test_stage1_adaptive_gan_weight_is_clamped_ratio_of_gradient_norms():
    """d_weight = disc_weight * clamp(||∇nll|| / (||∇g|| + 1e-4), 0, 1e4) at the decoder's last weight."""
    stage, _ = ready(AutoencoderStage(), gan_start=0, disc_weight=0.8)
    last = stage.model.decoder.tail.weight
    unit = torch.ones_like(last) / math.sqrt(last.numel())     # a direction of norm 1
    for n_nll, n_g, want in ((1e-3, 1e-3, 1e-3 / 1.1e-3), (2.0, 8.0, 2.0 / (8.0 + 1e-4)), (1e3, 1e-5, 1e4)):
        w = stage._adaptive_weight((last * unit).sum() * n_nll, (last * unit).sum() * n_g)
        assert float(w) == pytest.approx(0.8 * want, rel=1e-4), (n_nll, n_g)


def test_stage1_kl_is_zero_at_the_prior_and_half_the_squared_mean_per_value():
    from lcmsr.train.stage1 import _kl

    zero = torch.zeros(2, 4, 3, 3)
    assert float(_kl(zero, zero)) == 0.0
    assert float(_kl(zero + 1.0, zero)) == pytest.approx(0.5 * 4 * 3 * 3)   # summed per sample, mean over the batch
