"""The samplers: each update rule against an independent computation, the timesteps and draws each takes,
the number of denoiser calls, the registry, and noise on the real shipped model."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmsr import choices
from lcmsr.config import ScheduleConfig, tiny_config
from lcmsr.diffusion import NoiseSchedule, Sampler, make_betas, make_sampler
from lcmsr.ops import upsample_bicubic

from _models_helpers import CallCounter, seeded_model

REPO = Path(__file__).resolve().parents[2]
SHAPE = (2, 4, 3, 5)
# The schedule's cumulative alphas computed here in float64, apart from NoiseSchedule's own buffers.
ABAR = torch.cumprod(1 - make_betas(ScheduleConfig()), 0)


class ToyPredictor:
    """A stand-in x0-predictor that depends on both x_t and t and records every call."""

    def __init__(self):
        self.calls: list[tuple[torch.Tensor, list[int]]] = []
        self.bias = torch.linspace(-1, 1, int(np.prod(SHAPE[1:]))).reshape(SHAPE[1:])

    def __call__(self, x_t, t):
        self.calls.append((x_t.clone(), t.tolist()))
        return self.f(x_t, t)

    def f(self, x_t, t):
        """The same map, for the expected values: no recording."""
        return 0.6 * x_t + 1e-3 * t.reshape(-1, 1, 1, 1).to(x_t.dtype) * self.bias

    def at(self, x, t):
        return self.f(x, torch.full((x.shape[0],), t))

    @property
    def timesteps(self):
        return [ts[0] for _, ts in self.calls]


def renoise(z, t, eps):
    a = ABAR[t].float()
    return a.sqrt() * z + (1 - a).sqrt() * eps


def run(name, steps, noise=None, generator=None, cond=None):
    predictor = ToyPredictor()
    cond = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)) if cond is None else cond
    out = make_sampler(name, NoiseSchedule(ScheduleConfig()), steps).sample(predictor, cond, noise, generator)
    return out, predictor


def fields(n, seed=0):
    return torch.randn((n,) + SHAPE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- update rules

def test_one_step_consistency_is_f_of_the_noise_at_t_max():
    noise = fields(1)[0]
    out, p = run("consistency", 1, noise=noise)
    assert p.timesteps == [999] and torch.equal(p.calls[0][0], noise)   # x_T is the given noise
    torch.testing.assert_close(out, p.at(noise, 999))


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_multistep_consistency_renoises_f_to_the_next_timestep_with_a_fresh_draw(steps):
    noise = fields(steps)
    out, p = run("consistency", steps, noise=noise)
    ts = [round(999 * (1 - i / steps)) for i in range(steps)]
    assert p.timesteps == ts
    x = noise[0]
    for i, t in enumerate(ts):
        torch.testing.assert_close(p.calls[i][0], x)
        z = p.at(x, t)
        if i + 1 < steps:
            x = renoise(z, ts[i + 1], noise[i + 1])
    torch.testing.assert_close(out, z)


def test_draws_beyond_the_given_noise_come_from_the_generator():
    noise = fields(1)[0]
    out, p = run("consistency", 2, noise=noise, generator=torch.Generator().manual_seed(4))
    fresh = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x = renoise(p.at(noise, 999), 500, fresh)
    torch.testing.assert_close(p.calls[1][0], x)
    torch.testing.assert_close(out, p.at(x, 500))


def test_ddim_step_is_the_deterministic_eta0_update():
    noise = fields(1)
    out, p = run("ddim", 3, noise=noise)
    ts = [999, 666, 333]
    assert p.timesteps == ts
    x = noise[0]
    for i, t in enumerate(ts):
        torch.testing.assert_close(p.calls[i][0], x)
        x0 = p.at(x, t)
        if i + 1 < len(ts):
            a_t, a_prev = ABAR[t].float(), ABAR[ts[i + 1]].float()
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()          # the noise x_t implies
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps       # x_prev with that same noise
    torch.testing.assert_close(out, x0)


def test_ddpm_step_samples_the_posterior_by_bayes_rule():
    noise = fields(3)
    out, p = run("ddpm", 3, noise=noise)
    ts = [999, 666, 333]
    assert p.timesteps == ts
    x = noise[0]
    for i, t in enumerate(ts):
        torch.testing.assert_close(p.calls[i][0], x)
        x0 = p.at(x, t)
        if i + 1 < len(ts):
            # Prior x_prev ~ N(sqrt(a_prev) x0, 1 - a_prev); likelihood x_t ~ N(sqrt(r) x_prev, 1 - r), r = a_t/a_prev.
            a_t, a_prev = ABAR[t], ABAR[ts[i + 1]]
            r = a_t / a_prev
            var = 1 / (1 / (1 - a_prev) + r / (1 - r))
            mean = var * (a_prev.sqrt() / (1 - a_prev) * x0.double() + r.sqrt() / (1 - r) * x.double())
            x = (mean + var.sqrt() * noise[i + 1].double()).float()
    torch.testing.assert_close(out, x0)


def test_faithful_returns_the_condition_draws_nothing_and_calls_nothing():
    cond = torch.randn(SHAPE)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out, p = run("faithful", 1, noise=fields(1)[0], generator=g, cond=cond)
    assert torch.equal(out, cond) and p.calls == []
    assert torch.equal(g.get_state(), state)
    sampler = make_sampler("condnet", NoiseSchedule(ScheduleConfig()), 4)
    assert sampler.noise_draws == 0 and sampler.timesteps() == []


# ---------------------------------------------------------------- what each takes: timesteps, draws, calls

@pytest.mark.parametrize("name,steps", [("consistency", 1), ("consistency", 4), ("ddim", 1), ("ddim", 7),
                                        ("ddpm", 5), ("faithful", 1)])
def test_each_sampler_uses_exactly_its_noise_draws_and_one_call_per_timestep(name, steps):
    sampler = make_sampler(name, NoiseSchedule(ScheduleConfig()), steps)
    noise = fields(max(sampler.noise_draws, 1))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out, p = run(name, steps, noise=noise, generator=g)
    assert torch.equal(g.get_state(), state)              # the given fields were enough
    assert p.timesteps == sampler.timesteps() and len(p.calls) == (0 if name == "faithful" else steps)
    for d in range(sampler.noise_draws):                  # and each of them is used
        other = noise.clone()
        other[d] += 1
        assert not torch.equal(run(name, steps, noise=other)[0], out), f"draw {d} of {name} is unused"


def test_timesteps_are_evenly_spaced_from_t_max_and_never_zero():
    schedule = NoiseSchedule(ScheduleConfig())
    # A last call at t = 0 would be wasted, since f(x, 0) = x.
    ts = make_sampler("ddim", schedule, 50).timesteps()
    assert ts[0] == 999 and ts[-1] == 20 and len(ts) == 50
    assert make_sampler("consistency", schedule, 4).timesteps() == [999, 749, 500, 250]
    assert make_sampler("ddpm", schedule, 2).timesteps() == [999, 500]


@pytest.mark.parametrize("name,steps", [("consistency", 1), ("consistency", 4), ("ddim", 10), ("ddpm", 10)])
def test_samplers_return_the_clean_latent_of_a_perfect_predictor(name, steps):
    x0 = torch.randn(SHAPE)
    sampler = make_sampler(name, NoiseSchedule(ScheduleConfig()), steps)
    out = sampler.sample(lambda x_t, t: x0, torch.zeros(SHAPE), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0)


@pytest.mark.parametrize("name,steps", [("consistency", 1), ("consistency", 3), ("ddim", 5), ("ddpm", 7),
                                        ("faithful", 2)])
def test_sr_calls_the_denoiser_once_per_step(name, steps):
    model = seeded_model(tiny_config(), with_encoder=False)
    counter = CallCounter(model.denoiser)
    model.denoiser = counter
    model.sr(torch.randn(1, 3, 8, 8), steps=steps, sampler=name)
    assert counter.calls == (0 if name == "faithful" else steps)   # the regression latent needs no denoiser


def test_sampler_arguments_are_checked():
    schedule = NoiseSchedule(ScheduleConfig())
    with pytest.raises(ValueError, match="1 to 4"):
        make_sampler("consistency", schedule, 5)
    with pytest.raises(ValueError, match="1..1000"):
        make_sampler("ddim", schedule, 0)
    with pytest.raises(ValueError) as err:
        make_sampler("euler", schedule, 2)
    assert str(err.value) == "unknown sampler 'euler': use one of consistency, faithful, ddim, ddpm"
    with pytest.raises(ValueError, match=r"noise has shape \(1, 4, 3, 3\), expected \(2, 4, 3, 5\)"):
        run("consistency", 1, noise=torch.randn(1, 4, 3, 3))


def test_the_registry_is_torch_free_and_names_every_shipped_sampler():
    assert choices.SAMPLER_NAMES == ("consistency", "faithful", "ddim", "ddpm")   # the plugin's enum order
    assert set(choices.SAMPLER_LABELS) == set(choices.SAMPLER_NAMES)
    assert choices.canonical_sampler("condnet") == "faithful"
    for name in choices.SAMPLER_NAMES:
        sampler = make_sampler(name, NoiseSchedule(ScheduleConfig()), 1)
        assert isinstance(sampler, Sampler) and sampler.name == name
    source = Path(choices.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+(torch|numpy)", source, re.M)


@pytest.mark.parametrize("name,steps", [("consistency", 3), ("ddpm", 3), ("faithful", 1)])
def test_the_raster_pipeline_fixes_every_draw_a_sampler_takes(tmp_path, name, steps):
    """Tiles agree with one big tile only if every noise field is the position-seeded one (a draw left to
    the per-tile generator would differ from tile to tile)."""
    from test_raster_standin import StandInModel, read_raster, textured, write_raster
    from lcmsr.raster.pipeline import SROptions, superresolve

    src = write_raster(tmp_path / "in.tif", textured(40, 40).round().astype(np.uint8))
    model = StandInModel(scale=2, noise_weight=0.2)   # the real samplers over an identity predictor
    out = {}
    for tile, seed in ((32, 3), (64, 3), (32, 4)):
        dst = tmp_path / f"{tile}_{seed}.tif"
        superresolve(src, dst, model, SROptions(tile=tile, overlap=8, seed=seed, steps=steps, sampler=name,
                                                output_type="float32"))
        out[tile, seed] = read_raster(dst).astype(np.float64)
    assert np.abs(out[32, 3] - out[64, 3]).max() < 1.0
    assert (np.abs(out[32, 3] - out[32, 4]).mean() > 2) == (name != "faithful")


# ---------------------------------------------------------------- a new sampler: one file, one registry line

def _design_example():
    """The "Adding a sampler" example of docs/DESIGN.md: (file name, its source, the registry line)."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    section = text[text.index("### Adding a sampler"):]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    source, line = blocks[0], blocks[1].strip()
    name = re.search(r"^# backend/lcmsr/diffusion/samplers/(\w+)\.py", source, re.M).group(1)
    return name, source, line


def test_a_new_sampler_is_one_file_plus_one_registry_line(tmp_path, monkeypatch):
    """The DESIGN.md example, as written there, runs through LCMSR.sr; only its module path differs
    (it lives in tmp_path, not in the package)."""
    from conftest import write_tiny_model
    from lcmsr.weights import load_model

    module, source, line = _design_example()
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    name, (path, cls, label) = next(iter(ast.literal_eval("{" + line + "}").items()))
    assert path == f"lcmsr.diffusion.samplers.{module}"
    monkeypatch.setitem(choices.SAMPLERS, name, (module, cls, label))

    model = load_model(write_tiny_model(tmp_path / "tiny.safetensors", scale=4))
    with torch.no_grad():   # give the zero-initialised output layers weights: the denoiser must matter
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    noise = torch.randn((1,) + model.latent_shape(8, 8))
    out = model.sr(lr, sampler=name, noise=noise)
    assert model.noise_draws(1, name) == 1
    # Independently: CondNet's latent noised to T/2 with the given noise, one consistency step, decoded.
    with torch.no_grad():
        cond = model.condnet(upsample_bicubic(lr, 4))
        t = torch.tensor([500])
        a = ABAR[500].float()
        z = model.consistency(a.sqrt() * cond + (1 - a).sqrt() * noise, t, cond, (32, 32))
        torch.testing.assert_close(out, model.decode(lr, z))
    assert not torch.equal(out, model.sr(lr, sampler="faithful"))
    assert sys.modules[module].__file__.startswith(str(tmp_path))
    del sys.modules[module]


# ---------------------------------------------------------------- the real shipped model

@pytest.fixture(scope="module")
def shipped():
    """The shipped RGB model and a 48x48 crop of the committed NEON LR sample, in model space."""
    from test_raster_standin import read_raster
    from lcmsr.weights import load_model

    model = load_model(REPO / "resources" / "models" / "lcmsr_x4_rgb_small.safetensors")
    lr = read_raster(REPO / "resources" / "sample" / "neon_lr.tif")[:, 40:88, 40:88].astype(np.float32)
    return model, model.info.normalization.forward(torch.from_numpy(lr)[None])


def _dn(model, y):
    return model.info.normalization.inverse(y)


def test_noise_changes_the_shipped_models_consistency_output(shipped):
    model, x = shipped
    shape = (1,) + model.latent_shape(48, 48)
    a, b = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2))
    ya = model.sr(x, noise=a, generator=torch.Generator().manual_seed(5))
    # The given noise is what counts: a different generator changes nothing, a different noise changes detail.
    assert torch.equal(ya, model.sr(x, noise=a, generator=torch.Generator().manual_seed(6)))
    yb = model.sr(x, noise=b)
    rms = float((_dn(model, ya) - _dn(model, yb)).pow(2).mean().sqrt())
    assert rms > 2.0, f"two noise fields differ by only {rms:.2f} DN RMS"            # 6.2 measured
    # ...around the regression answer: a plausible SR, not decoded noise (that is ~18 DN off).
    faithful = _dn(model, model.sr(x, sampler="faithful"))
    assert float((_dn(model, ya) - faithful).pow(2).mean().sqrt()) < 9.0


def test_faithful_ignores_noise_and_is_deterministic_on_the_shipped_model(shipped):
    model, x = shipped
    shape = (1,) + model.latent_shape(48, 48)
    y = model.sr(x, sampler="faithful", noise=torch.randn(shape), generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, model.sr(x, sampler="faithful", noise=torch.randn(shape)))
    assert torch.equal(y, model.sr(x, sampler="condnet", generator=torch.Generator().manual_seed(2)))
    assert not torch.equal(y, model.sr(x, noise=torch.randn(shape)))
