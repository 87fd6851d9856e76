"""Cross-check against an independent implementation: diffusers' DDIM and DDPM schedulers.

Both run on the same discrete linear-β schedule with prediction_type="v_prediction". The
diffusers timestep i sits at kinema time t = (i + 1)/T; diffusers' "previous" step below 0 is clean
data (final ᾱ = 1), which is kinema's t = 0.
"""

import pytest
import torch

from kinema.diffusion.parameterization import broadcast_like, x_from_v
from kinema.diffusion.samplers import sample_ancestral, sample_ddim, time_grid
from kinema.diffusion.schedules import DDPMLinearSchedule

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test-only extra: pip install -e '.[test]'")

T, N = 1000, 50
STEP = T // N
TIMESTEPS = [999, 499, 39, 19]  # on the "trailing" grid: the first (noisiest) step, middle ones, and the last


def _v_denoiser(schedule, v):
    def denoise(z, t):
        alpha, sigma = schedule.alpha_sigma(t.double())
        return x_from_v(v, z, broadcast_like(alpha, z).to(z.dtype), broadcast_like(sigma, z).to(z.dtype))

    return denoise


def _times(schedule, timestep):
    t = schedule.timestep_to_t(timestep).item()
    s = max(schedule.timestep_to_t(timestep - STEP).item(), 0.0)
    return torch.tensor([t, s], dtype=torch.float64)


@pytest.mark.parametrize("timestep", TIMESTEPS)
def test_ddim_step_matches_diffusers(timestep):
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", prediction_type="v_prediction",
                                  clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
    ref.set_timesteps(N)
    assert timestep in ref.timesteps.tolist()
    g = torch.Generator().manual_seed(timestep)
    z = torch.randn(2, 3, 2, 4, 4, generator=g)
    v = torch.randn(z.shape, generator=g)
    expected = ref.step(v, timestep, z, eta=0.0).prev_sample
    schedule = DDPMLinearSchedule(1e-4, 0.02, T)
    ours = sample_ddim(_v_denoiser(schedule, v), z, schedule, times=_times(schedule, timestep))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("timestep", TIMESTEPS)
def test_ddpm_step_matches_diffusers(timestep):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", prediction_type="v_prediction",
                                  clip_sample=False, variance_type="fixed_small",
                                  timestep_spacing="trailing")
    ref.set_timesteps(N)
    assert timestep in ref.timesteps.tolist()
    g = torch.Generator().manual_seed(100 + timestep)
    z = torch.randn(2, 3, 2, 4, 4, generator=g)
    v = torch.randn(z.shape, generator=g)
    expected = ref.step(v, timestep, z, generator=torch.Generator().manual_seed(9)).prev_sample
    schedule = DDPMLinearSchedule(1e-4, 0.02, T)
    ours = sample_ancestral(_v_denoiser(schedule, v), z, schedule, times=_times(schedule, timestep), gamma=0.0,
                            generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_trailing_grid_matches_diffusers_trailing_timesteps_for_every_step_count():
    # diffusers' timestep i is kinema's t = (i + 1)/T; diffusers' own np.arange can append one extra
    # timestep (-1) by rounding (e.g. 61 steps), so only its first `steps` timesteps are compared
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    for steps in range(1, T + 1):
        ref.set_timesteps(steps)
        ours = time_grid(steps, "trailing", num_train_timesteps=T)
        expected = ref.timesteps[:steps].to(torch.float64) + 1
        assert torch.equal(torch.round(ours[:-1] * T), expected), steps


def test_schedule_alphas_match_diffusers():
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    ours = DDPMLinearSchedule(1e-4, 0.02, T).alphas_cumprod
    torch.testing.assert_close(ours.float(), ref.alphas_cumprod, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmpp_2m_trajectories_match_diffusers_dpm_solver_multistep(algorithm):
    """A whole 10-step trajectory from the same noise, with the same deterministic denoiser (given to diffusers as
    the v it implies), on the discrete linear-β schedule: diffusers' first-order first and final steps included.
    The SDE solver ("sde-dpmsolver++", midpoint) gets the same noise at every step: diffusers as variance_noise,
    kinema from its noise sampler."""
    from kinema.diffusion.samplers import sample_dpmpp_2m, sample_dpmpp_2m_sde

    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear",
                                                prediction_type="v_prediction", algorithm_type=algorithm,
                                                solver_order=2)
    ref.set_timesteps(10)
    schedule = DDPMLinearSchedule(1e-4, 0.02, T)

    def x_hat(z, t):
        return 0.8 * torch.tanh(z) + 0.1 * t.view(-1, *[1] * (z.ndim - 1)).to(z.dtype)

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(z0.shape, generator=g, dtype=torch.float64) for _ in ref.timesteps]
    sde = algorithm.startswith("sde")
    z = z0.clone()
    for timestep, noise in zip(ref.timesteps, noises):
        t = schedule.timestep_to_t(timestep).expand(z.shape[0])
        alpha, sigma = (broadcast_like(c, z) for c in schedule.alpha_sigma(t))
        v = (alpha * z - x_hat(z, t)) / sigma  # x = α z − σ v
        z = ref.step(v, timestep, z, variance_noise=noise if sde else None).prev_sample
    times = torch.cat([schedule.timestep_to_t(ref.timesteps), torch.zeros(1, dtype=torch.float64)])
    if sde:
        drawn = iter(noises)
        ours = sample_dpmpp_2m_sde(x_hat, z0, schedule, times=times, noise_sampler=lambda like, gen: next(drawn))
    else:
        ours = sample_dpmpp_2m(x_hat, z0, schedule, times=times)
    torch.testing.assert_close(ours, z, atol=1e-5, rtol=1e-5)
