"""Sampling with trained frame conditioning: the FrameConditioned wrapper and every conditional command."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import micro
from kinema.build import build_model, load_model
from kinema.cli import main
from kinema.config import with_sample
from kinema.diffusion import ClassifierFreeGuidance, CosineSchedule, Denoiser, FrameConditioned
from kinema.sample import extend, fill_frames, interpolate, predict, uses_frame_conditioning


def recorder(calls):
    def denoise(z, t, cond=None):
        calls.append(dict(cond or {}))
        return z * 0.0 + (cond or {}).get("known_mask", torch.zeros(z.shape[0], z.shape[2])).float()[:, None, :,
                                                                                                         None, None]
    return denoise


def test_frame_conditioned_passes_the_frames_at_their_positions():
    calls, known = [], torch.randn(2, 1, 2, 4, 4)
    FrameConditioned(recorder(calls), known, [0, 3])(torch.zeros(2, 1, 5, 4, 4), torch.full((2,), 0.5), {"a": 1})
    cond = calls[0]
    assert cond["a"] == 1 and cond["known_mask"].tolist() == [[True, False, False, True, False]] * 2
    assert torch.equal(cond["known_frames"][:, :, [0, 3]], known) and not cond["known_frames"][:, :, 1:3].any()


def test_frame_guidance_is_cfg_over_the_frames_and_composes_with_label_cfg():
    calls, known = [], torch.randn(2, 1, 1, 4, 4)
    z, t = torch.zeros(2, 1, 3, 4, 4), torch.full((2,), 0.5)
    out = FrameConditioned(recorder(calls), known, [1], weight=2.0)(z, t)
    assert calls[0]["known_mask"].shape == (4, 3) and not calls[0]["known_mask"][2:].any()
    assert torch.equal(out[:, :, 1], torch.full_like(out[:, :, 1], 3.0))  # (1 + w)·1 − w·0
    inner = FrameConditioned(recorder(calls), known, [1])
    cfg_out = ClassifierFreeGuidance(inner, {"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([9, 9])}, 1.0)
    cfg_out(z, t)
    assert calls[-1]["known_mask"].shape == (4, 3) and calls[-1]["known_mask"][:, 1].all()  # both halves see them


def test_uses_frame_conditioning_follows_the_model_and_refuses_what_it_lacks():
    assert uses_frame_conditioning(build_model(micro("model.frame_conditioning=true")))
    assert not uses_frame_conditioning(build_model(micro("model.frame_conditioning=true")), False)
    with pytest.raises(ValueError, match="trained without frame conditioning"):
        uses_frame_conditioning(build_model(micro()), True)


def _fast(cfg):
    return with_sample(cfg, steps=2, sampler="ddim")


def test_every_conditional_command_runs_with_a_frame_conditioned_model(framecond_run):
    cfg, model = load_model(framecond_run)
    cfg = _fast(cfg)
    context = torch.rand(2, 1, 2, 16, 16) * 2 - 1
    out = predict(model, cfg, context, 3)
    assert out.shape == (2, 1, 5, 16, 16) and torch.allclose(out[:, :, :2], context)
    assert extend(model, cfg, 6, 2).shape == (2, 1, 6, 16, 16)
    video = interpolate(model, cfg, context, 2)
    assert video.shape == (2, 1, 3, 16, 16) and torch.allclose(video[:, :, ::2], context)
    alone = predict(model, cfg, context, 3, method="reconstruction", weight=1.0, frame_conditioning=False)
    assert alone.shape == out.shape and not torch.allclose(alone, out)


def test_reconstruction_guidance_on_top_of_trained_conditioning_is_refused(framecond_run):
    # the loss counts only unknown frames, so x̂ of a known frame is untrained: guiding toward it is refused
    cfg, model = load_model(framecond_run)
    context = torch.rand(1, 1, 2, 16, 16) * 2 - 1
    with pytest.raises(ValueError, match="not trained to give"):
        predict(model, _fast(cfg), context, 3, method="reconstruction", weight=1.0)
    assert predict(model, _fast(cfg), context, 3, method="reconstruction", weight=0.0).shape == (1, 1, 5, 16, 16)


def test_the_cli_commands_run_with_a_frame_conditioned_model(framecond_run, tmp_path):
    np.savez(tmp_path / "ctx.npz", videos=np.zeros((1, 2, 16, 16, 1), np.uint8))
    for args in (["predict", "--context", tmp_path / "ctx.npz", "--frames", 2],
                 ["extend", "--length", 5, "--num", 1],
                 ["interpolate", "--video", tmp_path / "ctx.npz", "--factor", 2]):
        out = tmp_path / f"{args[0]}.npz"
        result = CliRunner().invoke(main, [str(a) for a in [args[0], framecond_run, *args[1:], "--steps", 1,
                                                           "--out", out]])
        assert result.exit_code == 0 and out.is_file(), result.output
    predict_args = ["predict", str(framecond_run), "--context", str(tmp_path / "ctx.npz"), "--frames", "2", "--steps",
                    "1", "--method", "reconstruction", "--out", str(tmp_path / "p.npz")]
    refused = CliRunner().invoke(main, predict_args)
    assert refused.exit_code == 1 and "--no-frame-conditioning" in refused.output
    assert "not trained to give" in refused.output and "Traceback" not in refused.output
    assert CliRunner().invoke(main, [*predict_args, "--no-frame-conditioning"]).exit_code == 0


def test_the_trained_frames_change_the_prediction_and_false_turns_them_off(framecond_run):
    cfg, model = load_model(framecond_run)
    with torch.no_grad():  # make the known-frame channels matter: 3 training steps barely move them
        first = model.input_conv if hasattr(model, "input_conv") else model.patch_embedding
        first.weight.add_(torch.randn_like(first.weight) * 0.2)
    cfg = _fast(cfg)
    video, known = torch.rand(1, 1, 4, 16, 16) * 2 - 1, [True, True, False, False]
    trained = fill_frames(model, cfg, video, known, method="replacement")
    plain = fill_frames(model, cfg, video, known, method="replacement", frame_conditioning=False)
    assert not torch.allclose(trained, plain)
    assert torch.equal(plain, fill_frames(model, cfg, video, known, method="replacement", frame_conditioning=False))


def test_frame_guidance_weight_changes_the_sample(framecond_run):
    cfg, model = load_model(framecond_run)
    with torch.no_grad():
        first = model.input_conv if hasattr(model, "input_conv") else model.patch_embedding
        first.weight.add_(torch.randn_like(first.weight) * 0.2)
    video, known = torch.rand(1, 1, 4, 16, 16) * 2 - 1, [True, True, False, False]
    a = fill_frames(model, _fast(cfg), video, known)
    b = fill_frames(model, with_sample(_fast(cfg), frame_guidance=2.0), video, known)
    assert not torch.allclose(a, b)


def test_an_old_checkpoint_loads_without_the_option_and_samples_as_before(micro_run, tmp_path):
    import shutil

    from kinema.checkpoint import resolve_checkpoint

    old = tmp_path / "old"
    shutil.copytree(resolve_checkpoint(micro_run), old)
    text = (old / "config.toml").read_text()
    (old / "config.toml").write_text(text.replace("frame_conditioning = false\n", ""))  # as written before it existed
    assert "frame_conditioning" in text and "frame_conditioning" not in (old / "config.toml").read_text()
    cfg, model = load_model(old)
    assert cfg.model.frame_conditioning is False and not uses_frame_conditioning(model)
    cfg = _fast(cfg)
    video, known = torch.rand(1, 1, 4, 16, 16) * 2 - 1, [True, False, False, False]
    default = fill_frames(model, cfg, video, known)  # reconstruction guidance, as before
    assert torch.equal(default, fill_frames(model, cfg, video, known, method="reconstruction"))
    assert not torch.equal(default, fill_frames(model, cfg, video, known, method="replacement"))


def test_schedule_free_wrapper_needs_no_schedule():
    """FrameConditioned only adds inputs: it wraps a Denoiser and never reads the schedule itself."""
    net = build_model(micro("model.frame_conditioning=true"))
    denoise = FrameConditioned(Denoiser(net, CosineSchedule()), torch.zeros(1, 1, 1, 16, 16), [0])
    assert denoise(torch.randn(1, 1, 4, 16, 16), torch.tensor(0.5)).shape == (1, 1, 4, 16, 16)
