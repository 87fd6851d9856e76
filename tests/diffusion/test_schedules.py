import math

import pytest
import torch

from kinema.diffusion.schedules import (
    CosineSchedule,
    DDPMLinearSchedule,
    InterpolatedCosineSchedule,
    ShiftedCosineSchedule,
    effective_resolution,
)

SCHEDULES = [
    CosineSchedule(),
    CosineSchedule(-15.0, 10.0),
    ShiftedCosineSchedule(resolution=256),
    InterpolatedCosineSchedule.from_resolutions(32, 256),
    InterpolatedCosineSchedule(shift_at_0=-1.0, shift_at_1=3.0),
    DDPMLinearSchedule(),
]
T = torch.linspace(0, 1, 2001, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_strictly_decreasing_and_variance_preserving(schedule):
    lam = schedule.logsnr(T)
    assert bool((lam[1:] < lam[:-1]).all())
    alpha, sigma = schedule.alpha_sigma(T)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T), atol=1e-14, rtol=0)
    torch.testing.assert_close(torch.sigmoid(lam) + torch.sigmoid(-lam), torch.ones_like(T), atol=1e-14, rtol=0)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_inverse_round_trip(schedule):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(schedule.t(schedule.logsnr(t)), t, atol=1e-9, rtol=0)
    lam = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, 57, dtype=torch.float64)
    torch.testing.assert_close(schedule.logsnr(schedule.t(lam)), lam, atol=1e-7, rtol=1e-9)


def test_cosine_endpoints_hit_clip_range():
    s = CosineSchedule(-20.0, 20.0)
    assert s.logsnr(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(20.0, abs=1e-10)
    assert s.logsnr(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(-20.0, abs=1e-10)


def test_wide_cosine_approaches_unclipped_closed_form():
    # With a very wide clip range, a -> pi/2 and b -> 0: alpha = cos(pi t / 2).
    s = CosineSchedule(-80.0, 80.0)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha, torch.cos(math.pi * t / 2), atol=1e-12, rtol=0)
    torch.testing.assert_close(sigma, torch.sin(math.pi * t / 2), atol=1e-12, rtol=0)


def test_shift_is_constant_offset_added_after_clipping():
    base, shifted = CosineSchedule(), ShiftedCosineSchedule(resolution=512, reference_resolution=64)
    diff = shifted.logsnr(T) - base.logsnr(T)
    torch.testing.assert_close(diff, torch.full_like(T, 2 * math.log(64 / 512)), atol=1e-12, rtol=0)
    assert shifted.logsnr_max == pytest.approx(20.0 + 2 * math.log(1 / 8))
    assert 2 * math.log(1 / 8) == pytest.approx(-4.1589, abs=1e-4)


def test_interpolated_endpoints_and_blend():
    s = InterpolatedCosineSchedule(shift_at_0=0.5, shift_at_1=-2.0)
    assert s.logsnr_max == pytest.approx(20.5)
    assert s.logsnr_min == pytest.approx(-22.0)
    mid = torch.tensor(0.5, dtype=torch.float64)
    expected = CosineSchedule().logsnr(mid) + 0.5 + 0.5 * (-2.5)
    assert s.logsnr(mid).item() == pytest.approx(expected.item(), abs=1e-12)
    d = InterpolatedCosineSchedule.from_resolutions(32, 256)
    assert d.shift_at_0 > d.shift_at_1  # noisier at t = 1 for the higher resolution


def test_interpolated_rejects_non_monotone_blend():
    with pytest.raises(ValueError, match="strictly decreasing"):
        InterpolatedCosineSchedule(shift_at_0=0.0, shift_at_1=7.0)


def test_ddpm_schedule_matches_discrete_definition():
    s = DDPMLinearSchedule(1e-4, 0.02, 1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    prod, lam_expected = 1.0, []
    for b in betas:
        prod *= 1 - b
        lam_expected.append(math.log(prod / (1 - prod)))
    lam = s.logsnr(s.timestep_to_t(torch.arange(1000)))
    torch.testing.assert_close(lam, torch.tensor(lam_expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)


def test_effective_resolution():
    assert effective_resolution(1, 64, 64) == pytest.approx(64)
    assert effective_resolution(16, 64, 64, reference_frames=16) == pytest.approx(64)
    assert effective_resolution(16, 64, 64) == pytest.approx(256)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match=r"\bt\b"):
        CosineSchedule().logsnr(torch.tensor([0.5, bad]))
    with pytest.raises(ValueError, match=r"\bt\b"):
        CosineSchedule().alpha_sigma(bad)


def test_bad_schedule_ranges_raise():
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(logsnr_min=5.0, logsnr_max=5.0)
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(logsnr_min=10.0, logsnr_max=-10.0)
    with pytest.raises(ValueError, match="logsnr"):
        CosineSchedule().t(torch.tensor(25.0))
    with pytest.raises(ValueError, match="beta_start"):
        DDPMLinearSchedule(beta_start=0.1, beta_end=0.01)
