"""The video autoencoder (models/autoencoder.py), its loss, and its training through kinema's trainer."""

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from helpers import moving_glyph_clips, randomize_zero_inits
from kinema.build import load_model
from kinema.cli import main
from kinema.config import RUN_PRESETS, ConfigError, RunConfig, apply_overrides
from kinema.diffusion.losses import autoencoder_loss
from kinema.models import AutoencoderConfig, VideoAutoencoder
from kinema.models.autoencoder import frames_of_latent, latent_frames
from kinema.train import train

SPATIAL = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), latent_channels=2)
TEMPORAL = dict(SPATIAL, channel_mults=(1, 2, 2), temporal_levels=(1, 2))  # 4× in time
# an autoencoder run small enough for a train step in tens of milliseconds
MICRO_AE = ["model.backbone=autoencoder", "model.base_channels=8", "model.channel_mults=1,2",
            "model.latent_channels=2", "data.frames=4", "data.height=16", "data.width=16", "data.digit_size=8",
            "train.batch_size=2", "train.warmup_steps=2", "train.sample_every=0", "train.log_every=1",
            "train.precision=fp32"]


def _ae(**kw) -> VideoAutoencoder:
    torch.manual_seed(0)
    return randomize_zero_inits(VideoAutoencoder(AutoencoderConfig(**kw))).eval()


@pytest.mark.parametrize("frames", [1, 8, 9, 16])
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_shapes_for_any_frame_count(frames, kind):
    kw = SPATIAL if kind == "spatial" else TEMPORAL
    ae, x = _ae(**kw), torch.rand(2, 1, frames, 16, 16) * 2 - 1
    latent = ae.encode(x)
    s, r = ae.config.spatial_factor, ae.config.temporal_factor
    expected_frames = frames if kind == "spatial" else 1 + -(-(frames - 1) // 4)
    assert latent.shape == (2, 2, expected_frames, 16 // s, 16 // s) == ae.latent_shape(tuple(x.shape))
    assert latent_frames(frames, r) == expected_frames
    assert ae.decode(latent, frames).shape == x.shape
    assert ae.decode(latent).shape[2] == 1 + r * (expected_frames - 1)  # the padded length without `frames`
    recon, posterior = ae(x, torch.randn(latent.shape))
    assert recon.shape == x.shape and posterior.logvar.shape == latent.shape


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_a_latent_frame_depends_on_no_later_input_frame(kind):
    """Causality: changing frames after those latent frame j covers leaves latents 0..j bit-identical; frame 0's
    latent is the first frame's alone (an image is a 1-frame video), and a change there does reach it."""
    ae = _ae(**(SPATIAL if kind == "spatial" else TEMPORAL))
    r = ae.config.temporal_factor
    x = torch.rand(1, 1, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        base = ae.encode(x)
        for j in range(base.shape[2] - 1):
            last = frames_of_latent(j, r)[-1]
            changed = x.clone()
            changed[:, :, last + 1:] = torch.rand_like(changed[:, :, last + 1:])
            out = ae.encode(changed)
            assert torch.equal(out[:, :, :j + 1], base[:, :, :j + 1])
            assert not torch.allclose(out[:, :, j + 1:], base[:, :, j + 1:])
        alone = ae.encode(x[:, :, :1])
        assert torch.allclose(alone[:, :, 0], base[:, :, 0], atol=1e-6)
        first = x.clone()
        first[:, :, 0] = -first[:, :, 0]
        assert not torch.allclose(ae.encode(first)[:, :, 0], base[:, :, 0])


def test_frames_of_latent_partition_the_clip():
    for r in (1, 2, 4):
        covered = [f for j in range(latent_frames(17, r)) for f in frames_of_latent(j, r)]
        assert covered == list(range(1 + r * (latent_frames(17, r) - 1)))


def test_loss_terms_match_closed_forms():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(3, 1, 4, 8, 8, generator=g), torch.rand(3, 1, 4, 8, 8, generator=g)
    mean, logvar = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 2, 4, 4, 4, generator=g)
    l1 = autoencoder_loss(x_hat, x, mean, logvar, reconstruction="l1", kl_weight=0.0)
    l2 = autoencoder_loss(x_hat, x, mean, logvar, reconstruction="l2", kl_weight=0.0)
    assert torch.allclose(l1, (x_hat - x).abs().flatten(1).mean(1))
    assert torch.allclose(l2, (x_hat - x).square().flatten(1).mean(1))
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    with_kl = autoencoder_loss(x_hat, x, mean, logvar, reconstruction="l1", kl_weight=0.5)
    assert torch.allclose(with_kl - l1, 0.5 * kl / x[0].numel(), rtol=1e-5)


def test_a_tiny_autoencoder_overfits_a_batch():
    x = moving_glyph_clips(4, 8, 16)
    torch.manual_seed(0)
    ae = VideoAutoencoder(AutoencoderConfig(**dict(SPATIAL, latent_channels=4)))
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    errors = []
    for _ in range(200):
        recon, posterior = ae(x, None)
        loss = autoencoder_loss(recon, x, posterior.mean, posterior.logvar, kl_weight=0.0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        errors.append(float((recon.detach() - x).square().mean()))
    assert errors[-1] < errors[0] / 10, (errors[0], errors[-1])


def _micro_ae(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(name="micro-ae"), MICRO_AE + list(extra))


def test_trains_through_the_trainer_and_resumes_bit_identically(tmp_path):
    cfg = _micro_ae("train.steps=4", "train.checkpoint_every=2")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "interrupted", progress=False, max_steps=2)
    train(cfg, tmp_path / "interrupted", progress=False, resume=True)
    for kind in ("model", "ema"):
        a, b = (load_file(str(tmp_path / n / "checkpoints" / "step_000004" / f"{kind}.safetensors"))
                for n in ("straight", "interrupted"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded_cfg, model = load_model(tmp_path / "straight")
    assert isinstance(model, VideoAutoencoder) and loaded_cfg.model.in_channels == 1
    clip = torch.rand(1, 1, 4, 16, 16) * 2 - 1
    assert model(clip)[0].shape == clip.shape


def test_the_preview_shows_clips_and_their_reconstructions(tmp_path):
    cfg = _micro_ae("train.steps=2", "train.sample_every=2", "train.sample_count=4")
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "samples" / "step_000002.gif").is_file()


@pytest.mark.parametrize("override, field", [("train.class_conditional=true", "train.class_conditional"),
                                             ("model.channel_mults=1,2,2,2 data.height=12", "data.height"),
                                             ("model.temporal_levels=0", "temporal_levels"),
                                             ("train.reconstruction_loss=lpips", "train.reconstruction_loss")])
def test_bad_settings_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        _micro_ae(*override.split())


def test_sampling_an_autoencoder_is_a_clear_error(tmp_path):
    train(_micro_ae("train.steps=1"), tmp_path / "ae", progress=False)
    result = CliRunner().invoke(main, ["sample", str(tmp_path / "ae"), "--num", "1", "--out",
                                       str(tmp_path / "x.gif")])
    assert result.exit_code != 0 and "autoencoder" in result.output and "Traceback" not in result.output


def test_the_preset_builds():
    cfg = RUN_PRESETS["ae-digits64"]
    assert cfg.model.backbone == "autoencoder" and cfg.data.height % cfg.model.spatial_factor == 0


def test_eval_of_an_autoencoder_scores_its_reconstructions(tmp_path):
    from kinema.eval.evaluation import evaluate, reference_clips
    from kinema.eval.frames import psnr

    train(_micro_ae("train.steps=2"), tmp_path / "ae", progress=False)
    result, _ = evaluate(tmp_path / "ae", tmp_path / "eval", num=4, fvd=False, progress=False)
    rows = {row["key"]: row["samples"] for row in result["metrics"]}
    cfg, model = load_model(tmp_path / "ae")
    real = reference_clips(cfg.data, "test", 4)
    with torch.no_grad():
        expected = float(psnr(model(real)[0].clamp(-1, 1), real).clamp(max=60).mean())
    assert rows["reconstruction_psnr"] == pytest.approx(expected, rel=1e-5)
    assert rows["blank_psnr"] == pytest.approx(float(psnr(torch.full_like(real, -1.0), real).mean()), rel=1e-5)
    assert "reconstruction_ssim" in rows and "identity_consistency" in rows  # the oracle scores them too
    with pytest.raises(ValueError, match="autoencoder"):
        evaluate(tmp_path / "ae", tmp_path / "eval", num=4, fvd=False, label=3, progress=False)
