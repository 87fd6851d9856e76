"""End-to-end sampler check without training: a 2-D Gaussian mixture has a closed-form E[x | z_t]."""

import pytest
import torch

from kinema.diffusion.samplers import sample_ancestral, sample_ddim, sample_dpmpp_2m, sample_dpmpp_2m_sde
from kinema.diffusion.schedules import CosineSchedule

WEIGHTS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]], dtype=torch.float64)
COVS = torch.stack([
    torch.tensor([[0.30, 0.10], [0.10, 0.20]]),
    torch.tensor([[0.50, -0.20], [-0.20, 0.40]]),
    torch.tensor([[0.10, 0.00], [0.00, 0.60]]),
]).double()


def optimal_denoiser(schedule):
    """x̂(z, t) = Σ_k r_k(z) [μ_k + α Σ_k (α² Σ_k + σ² I)^{-1} (z - α μ_k)]."""

    def denoise(z, t):
        alpha, sigma = schedule.alpha_sigma(t.double())
        a, s = alpha[:, None, None], sigma[:, None, None]  # (B, 1, 1)
        cov_z = a[..., None] ** 2 * COVS[None] + s[..., None] ** 2 * torch.eye(2, dtype=torch.float64)  # (B, K, 2, 2)
        diff = z[:, None, :] - a * MEANS[None]  # (B, K, 2)
        sol = torch.linalg.solve(cov_z, diff.unsqueeze(-1)).squeeze(-1)
        logdet = torch.logdet(cov_z)
        log_r = torch.log(WEIGHTS)[None] - 0.5 * (diff * sol).sum(-1) - 0.5 * logdet
        r = torch.softmax(log_r, dim=1)
        cond_mean = MEANS[None] + a * torch.einsum("kij,bkj->bki", COVS, sol)
        return (r[..., None] * cond_mean).sum(1)

    return denoise


def _moments():
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    second = (WEIGHTS[:, None, None] * (COVS + MEANS[:, :, None] * MEANS[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "dpmpp-2m-sde"])
def test_samplers_reproduce_mixture_moments(sampler):
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    den = optimal_denoiser(schedule)
    if sampler == "ddim":
        x = sample_ddim(den, noise, schedule, steps=50)
    elif sampler == "ancestral":
        x = sample_ancestral(den, noise, schedule, steps=50, gamma=0.0, generator=g)
    else:
        x = sample_dpmpp_2m_sde(den, noise, schedule, steps=50, generator=g)
    mean, cov = _moments()
    emp_cov = torch.cov(x.T)
    assert torch.linalg.norm(x.mean(0) - mean) / torch.linalg.norm(mean) < 0.05
    assert torch.linalg.norm(emp_cov - cov) / torch.linalg.norm(cov) < 0.05
    # each mode is populated in proportion to its weight
    d = torch.cdist(x, MEANS)
    share = torch.bincount(d.argmin(1), minlength=3).double() / len(x)
    assert torch.allclose(share, WEIGHTS, atol=0.05)


def _fitted_order(sampler, steps=(20, 40, 80, 160), grid="logsnr"):
    """The slope of log(error) against log(step size) for `sampler` on the mixture's probability-flow ODE, the error
    measured against a 1000-step DPM-Solver++(2M) solution from the same noise."""
    schedule = CosineSchedule()
    den = optimal_denoiser(schedule)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = sample_dpmpp_2m(den, noise, schedule, 1000, grid=grid)
    errors = torch.tensor([(sampler(den, noise, schedule, n, grid=grid) - reference).norm(dim=1).mean().item()
                           for n in steps], dtype=torch.float64)
    log_h = -torch.log(torch.tensor(steps, dtype=torch.float64))
    centred = log_h - log_h.mean()
    return float((centred * (errors.log() - errors.log().mean())).sum() / centred.square().sum())


def test_dpmpp_2m_converges_at_second_order_and_ddim_at_first():
    assert 1.8 < _fitted_order(sample_dpmpp_2m) < 2.2
    assert 0.85 < _fitted_order(sample_ddim) < 1.15


def test_dpmpp_2m_samples_the_mixture_in_20_steps_where_ddim_does_not():
    schedule = CosineSchedule()
    noise = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = _moments()
    errors = {}
    for sampler in (sample_dpmpp_2m, sample_ddim):
        x = sampler(optimal_denoiser(schedule), noise, schedule, steps=20)
        assert torch.linalg.norm(x.mean(0) - mean) / torch.linalg.norm(mean) < 0.05
        errors[sampler] = float(torch.linalg.norm(torch.cov(x.T) - cov) / torch.linalg.norm(cov))
    assert errors[sample_dpmpp_2m] < 0.05 < errors[sample_ddim], errors


def test_dpmpp_2m_sde_samples_the_mixture_in_fewer_steps_than_ancestral():
    """Its second-order mean: at 10 steps the SDE solver's moments are closer to the mixture's than the ancestral
    sampler's (whose every step is its first-order step), from the same noise and generator."""
    schedule, den = CosineSchedule(), optimal_denoiser(CosineSchedule())
    mean, cov = _moments()

    def error(sample):
        g = torch.Generator().manual_seed(1)
        x = sample(den, torch.randn(20000, 2, generator=g, dtype=torch.float64), schedule, 10, generator=g)
        return float(torch.linalg.norm(torch.cov(x.T) - cov) + torch.linalg.norm(x.mean(0) - mean))

    sde, ancestral = error(sample_dpmpp_2m_sde), error(lambda *a, **k: sample_ancestral(*a, gamma=0.0, **k))
    assert sde < 0.5 * ancestral, (sde, ancestral)
