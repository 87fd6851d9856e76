"""Noise correlated across frames (PYoCo's mixed noise): the draw itself, and that training, the initial
noise of every sampler and every fresh draw inside the samplers all use the configured correlation."""

import pytest
import torch

import kinema.train.objective as objective
from kinema.build import build_model
from kinema.config import ConfigError, RunConfig, apply_overrides
from kinema.diffusion import CosineSchedule, FrameNoise, sample_ancestral, sample_ddim
from kinema.diffusion.samplers import SAMPLERS
from kinema.sample import generate, predict
from kinema.train import train


def frame_stats(noise: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean, variance and the (F, F) correlation matrix across frames of (B, C, F, H, W) samples."""
    frames = noise.transpose(1, 2).flatten(2).transpose(1, 2).reshape(-1, noise.shape[2])  # (samples, F)
    return float(frames.mean()), float(frames.var()), torch.corrcoef(frames.T.double())


def off_diagonal(corr: torch.Tensor) -> torch.Tensor:
    return corr[~torch.eye(len(corr), dtype=torch.bool)]


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_frame_noise_has_unit_marginals_and_the_configured_frame_correlation(rho):
    noise = FrameNoise(rho)((20000, 1, 5, 2, 2), generator=torch.Generator().manual_seed(0))
    mean, var, corr = frame_stats(noise)
    assert abs(mean) < 0.01 and abs(var - 1) < 0.02  # 80,000 draws of the shared part
    assert torch.allclose(off_diagonal(corr), torch.full((20,), rho, dtype=torch.float64), atol=0.02)
    # pixels of one frame stay independent: only the frame axis is shared
    pixels = noise[:, 0, 0].flatten(1)
    assert off_diagonal(torch.corrcoef(pixels.T.double())).abs().max() < 0.05


def test_zero_correlation_is_exactly_torch_randn():
    a = FrameNoise(0.0)((3, 1, 4, 5, 5), generator=torch.Generator().manual_seed(7))
    b = torch.randn((3, 1, 4, 5, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_correlation_outside_zero_one_is_an_error(bad):
    with pytest.raises(ValueError, match="correlation"):
        FrameNoise(bad)
    with pytest.raises(ConfigError, match="diffusion.frame_noise_correlation"):
        apply_overrides(RunConfig(), [f"diffusion.frame_noise_correlation={bad}"])


def _zero_denoiser(z, t):
    return torch.zeros_like(z)


@pytest.mark.parametrize("run", ["ancestral", "ddim-eta1", "langevin"])
def test_samplers_keep_the_prior_correlation_in_every_draw(run):
    """With x̂ ≡ 0 (data x = 0) the exact process has z_s ~ N(0, σ_s² Σ): an ancestral / η = 1 DDIM step
    keeps the frame correlation ρ only if its fresh noise is Σ-correlated, and so does the Langevin corrector
    (whose drift leaves Σ alone). With the default independent draws the correlation decays: the test's teeth."""
    rho, schedule = 0.6, CosineSchedule()
    prior = FrameNoise(rho)
    times = torch.tensor([1.0, 0.8, 0.6, 0.45])  # stop at s > 0: the last step returns x̂ otherwise

    def final(noise_sampler):
        gen = torch.Generator().manual_seed(1)
        z1 = prior((3000, 1, 4, 2, 2), generator=gen)
        kw = dict(times=times, generator=gen, noise_sampler=noise_sampler)
        if run == "ancestral":
            return sample_ancestral(_zero_denoiser, z1, schedule, gamma=0.0, **kw)
        if run == "ddim-eta1":
            return sample_ddim(_zero_denoiser, z1, schedule, eta=1.0, **kw)
        return sample_ddim(_zero_denoiser, z1, schedule, langevin_steps=2, langevin_delta=0.5, **kw)

    _, var, corr = frame_stats(final(prior.like))
    sigma2 = float(schedule.alpha_sigma(times[-1:].double())[1]) ** 2
    expected_var = sigma2 * (1 + 0.5 ** 2 / 4) ** 2 if run == "langevin" else sigma2  # Langevin: (1 + δ²/4) per step
    assert abs(var / expected_var - 1) < 0.05
    assert (off_diagonal(corr) - rho).abs().max() < 0.03
    _, _, corr_independent = frame_stats(final(None))
    assert off_diagonal(corr_independent).max() < rho - 0.1


MICRO = ["model.base_channels=8", "model.channel_mults=1,2", "model.attention_levels=1", "model.head_dim=8",
         "data.frames=4", "data.height=16", "data.width=16", "data.digit_size=8", "train.batch_size=4",
         "train.warmup_steps=2", "train.sample_every=0", "train.log_every=1", "sample.steps=3",
         "train.precision=fp32", "diffusion.frame_noise_correlation=0.7"]


def test_training_draws_its_noise_from_the_configured_prior(tmp_path, monkeypatch):
    drawn = []
    real_loss = objective.diffusion_loss

    def recording_loss(*args, noise_sampler=None, **kwargs):
        def record(x, gen):
            drawn.append(noise_sampler(x, gen))
            return drawn[-1]
        return real_loss(*args, noise_sampler=record, **kwargs)

    monkeypatch.setattr(objective, "diffusion_loss", recording_loss)
    cfg = apply_overrides(RunConfig(name="micro"), MICRO + ["train.steps=6"])
    train(cfg, tmp_path / "run", progress=False)
    assert len(drawn) == 6
    mean, var, corr = frame_stats(torch.cat(drawn))  # 6 × 4 videos × 256 pixels per frame
    assert abs(mean) < 0.05 and abs(var - 1) < 0.05
    assert (off_diagonal(corr) - 0.7).abs().max() < 0.05


def _recording_sampler(record):
    def fake_ddim(denoise, noise, schedule, steps, *, noise_sampler=None, generator=None, **kwargs):
        record.append((noise, noise_sampler(torch.zeros_like(noise).repeat(8, 1, 1, 1, 1), generator)))
        return noise
    return fake_ddim


def test_generation_and_prediction_start_from_the_configured_prior(monkeypatch):
    cfg = apply_overrides(RunConfig(name="micro"), MICRO)
    model = build_model(cfg)
    record = []
    monkeypatch.setitem(SAMPLERS, "ddim", SAMPLERS["ddim"]._replace(solve=_recording_sampler(record)))
    generate(model, cfg, 400, batch_size=400)
    context = torch.zeros(400, 1, 2, 16, 16)
    predict(model, cfg, context, 2, overlap=2)
    assert len(record) == 2
    for initial, fresh in record:
        for noise in (initial, fresh):
            _, var, corr = frame_stats(noise)
            assert abs(var - 1) < 0.05 and (off_diagonal(corr) - 0.7).abs().max() < 0.05
