"""Latent diffusion runs (latent.autoencoder): training on encoded clips, the measured scale, sampling by decoding."""

import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from helpers import micro
from kinema.build import build_dataset, load_autoencoder, load_model
from kinema.cli import main
from kinema.config import ConfigError, RunConfig, apply_overrides, with_sample
from kinema.diffusion import area_downsample
from kinema.models import VideoAutoencoder
from kinema.models.autoencoder import known_latents
from kinema.sample import extend, fill_frames, generate, interpolate, predict, upsample
from kinema.train import train
from kinema.train.latent import measure_scale

MICRO_AE = ["model.backbone=autoencoder", "model.base_channels=8", "model.channel_mults=1,2",
            "model.latent_channels=2", "data.frames=4", "data.height=16", "data.width=16", "data.digit_size=8",
            "train.batch_size=2", "train.warmup_steps=2", "train.sample_every=0", "train.log_every=1",
            "train.precision=fp32"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    run = tmp_path_factory.mktemp("latent") / "ae"
    train(apply_overrides(RunConfig(name="ae"), MICRO_AE + ["train.steps=3"]), run, progress=False)
    return run


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory):
    """A latent run of one step: the sampling tests need its plumbing, not its quality."""
    run = tmp_path_factory.mktemp("latent") / "ld"
    train(_latent(autoencoder, "train.steps=1"), run, progress=False)
    return run


def _latent(ae, *extra, dit=False):
    return micro("train.steps=3", "train.checkpoint_every=2", f"latent.autoencoder={ae}", *extra, dit=dit)


@pytest.mark.parametrize("dit", [False, True], ids=["unet", "dit"])
def test_a_latent_run_trains_on_latents_and_samples_pixels(autoencoder, tmp_path, dit):
    train(_latent(autoencoder, "train.sample_every=3", "train.sample_count=2", dit=dit), tmp_path / "ld",
          progress=False)
    cfg, model = load_model(tmp_path / "ld")
    assert cfg.latent.autoencoder == str((autoencoder / "checkpoints" / "step_000003").resolve())
    assert cfg.model.in_channels == 2  # the latent's channels, not the data's one
    videos = generate(model, cfg, 3)
    assert videos.shape == (3, 1, 4, 16, 16) and videos.abs().max() <= 1
    assert (tmp_path / "ld" / "samples" / "step_000003.gif").is_file()


def test_the_scale_gives_the_latents_unit_variance(autoencoder, tmp_path):
    cfg = _latent(autoencoder)
    train(cfg, tmp_path / "ld", progress=False, max_steps=1)
    saved, _ = load_model(tmp_path / "ld")
    _, ae = load_autoencoder(saved)
    assert saved.latent.scale == pytest.approx(measure_scale(saved, ae))
    clips = torch.stack([item["video"] for item in build_dataset(cfg.data, "test", progress=False).spread(32)])
    std = float((ae.encode(clips) * saved.latent.scale).std())
    assert 0.8 < std < 1.25, std  # held-out clips: unit variance up to sampling noise
    # a scale that is set is kept, and changes what the denoiser is trained on
    kept = _latent(autoencoder, "latent.scale=0.5")
    train(kept, tmp_path / "kept", progress=False, max_steps=1)
    assert load_model(tmp_path / "kept")[0].latent.scale == 0.5


def test_a_latent_run_resumes_bit_identically(autoencoder, tmp_path):
    cfg = _latent(autoencoder, "train.steps=4")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "interrupted", progress=False, max_steps=2)
    train(cfg, tmp_path / "interrupted", progress=False, resume=True)
    a, b = (load_file(str(tmp_path / n / "checkpoints" / "step_000004" / "ema.safetensors"))
            for n in ("straight", "interrupted"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_checkpoint_folder_alone_samples_and_a_missing_autoencoder_is_named(autoencoder, tmp_path):
    train(_latent(autoencoder, "train.steps=1"), tmp_path / "ld", progress=False)
    folder = shutil.copytree(tmp_path / "ld" / "checkpoints" / "step_000001", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "ld")
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(main, ["sample", str(folder), "--num", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "ae-moved"
    shutil.copytree(autoencoder, moved)
    saved = load_model(folder)[0].latent.autoencoder
    shutil.rmtree(saved)
    try:
        result = CliRunner().invoke(main, ["sample", str(folder), "--num", "1", "--out", str(out)])
        assert result.exit_code != 0 and "latent.autoencoder" in result.output and "Traceback" not in result.output
    finally:
        shutil.copytree(moved / "checkpoints" / "step_000003", saved)


def test_unsupported_combinations_are_refused(autoencoder):
    with pytest.raises(ConfigError, match="model.frame_conditioning"):
        _latent(autoencoder, "model.frame_conditioning=true")
    with pytest.raises(ConfigError, match="latent.autoencoder must name"):
        micro("latent.scale=1")


def test_known_frames_map_to_latent_frames_by_causality():
    yes, no = True, False
    assert known_latents(torch.tensor([yes] * 4 + [no] * 4), 1).tolist() == [yes] * 4 + [no] * 4
    # r = 2: latent 0 is frame 0, latent j covers frames 2j-1, 2j; frames 0-3 known make latents 0 and 1 known
    assert known_latents(torch.tensor([yes] * 4 + [no] * 5), 2).tolist() == [yes, yes, no, no, no]
    # a frame known after an unknown one determines nothing: latent 2 depends on frames 0-4
    assert known_latents(torch.tensor([yes, no, yes, yes, yes]), 2).tolist() == [yes, no, no]


def test_latent_runs_predict_extend_and_interpolate(latent_run, monkeypatch):
    cfg, model = load_model(latent_run)
    seen = []
    decode = VideoAutoencoder.decode
    monkeypatch.setattr(VideoAutoencoder, "decode",
                        lambda self, z, frames=None: seen.append(z) or decode(self, z, frames))
    context = torch.rand(2, 1, 2, 16, 16) * 2 - 1
    out = predict(model, cfg, context, 6)
    assert out.shape == (2, 1, 8, 16, 16) and torch.equal(out[:, :, :2], context)
    assert extend(model, cfg, 6, 2).shape == (2, 1, 6, 16, 16)
    # the denoiser's latents reach the decoder unclipped (unit variance, not a [-1, 1] range)
    assert max(float(z.abs().max()) for z in seen) * cfg.latent.scale > 1.0
    # interpolation: frame 2 follows a frame to generate, so it guides through the decoder, and is put back
    video = torch.rand(2, 1, 2, 16, 16) * 2 - 1
    out = interpolate(model, cfg, video, 2)
    assert out.shape == (2, 1, 3, 16, 16) and torch.equal(out[:, :, ::2], video)
    # upsample: SR guidance through the decoder; its pull toward the low-resolution frames
    small = torch.rand(2, 1, 4, 8, 8) * 2 - 1
    errors = [float((area_downsample(upsample(model, cfg, small, sr_weight=w), (8, 8)) - small).square().mean())
              for w in (0.0, 100.0)]
    assert errors[1] < 0.9 * errors[0], errors


def test_a_latent_frame_given_after_a_gap_guides_the_sample_through_the_decoder(latent_run, monkeypatch):
    cfg, model = load_model(latent_run)
    decoded = []
    decode = VideoAutoencoder.decode
    monkeypatch.setattr(VideoAutoencoder, "decode",
                        lambda self, z, frames=None: decoded.append(decode(self, z, frames)) or decoded[-1])
    _, ae = load_autoencoder(cfg, torch.device("cpu"))
    with torch.no_grad():  # frames the decoder can produce, so that the measurement can be met
        video = decode(ae, torch.randn(2, ae.config.latent_channels, 4, 4, 4), 4).clamp(-1, 1)
    known = [True, False, False, True]  # frame 3 is encoded only with frames 1 and 2, which are to be generated
    errors = {}
    for weight in (0.0, 30.0, 100.0):
        decoded.clear()
        out = fill_frames(model, with_sample(cfg, sampler="ddim", steps=8), video, known, weight=weight)
        assert torch.equal(out[:, :, [0, 3]], video[:, :, [0, 3]])
        # the last decode is of the filled latents, before the given frames are put back
        errors[weight] = float((decoded[-1][:, :, 3].clamp(-1, 1) - video[:, :, 3]).square().mean())
    assert errors[100.0] < 0.7 * errors[0.0] and errors[30.0] < 0.9 * errors[0.0], errors  # a pull, not a fit


def test_under_temporal_compression_a_frame_sharing_its_latent_with_an_unknown_one_is_measured():
    from kinema.models.autoencoder import AutoencoderConfig
    from kinema.sample.conditional import Window, _decoder_measure

    ae = VideoAutoencoder(AutoencoderConfig(in_channels=1, base_channels=8, channel_mults=(1, 2),
                                            temporal_levels=(1,), latent_channels=2)).eval()
    video = torch.rand(1, 1, 5, 8, 8) * 2 - 1
    known = torch.tensor([True, True, False, False, True])  # r = 2: latents {0}, {1, 2}, {3, 4}
    latent_known = known_latents(known, 2)
    assert latent_known.tolist() == [True, False, False]
    measure = _decoder_measure(ae, 2.0, video, known, latent_known, 3, 10.0)
    latents = torch.randn(1, 2, 3, 4, 4)
    assert measure(Window(0, (0,), ()), latents) is None  # a window generating no latent of a loose frame
    measured, operator, weight = measure(Window(0, (0,), (1, 2)), latents)
    assert weight == 10.0
    # frame 1 shares latent 1 with frame 2 (unknown), frame 4 shares latent 2 with frame 3: both measured
    assert torch.equal(measured, video[:, :, [1, 4]])
    with torch.no_grad():
        assert torch.allclose(operator(latents), ae.decode(latents / 2.0)[:, :, [1, 4]])
        # a later window decodes the latents before it too, the decoder being causal
        _, later, _ = measure(Window(1, (), (2,)), latents)
        assert torch.allclose(later(latents[:, :, 1:]), ae.decode(latents / 2.0)[:, :, [4]])
    prefix = torch.tensor([True] * 3 + [False] * 2)
    assert _decoder_measure(ae, 2.0, video, prefix, known_latents(prefix, 2), 3, 10.0) is None  # whole latents
    # upsample: every frame a window covers, area-downsampled, at the SR weight
    small = torch.rand(1, 1, 5, 4, 4)
    measured, operator, weight = _decoder_measure(ae, 2.0, video, torch.zeros(5, dtype=torch.bool),
                                                  torch.zeros(3, dtype=torch.bool), 2, 10.0, small, 4.0)(
        Window(0, (), (0, 1)), latents)
    assert weight == 4.0 and torch.equal(measured, small[:, :, [0, 1, 2]])
    with torch.no_grad():
        assert torch.allclose(operator(latents[:, :, :2]),
                              area_downsample(ae.decode(latents[:, :, :2] / 2.0), (4, 4)))
