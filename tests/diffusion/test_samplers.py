import math

import pytest
import torch

from kinema.diffusion.samplers import (
    ancestral_step,
    ddim_step,
    langevin_step,
    sample_ancestral,
    sample_ddim,
    time_grid,
)
from kinema.diffusion.schedules import CosineSchedule, DDPMLinearSchedule

SCHEDULE = CosineSchedule()


def _coeffs(t):
    t = torch.tensor(t, dtype=torch.float64)
    a, s = SCHEDULE.alpha_sigma(t)
    return a.item(), s.item(), SCHEDULE.logsnr(t).item()


def _pair(dtype, seed=0, shape=(4, 3, 2, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1, torch.randn(shape, generator=g, dtype=dtype))


@pytest.mark.parametrize("t,s", [(0.9, 0.7), (0.5, 0.45), (0.2, 0.05), (1.0, 0.98)])
def test_forward_transition_variance_two_ways(t, s):
    a_t, s_t, l_t = _coeffs(t)
    a_s, s_s, l_s = _coeffs(s)
    direct = s_t**2 - (a_t / a_s) ** 2 * s_s**2
    via_lambda = (1 - math.exp(l_t - l_s)) * s_t**2
    assert direct == pytest.approx(via_lambda, rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("t,s", [(0.9, 0.7), (0.5, 0.45), (0.2, 0.05)])
def test_posterior_matches_gaussian_conditioning(t, s):
    x, z = _pair(torch.float64)
    a_t, s_t, _ = _coeffs(t)
    a_s, s_s, _ = _coeffs(s)
    # Generic conditioning of the joint Gaussian (z_s, z_t) given x:
    # Cov(z_s, z_t | x) = (a_t / a_s) s_s^2, Var(z_t | x) = s_t^2.
    cov = (a_t / a_s) * s_s**2
    mean = a_s * x + cov / s_t**2 * (z - a_t * x)
    var = s_s**2 - cov**2 / s_t**2
    mu = ancestral_step(z, x, t, s, SCHEDULE, gamma=0.0, noise=torch.zeros_like(z))
    std = ancestral_step(z, x, t, s, SCHEDULE, gamma=0.0, noise=torch.ones_like(z)) - mu
    torch.testing.assert_close(mu, mean, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(std, torch.full_like(z, math.sqrt(var)), atol=1e-12, rtol=1e-10)


def test_ancestral_gamma_interpolates_log_variance():
    x, z = _pair(torch.float64)
    t, s = 0.6, 0.5
    a_t, s_t, l_t = _coeffs(t)
    a_s, s_s, l_s = _coeffs(s)
    small, large = (1 - math.exp(l_t - l_s)) * s_s**2, (1 - math.exp(l_t - l_s)) * s_t**2
    zero, one = torch.zeros_like(z), torch.ones_like(z)
    for gamma, var in [(0.0, small), (1.0, large), (0.3, small**0.7 * large**0.3)]:
        std = ancestral_step(z, x, t, s, SCHEDULE, gamma, one) - ancestral_step(z, x, t, s, SCHEDULE, gamma, zero)
        torch.testing.assert_close(std, torch.full_like(z, math.sqrt(var)), rtol=1e-10, atol=0)


# At t = 1, α ≈ 4.5e-5: the λ and ε forms multiply z by α_s/α_t ≈ 1700 and cancel, so in fp32 they
# (not the library's α/σ form) lose three digits there. fp32 is compared away from that end.
FP32_STEPS = [(0.98, 0.9), (0.7, 0.5), (0.3, 0.29), (0.1, 0.02)]
FP64_STEPS = [(1.0, 0.95)] + FP32_STEPS


@pytest.mark.parametrize("dtype,tol,t,s", [(torch.float32, 1e-5, *ts) for ts in FP32_STEPS]
                         + [(torch.float64, 1e-10, *ts) for ts in FP64_STEPS])
def test_ddim_three_forms_agree(dtype, tol, t, s):
    x, z = _pair(dtype)
    x_hat = x  # any prediction; the forms must agree for all of them
    z_t = z
    a_t, s_t, l_t = _coeffs(t)
    a_s, s_s, l_s = _coeffs(s)
    lib = ddim_step(z_t, x_hat, t, s, SCHEDULE)
    lam_form = math.exp((l_t - l_s) / 2) * (a_s / a_t) * z_t + (1 - math.exp((l_t - l_s) / 2)) * a_s * x_hat
    phi_t, phi_s = math.atan2(s_t, a_t), math.atan2(s_s, a_s)
    v_hat = a_t * ((z_t - a_t * x_hat) / s_t) - s_t * x_hat
    angular = math.cos(phi_s - phi_t) * z_t + math.sin(phi_s - phi_t) * v_hat
    eps_hat = (z_t - a_t * x_hat) / s_t
    eps_form = (a_s / a_t) * z_t - s_s * (math.exp((l_s - l_t) / 2) - 1) * eps_hat
    for other in (lam_form, angular, eps_form):
        torch.testing.assert_close(lib, other, atol=tol, rtol=tol)


def test_ddim_step_with_oracle_stays_on_the_noise_path():
    x, eps = _pair(torch.float64)
    a_t, s_t, _ = _coeffs(0.8)
    a_s, s_s, _ = _coeffs(0.3)
    z_s = ddim_step(a_t * x + s_t * eps, x, 0.8, 0.3, SCHEDULE)
    torch.testing.assert_close(z_s, a_s * x + s_s * eps, atol=1e-12, rtol=0)


def test_ddim_with_oracle_denoiser_recovers_x_from_pure_noise():
    x, noise = _pair(torch.float64)
    trajectory = []
    out = sample_ddim(lambda z, t: x.clone(), noise, SCHEDULE, steps=20,
                      callback=lambda info: trajectory.append((info["s"], info["z"])))
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    a1, s1, _ = _coeffs(1.0)
    eps = (noise - a1 * x) / s1
    assert len(trajectory) == 20
    for s, z in trajectory[:-1]:  # every intermediate state keeps the same ε
        a_s, s_s, _ = _coeffs(s)
        torch.testing.assert_close(z, a_s * x + s_s * eps, atol=1e-9, rtol=0)


def test_ddim_eta_one_equals_ancestral_gamma_zero():
    x, noise = _pair(torch.float64)

    def den(z, t):
        return 0.5 * z.tanh() + 0.1 * x  # any deterministic, z-dependent denoiser

    a = sample_ddim(den, noise, SCHEDULE, 10, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = sample_ancestral(den, noise, SCHEDULE, 10, gamma=0.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    c = sample_ddim(den, noise, SCHEDULE, 10, eta=0.0)
    assert (a - c).abs().max() > 1e-3  # eta is not ignored


def test_dpmpp_2m_sde_first_order_step_is_the_ancestral_step():
    from kinema.diffusion.samplers import ancestral_step, dpmpp_2m_sde_step

    x, noise = _pair(torch.float64)
    z, eps = noise, torch.randn(noise.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    first = dpmpp_2m_sde_step(z, x, 0.7, 0.5, SCHEDULE, None, eps)
    torch.testing.assert_close(first, ancestral_step(z, x, 0.7, 0.5, SCHEDULE, 0.0, eps), atol=1e-12, rtol=0)
    second = dpmpp_2m_sde_step(z, x, 0.7, 0.5, SCHEDULE, (0.5 * x, 0.3), eps)
    assert (second - first).abs().max() > 1e-3  # the history enters
    torch.testing.assert_close(dpmpp_2m_sde_step(z, x, 0.7, 0.0, SCHEDULE, (0.5 * x, 0.3), eps), x)


def test_langevin_step_is_the_langevin_update_with_the_model_score():
    x, z = _pair(torch.float64)
    noise = torch.randn_like(z)
    s, delta = 0.4, 0.1
    a_s, s_s, _ = _coeffs(s)
    out = langevin_step(lambda zz, t: x, z, s, SCHEDULE, delta, noise)
    # score of q(z_s | x) is -(z - a x)/s^2; step size eta = delta s^2.
    eta = delta * s_s**2
    expected = z + 0.5 * eta * (-(z - a_s * x) / s_s**2) + math.sqrt(eta) * noise
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_langevin_option_adds_corrector_calls():
    calls = []

    def den(z, t):
        calls.append(t[0].item())
        return 0.5 * z

    noise = torch.randn(2, 1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    plain = sample_ancestral(den, noise, SCHEDULE, 8, generator=torch.Generator().manual_seed(1))
    n_plain = len(calls)
    calls.clear()
    pc = sample_ancestral(den, noise, SCHEDULE, 8, langevin_steps=1, generator=torch.Generator().manual_seed(1))
    assert n_plain == 8 and len(calls) == 8 + 7  # no corrector after the final step to t = 0
    assert not torch.equal(plain, pc)


def test_seeding_is_reproducible_and_seed_dependent():
    noise = torch.randn(2, 1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    den = lambda z, t: 0.3 * z  # noqa: E731
    a = sample_ancestral(den, noise, SCHEDULE, 6, generator=torch.Generator().manual_seed(5))
    b = sample_ancestral(den, noise, SCHEDULE, 6, generator=torch.Generator().manual_seed(5))
    c = sample_ancestral(den, noise, SCHEDULE, 6, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_time_grids():
    u = time_grid(4)
    assert u.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    # diffusers' "trailing" timesteps for T = 1000, N = 3 are [999, 666, 332] -> t = (i + 1)/T
    assert time_grid(3, "trailing").tolist() == pytest.approx([1.0, 0.667, 0.333, 0.0])
    # diffusers' "leading" timesteps for T = 1000, N = 4 are [750, 500, 250, 0]
    assert time_grid(4, "leading").tolist() == pytest.approx([0.751, 0.501, 0.251, 0.001, 0.0])
    g = time_grid(5, "logsnr", SCHEDULE)
    lam = SCHEDULE.logsnr(g[1:-1])
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((3,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        time_grid(4, "cubic")
    with pytest.raises(ValueError, match="schedule"):
        time_grid(4, "logsnr")


def test_trailing_grid_has_steps_plus_one_strictly_decreasing_times():
    # torch.arange(T, 0, -T/steps) with a float step can overshoot by one element (steps = 61 gave 63 times
    # with a repeated 0); every step count the training grid allows must give exactly steps + 1 times
    for steps in range(1, 1001):
        t = time_grid(steps, "trailing", num_train_timesteps=1000)
        assert t.shape == (steps + 1,), steps
        assert bool((t[1:] < t[:-1]).all()), steps
        assert t[0].item() == 1.0 and t[-1].item() == 0.0, steps
        assert bool((t[:-1] >= 1 / 1000).all()), steps  # only the last time is 0


def test_explicit_times_are_validated():
    noise = torch.zeros(1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match="decreasing"):
        sample_ddim(lambda z, t: z, noise, SCHEDULE, times=torch.tensor([0.5, 0.7, 0.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_ddim(lambda z, t: z, noise, SCHEDULE, times=torch.tensor([1.5, 0.0]))


def test_mismatched_denoiser_output_raises():
    noise = torch.zeros(2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="denoise output"):
        sample_ddim(lambda z, t: z[:, :1], noise, SCHEDULE, 2)
    with pytest.raises(ValueError, match="denoise output"):
        sample_ancestral(lambda z, t: z.double(), noise, SCHEDULE, 2)
    with pytest.raises(ValueError, match="gamma"):
        sample_ancestral(lambda z, t: z, noise, SCHEDULE, 2, gamma=1.5)


def test_callback_and_progress_bar():
    seen = []
    noise = torch.zeros(1, 1, 1, 2, 2)
    sample_ddim(lambda z, t: z, noise, DDPMLinearSchedule(), 5, progress=True, callback=lambda d: seen.append(d["i"]))
    assert seen == [0, 1, 2, 3, 4]
