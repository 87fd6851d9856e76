"""Conditional generation tasks (predict, extend, interpolate, upsample): planning, shapes, errors, CLI."""


import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import randomize_zero_inits
from kinema.build import build_model, load_model
from kinema.cli import main
from kinema.config import RunConfig, save_config, with_sample
from kinema.data.media import read_clips, to_uint8, write_videos
from kinema.diffusion import area_downsample
from kinema.models import UNet3D, UNet3DConfig
from kinema.sample import conditional as tasks
from kinema.sample import generate


def _cfg(frames=4, size=16, **train):
    cfg = RunConfig()
    cfg.model = UNet3DConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_levels=(1,),
                             head_dim=8)
    cfg.data.frames, cfg.data.height, cfg.data.width, cfg.data.digit_size = frames, size, size, 6
    cfg.sample.steps = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize_zero_inits(build_model(cfg), seed=seed).eval()


def _clips(n, frames, size, seed=0):
    return torch.rand(n, 1, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class _Recorder(torch.nn.Module):
    """Wraps a network and records the frame count of every call (= the window length)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.frames = net, []
        self.null_class, self.config = net.null_class, net.config

    def forward(self, z, noise_level, **kw):
        self.frames.append(z.shape[2])
        return self.net(z, noise_level, **kw)


def test_predict_keeps_the_context_and_only_calls_the_model_on_clip_length_windows():
    cfg = _cfg()
    net = _Recorder(_model(cfg))
    context = _clips(2, 3, 16)
    out = tasks.predict(net, cfg, context, 6, method="replacement")
    assert out.shape == (2, 1, 9, 16, 16)
    assert torch.equal(out[:, :, :3], context)
    assert set(net.frames) == {4}
    assert out[:, :, 3:].abs().sum() > 0 and bool(out.isfinite().all())


def test_window_plans():
    plan = tasks.plan_windows([True] * 3 + [False] * 6, window=4, overlap=2)
    assert [(w.start, w.known, w.new) for w in plan] == [(1, (0, 1), (3, 4)), (3, (0, 1), (5, 6)), (5, (0, 1), (7, 8))]
    # in-filling keeps only frames that lie between two known ones
    plan = tasks.plan_windows([i % 3 == 0 for i in range(7)], window=4, overlap=1)
    assert [(w.start, w.known, w.new) for w in plan] == [(0, (0, 3), (1, 2)), (3, (0, 3), (4, 5))]
    # nothing known: the first window is a plain sample
    assert [(w.start, w.known, w.new) for w in tasks.plan_windows([False] * 6, 4, 2)] == [(0, (), (0, 1, 2, 3)),
                                                                                         (2, (0, 1), (4, 5))]
    with pytest.raises(ValueError, match="cannot be in-filled"):
        tasks.plan_windows([True] + [False] * 5 + [True], window=4, overlap=1)


def test_frameskip_plans_a_coarse_pass_then_infilling():
    cfg = _cfg()
    calls = []

    def fake_fill(model, cfg_, video, known, **kw):
        calls.append(torch.as_tensor(known).clone())
        return video

    original = tasks.fill_frames
    tasks.fill_frames = fake_fill
    try:
        tasks.extend(None, cfg, 9, 1, frameskip=2)
    finally:
        tasks.fill_frames = original
    # coarse pass over frames 0, 2, 4, 6, 8 (nothing known), then in-filling with those known
    assert calls[0].tolist() == [False] * 5
    assert calls[1].tolist() == [True, False] * 4 + [True]


def test_extend_reaches_many_clip_lengths_and_is_reproducible():
    cfg = _cfg()
    model = _model(cfg)
    cfg = with_sample(cfg, seed=3)
    a = tasks.extend(model, cfg, 13, 2, weight=2.0)
    b = tasks.extend(model, cfg, 13, 2, weight=2.0)
    assert a.shape == (2, 1, 13, 16, 16)
    assert torch.equal(a, b)
    # the first block is a plain sample: same as generate() with the same seed and noise
    first = generate(model, cfg, 2, frames=4)
    torch.testing.assert_close(a[:, :, :4], first)


def test_interpolate_keeps_given_frames_at_every_factor_th_position():
    cfg = _cfg(frames=6)
    model = _model(cfg)
    video = _clips(1, 4, 16, seed=1)
    out = tasks.interpolate(model, cfg, video, 3, weight=1.0)
    assert out.shape == (1, 1, 10, 16, 16)
    assert torch.equal(out[:, :, ::3], video)
    with pytest.raises(ValueError, match="two known frames"):
        tasks.interpolate(model, cfg, video, 6)


def test_upsample_follows_the_low_resolution_video():
    cfg = _cfg()
    model = _model(cfg)
    low = area_downsample(_clips(2, 5, 16, seed=2), (8, 8))
    err = {w: float((area_downsample(tasks.upsample(model, with_sample(cfg, steps=8), low, sr_weight=w), (8, 8)) - low)
                    .square().mean()) for w in (0.0, 20.0)}
    assert err[20.0] < 0.5 * err[0.0], err


def test_clear_errors_for_bad_conditioning():
    cfg = _cfg()
    model = _model(cfg)
    with pytest.raises(ValueError, match="3 channels, but the model was trained on 1"):
        tasks.predict(model, cfg, torch.zeros(1, 3, 2, 16, 16), 2)
    with pytest.raises(ValueError, match="32×32, but the model was trained on 16×16"):
        tasks.predict(model, cfg, torch.zeros(1, 1, 2, 32, 32), 2)
    with pytest.raises(ValueError, match="clip length is 4"):
        tasks.predict(model, cfg, torch.zeros(1, 1, 6, 16, 16), 2, overlap=4)
    with pytest.raises(ValueError, match="trained without text conditioning"):
        tasks.predict(model, cfg, torch.zeros(1, 1, 2, 16, 16), 2, prompts=["a 3 moving left"])
    with pytest.raises(ValueError, match="trained without class conditioning"):
        generate(model, cfg, 1, labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="smaller than the model"):
        tasks.upsample(model, cfg, torch.zeros(1, 1, 2, 16, 16))


def test_class_conditional_tasks_take_labels_and_cfg():
    cfg = _cfg(class_conditional=True)
    model = _model(cfg)
    context = _clips(2, 2, 16)
    out = tasks.predict(model, with_sample(cfg, guidance=2.0), context, 3, labels=torch.tensor([1, 7]), weight=1.0)
    assert out.shape == (2, 1, 5, 16, 16)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        tasks.predict(model, cfg, context, 3, labels=torch.tensor([1, 11]))


def _checkpoint(tmp_path, cfg, model):
    from safetensors.torch import save_file

    ck = tmp_path / "ck"
    ck.mkdir()
    save_config(cfg, ck / "config.toml")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ck / "ema.safetensors"))
    save_file(state, str(ck / "model.safetensors"))
    return ck


def test_cli_predict_extend_interpolate_upsample(tmp_path):
    cfg = _cfg()
    model = _model(cfg)
    ck = _checkpoint(tmp_path, cfg, model)
    assert load_model(ck)[0].data.frames == 4
    clip = tmp_path / "clip.npz"
    write_videos(to_uint8(_clips(1, 3, 16)), clip)
    small = tmp_path / "small.npz"
    write_videos(to_uint8(_clips(1, 3, 8)), small)
    runner = CliRunner()
    commands = [
        ["predict", str(ck), "--context", str(clip), "--frames", "3", "--out", str(tmp_path / "p.npz")],
        ["extend", str(ck), "--length", "9", "--num", "2", "--method", "replacement", "--out", str(tmp_path / "e.npz")],
        ["interpolate", str(ck), "--video", str(clip), "--factor", "2", "--out", str(tmp_path / "i.npz"),
         "--out", str(tmp_path / "i.gif")],
        ["upsample", str(ck), "--video", str(small), "--out", str(tmp_path / "u.npz")],
    ]
    for args in commands:
        result = runner.invoke(main, args + ["--steps", "2"])
        assert result.exit_code == 0, result.output
    shapes = {name: np.load(tmp_path / f"{name}.npz")["videos"].shape for name in "peiu"}
    assert shapes == {"p": (1, 6, 16, 16, 3), "e": (2, 9, 16, 16, 3), "i": (1, 5, 16, 16, 3), "u": (1, 3, 16, 16, 3)}
    assert (tmp_path / "i.gif").is_file()
    # the given frames come back (uint8 round trip) at their positions
    given = np.load(clip)["videos"]
    assert np.array_equal(np.load(tmp_path / "i.npz")["videos"][:, ::2], given)
    # clear errors, naming the file and the fault
    bad = tmp_path / "big.npz"
    write_videos(to_uint8(_clips(1, 3, 32)), bad)
    result = runner.invoke(main, ["predict", str(ck), "--context", str(bad), "--frames", "2"])
    assert result.exit_code == 1 and "big.npz: frames are 32×32, the model needs 16×16" in result.output
    result = runner.invoke(main, ["predict", str(ck), "--context", str(bad), "--frames", "2", "--fit", "--steps", "1",
                                  "--out", str(tmp_path / "fit.npz")])
    assert result.exit_code == 0, result.output
    # upsample offers no --weight it would ignore, and the Python API refuses one
    result = runner.invoke(main, ["upsample", str(ck), "--video", str(small), "--weight", "3"])
    assert result.exit_code == 2 and "--weight" in result.output
    with pytest.raises(ValueError, match="method and weight do not apply"):
        tasks.upsample(model, cfg, torch.zeros(1, 3, 2, 8, 8), weight=3.0)
    result = runner.invoke(main, ["extend", str(ck), "--length", "8", "--prompt", "a 3 moving up"])
    assert result.exit_code == 1 and "trained without text conditioning" in result.output


def test_read_clips_converts_grey_rgb_and_rejects_colour_for_a_grey_model(tmp_path):
    grey = tmp_path / "grey.npz"
    write_videos(to_uint8(_clips(2, 3, 8)), grey)
    assert read_clips(grey, 1).shape == (2, 1, 3, 8, 8)
    colour = tmp_path / "colour.npz"
    np.savez(colour, videos=np.random.default_rng(0).integers(0, 255, (1, 3, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="colour clip, but the model is grey"):
        read_clips(colour, 1)
    assert read_clips(colour, 1, (8, 8), fit=True).shape == (1, 1, 3, 8, 8)
    with pytest.raises(FileNotFoundError):
        read_clips(tmp_path / "missing.mp4", 1)


@pytest.mark.parametrize("position", ["sincos", "rope"])
def test_conditional_tasks_work_unchanged_with_the_dit(tmp_path, position):
    from kinema.models import DiTConfig

    cfg = _cfg(class_conditional=True)
    cfg.model = DiTConfig(hidden_dim=32, depth=2, heads=2, patch_size=(1, 4, 4), position=position)
    model = _model(cfg)
    context = _clips(2, 2, 16)
    out = tasks.predict(model, with_sample(cfg, guidance=1.0), context, 5, labels=torch.tensor([3, 4]), weight=2.0)
    assert out.shape == (2, 1, 7, 16, 16) and torch.equal(out[:, :, :2], context)
    assert tasks.extend(model, cfg, 10, 1, weight=2.0).shape == (1, 1, 10, 16, 16)
    assert torch.equal(tasks.interpolate(model, cfg, context, 2)[:, :, ::2], context)
    assert tasks.upsample(model, cfg, area_downsample(context, (8, 8))).shape == (2, 1, 2, 16, 16)
    ck = _checkpoint(tmp_path, cfg, model)
    result = CliRunner().invoke(main, ["extend", str(ck), "--length", "6", "--num", "1", "--label", "2", "--steps", "2",
                                       "--out", str(tmp_path / "e.npz")])
    assert result.exit_code == 0, result.output


def test_every_sampling_option_reaches_the_conditional_commands(tmp_path, monkeypatch):
    """`kinema predict moving-digits` runs the shipped model's corrector by default, and --langevin 0 turns it off:
    per window, steps network calls without it and steps + (steps − 1) with one corrector step after each step."""
    calls = []
    forward = UNet3D.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet3D, "forward", counting)
    context = tmp_path / "ctx.npz"
    write_videos(to_uint8(_clips(1, 4, 16)), context)
    runner = CliRunner()
    counts = {}
    for args in ((), ("--langevin", "0"), ("--langevin", "1"), ("--sampler", "ddim", "--eta", "1")):
        calls.clear()
        result = runner.invoke(main, ["predict", "moving-digits", "--context", str(context), "--frames", "4",
                                      "--steps", "4", "--seed", "1", "--out", str(tmp_path / "p.npz"), *args])
        assert result.exit_code == 0, result.output
        counts[args] = len(calls)
    assert counts[()] == counts[("--langevin", "1")] == 4 + 3
    assert counts[("--langevin", "0")] == 4
    for command in ("predict", "extend", "interpolate", "upsample"):
        result = runner.invoke(main, [command, "--help"])
        assert all(option in result.output for option in ("--sampler", "--steps", "--eta", "--gamma", "--langevin",
                                                           "--guidance", "--seed")), command
