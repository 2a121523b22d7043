"""Schedule, consistency function, CT/KD losses and EMA (the samplers: test_samplers.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from lcmsr.config import ConsistencyConfig, ScheduleConfig, tiny_config
from lcmsr.diffusion import EMA, NoiseSchedule, boundary_scalings, consistency_function, ct_loss, kd_loss, make_betas
from lcmsr.diffusion.consistency import gap_at, sample_timesteps


class Junk(nn.Module):
    """A 'denoiser' whose output has nothing to do with its input."""

    def forward(self, x_t, t, cond, scale, out_size):
        return torch.full_like(x_t, 123.0) + cond


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x_t, t, cond, scale, out_size):
        return self.w * x_t + cond


def test_linear_beta_schedule_matches_ldm():
    betas = make_betas(ScheduleConfig())
    assert len(betas) == 1000
    assert math.isclose(float(betas[0]), 0.0015, rel_tol=1e-12)
    assert math.isclose(float(betas[-1]), 0.0155, rel_tol=1e-12)
    assert math.isclose(float(betas[500]), (0.0015 ** 0.5 + 500 / 999 * (0.0155 ** 0.5 - 0.0015 ** 0.5)) ** 2,
                        rel_tol=1e-9)
    s = NoiseSchedule(ScheduleConfig())
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 10, 999])
    ab = torch.cumprod(1 - betas, 0)[t].float().reshape(3, 1, 1, 1)
    torch.testing.assert_close(s.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    assert bool((s.sigmas[1:] > s.sigmas[:-1]).all())


def test_consistency_function_is_exactly_the_identity_at_t0():
    opts = ConsistencyConfig()
    x = torch.randn(2, 4, 3, 3)
    out = consistency_function(Junk(), x, torch.tensor([0, 0]), torch.randn_like(x), 4, (24, 24), opts, 1000)
    assert torch.equal(out, x)
    c_skip, c_out = boundary_scalings(torch.tensor(0), 1000, opts)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0


def test_boundary_scalings_follow_the_lcm_formula():
    opts = ConsistencyConfig()
    c_skip, c_out = boundary_scalings(torch.tensor(999), 1000, opts)
    s = 10 * 999 / 1000
    assert math.isclose(float(c_skip), 0.25 / (s * s + 0.25))
    assert math.isclose(float(c_out), s / math.sqrt(s * s + 0.25))
    assert float(c_skip) < 0.01 and float(c_out) > 0.99   # at t = T-1 f is (almost) the denoiser's x0


def _expected_ct(net, z0, cond, schedule, opts, seed, gap):
    """The CT loss recomputed by hand from the same random draws (uniform t2, then noise)."""
    g = torch.Generator().manual_seed(seed)
    t2 = torch.randint(0, 1000, (z0.shape[0],), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    t1 = (t2 - gap).clamp_min(0)
    pred = consistency_function(net, schedule.q_sample(z0, t2, noise), t2, cond, 4, (32, 32), opts, 1000)
    target = consistency_function(net, schedule.q_sample(z0, t1, noise), t1, cond, 4, (32, 32), opts, 1000)
    return (pred - target).pow(2).mean()


def test_ct_loss_uses_the_same_noise_at_t2_and_t1_and_a_stop_grad_target():
    schedule = NoiseSchedule(ScheduleConfig())
    opts = ConsistencyConfig()
    net, ema_net = Linear(), Linear()
    z0, cond = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    loss, stats = ct_loss(net, ema_net, z0, cond, 4, (32, 32), schedule, opts,
                          generator=torch.Generator().manual_seed(5))
    assert stats["gap"] == 250
    with torch.no_grad():
        expected = _expected_ct(net, z0, cond, schedule, opts, 5, 250)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert net.w.grad is not None and net.w.grad != 0
    assert ema_net.w.grad is None           # the target is stop-grad


def test_x0_weight_adds_the_regression_of_the_one_step_output_on_the_clean_latent():
    schedule = NoiseSchedule(ScheduleConfig())
    net = Linear()
    z0, cond = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    plain, stats0 = ct_loss(net, None, z0, cond, 4, (32, 32), schedule, ConsistencyConfig(),
                            generator=torch.Generator().manual_seed(5))
    mixed, stats = ct_loss(net, None, z0, cond, 4, (32, 32), schedule, ConsistencyConfig(x0_weight=0.5),
                           generator=torch.Generator().manual_seed(5))
    # Same draws as the CT term: t2 first, then the noise.
    g = torch.Generator().manual_seed(5)
    t2 = torch.randint(0, 1000, (4,), generator=g)
    x_t2 = schedule.q_sample(z0, t2, torch.randn(z0.shape, generator=g))
    with torch.no_grad():
        x0 = (consistency_function(net, x_t2, t2, cond, 4, (32, 32), ConsistencyConfig(), 1000) - z0).pow(2).mean()
    assert "x0" not in stats0 and stats["x0"] == pytest.approx(float(x0), rel=1e-5)
    torch.testing.assert_close(mixed, plain + 0.5 * x0)
    with pytest.raises(ValueError, match="x0_weight"):
        tiny_config().replace(consistency=ConsistencyConfig(x0_weight=-1.0))


def test_ct_loss_target_network_choice():
    schedule = NoiseSchedule(ScheduleConfig())
    net, other = Linear(), Linear()
    with torch.no_grad():
        other.w.fill_(-3.0)
    z0, cond = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)

    def run(opts, target):
        return ct_loss(net, target, z0, cond, 4, (32, 32), schedule, opts,
                       generator=torch.Generator().manual_seed(1))[0]

    with_ema = run(ConsistencyConfig(), other)
    no_ema = run(ConsistencyConfig(ema_target=False), other)
    self_target = run(ConsistencyConfig(), None)
    assert not torch.allclose(with_ema, no_ema)
    torch.testing.assert_close(no_ema, self_target)


def test_ct_loss_options_pseudo_huber_and_lognormal():
    schedule = NoiseSchedule(ScheduleConfig())
    z0, cond = torch.randn(8, 4, 4, 4), torch.randn(8, 4, 4, 4)
    opts = ConsistencyConfig(loss="pseudo_huber", timestep_sampling="lognormal")
    loss, _ = ct_loss(Linear(), None, z0, cond, 4, (32, 32), schedule, opts, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    t = sample_timesteps(5000, schedule, opts, torch.Generator().manual_seed(0))
    assert int(t.min()) >= 1 and int(t.max()) <= 999
    # iCT's lognormal(-1.1, 2) puts most mass at small noise: the median sigma is exp(-1.1) ~ 0.33
    median_sigma = float(schedule.sigmas[t.median()])
    assert 0.2 < median_sigma < 0.5


def test_gap_curriculum_shrinks_from_gap_to_gap_min():
    on = ConsistencyConfig(gap=250, gap_min=10, gap_curriculum=True)
    gaps = [gap_at(step, 1000, on) for step in range(0, 1000, 50)]
    assert gaps[0] == 250 and gaps[-1] >= 10 and gaps[-1] < 20
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))
    assert gap_at(999, 1000, ConsistencyConfig(gap=250)) == 250     # off: the paper's fixed gap


def test_kd_loss_is_mse_and_does_not_train_the_teacher():
    cond = torch.randn(2, 4, 3, 3, requires_grad=True)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = kd_loss(cond, z)
    torch.testing.assert_close(loss, ((cond - z) ** 2).mean())
    loss.backward()
    assert z.grad is None and cond.grad is not None


def test_ema_warmup_update_and_state_round_trip():
    net = Linear()
    ema = EMA(net, decay=0.9999)
    assert math.isclose(ema.current_decay(), 0.1)
    with torch.no_grad():
        net.w.fill_(1.5)
    ema.update(net)                                 # decay 0.1: 0.1 * 0.5 + 0.9 * 1.5
    assert math.isclose(float(ema.module.w), 1.4, rel_tol=1e-6)
    assert math.isclose(ema.current_decay(), 2 / 11)
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.9999
    state = ema.state_dict()
    assert set(state) == {"shadow.w", "num_updates"}
    other = EMA(Linear())
    other.load_state_dict(state)
    assert other.num_updates == 10 ** 6 and float(other.module.w) == float(ema.module.w)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_pseudo_huber_loss_is_ict_formula_per_sample_with_its_default_c():
    """iCT's pseudo-Huber: mean over the batch of sqrt(||f_θ - f_target||² + c²) - c, with c given or
    0.00054 * sqrt(d) (d: values per sample); the same draws as the MSE loss."""
    schedule = NoiseSchedule(ScheduleConfig())
    z0, cond = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    net = Linear()
    with torch.no_grad():
        mse = _expected_ct(net, z0, cond, schedule, ConsistencyConfig(), 7, 250)
        g = torch.Generator().manual_seed(7)
        t2 = torch.randint(0, 1000, (4,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        t1 = (t2 - 250).clamp_min(0)
        pred = consistency_function(net, schedule.q_sample(z0, t2, noise), t2, cond, 4, (32, 32), ConsistencyConfig(), 1000)
        target = consistency_function(net, schedule.q_sample(z0, t1, noise), t1, cond, 4, (32, 32), ConsistencyConfig(), 1000)
    sq = (pred - target).pow(2).sum(dim=(1, 2, 3))     # per sample
    assert torch.allclose(sq.sum() / pred.numel(), mse)   # the same draws as the MSE test
    for c_opt, c in ((0.5, 0.5), (None, 0.00054 * math.sqrt(64))):
        opts = ConsistencyConfig(loss="pseudo_huber", huber_c=c_opt)
        loss, _ = ct_loss(net, None, z0, cond, 4, (32, 32), schedule, opts, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(loss, (torch.sqrt(sq + c * c) - c).mean())
        assert not torch.allclose(loss, mse)


def test_gap_curriculum_halves_in_equal_stages_and_ct_loss_follows_the_step():
    on = ConsistencyConfig(gap=250, gap_min=10, gap_curriculum=True)
    # log2(250 / 10) = 4.6: five stages of 200 steps each, 250 // 2^k, never below gap_min.
    assert [gap_at(s, 1000, on) for s in (0, 199, 200, 400, 600, 799, 800, 999)] == [250, 250, 125, 62, 31, 31, 15, 15]
    assert gap_at(1000, 1000, on) == 15 and gap_at(5000, 1000, on) == 15   # past the end: the last stage
    fine = ConsistencyConfig(gap=8, gap_min=1, gap_curriculum=True)
    assert [gap_at(s, 4, fine) for s in range(4)] == [8, 4, 2, 1]
    short = ConsistencyConfig(gap=15, gap_min=10, gap_curriculum=True)    # less than one halving: fixed
    assert {gap_at(s, 100, short) for s in range(100)} == {15}
    schedule = NoiseSchedule(ScheduleConfig())
    z0 = torch.randn(2, 4, 4, 4)
    for step, gap in ((0, 250), (900, 15)):
        _, stats = ct_loss(Linear(), None, z0, z0, 4, (32, 32), schedule, on, step=step, total_steps=1000,
                           generator=torch.Generator().manual_seed(0))
        assert stats["gap"] == gap


def test_lognormal_timesteps_come_from_the_generator_and_stay_in_1_to_T_minus_1():
    schedule = NoiseSchedule(ScheduleConfig())
    opts = ConsistencyConfig(timestep_sampling="lognormal")
    a, b = (sample_timesteps(64, schedule, opts, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b)           # reproducible: a resumed run draws the same timesteps
    assert not torch.equal(a, sample_timesteps(64, schedule, opts, torch.Generator().manual_seed(4)))
    t = schedule.timestep_for_sigma(torch.tensor([1e-9, float(schedule.sigmas[500]), 1e9]))
    assert t.tolist() == [1, 500, 999]   # never t = 0 (f is the identity there), never past T-1


def test_ema_defaults_to_the_paper_decay_and_refuses_a_state_of_another_model():
    ema = EMA(Linear())
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.9999
    state = ema.state_dict()
    with pytest.raises(RuntimeError):
        EMA(Junk2()).load_state_dict(state)   # a missing or extra weight is an error, not ignored
    with pytest.raises(ValueError, match="num_updates"):
        EMA(Linear()).load_state_dict({"shadow.w": torch.tensor(1.0)})


class Junk2(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.v = nn.Parameter(torch.tensor(0.5))
