"""Bad input across the commands: each malformed config, corrupt media file, wrong-shape .npz or damaged checkpoint
gets one line, `Error: ...`, that names what is wrong (the field, the file, the shape), exit 1 (2 for click's usage
errors), and no traceback.

Every case runs through the CLI with click's CliRunner (one library test checks the conditional tasks' own guard).
Training cases use the micro config with train.steps=1 and huge sizes must be refused before allocating, so a case
that wrongly starts training fails fast instead of hanging or exhausting memory. Commands that read a checkpoint use
copies of the session's micro run.
"""

import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from helpers import MICRO, MICRO_DIT
from kinema.cli import main
from kinema.data.media import write_videos


def _screen(output: str) -> list[str]:
    """The non-blank lines a terminal shows: a carriage return (a progress bar redrawing) overwrites its line."""
    return [shown for line in output.split("\n") if (shown := line.split("\r")[-1].strip())]


pytestmark = pytest.mark.slow  # 134 end-to-end CLI cases: in `make test`, out of the edit loop

def _run(args, *names: str, code: int = 1) -> str:
    """Invoke `kinema ARGS`; assert one error line naming every one of `names`, exit `code`; return the line."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    status = ("continuing ", "resuming with changed settings")  # predict's status line, resume's note of changes
    lines = [line for line in _screen(result.output) if not line.startswith(status)]
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    if code == 1:  # a usage error (2) prints the usage above its one error line
        assert lines == errors, result.output
    for name in names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]


def _train(tmp_path, *overrides, config=None, micro=MICRO):
    return ["train", "--out-dir", tmp_path / "runs", "--name", "bad", "--quiet",
            *(["--config", config] if config else []), *micro, "train.steps=1", *overrides]


# --- configs ----------------------------------------------------------------------------------------------------------

OVERRIDES = {
    "int as a word": (["train.steps=abc"], ["train.steps", "integer", "'abc'"]),
    "float as a list": (["train.lr=[1,2]"], ["train.lr", "number", "[1, 2]"]),
    "bool as an int": (["data.flip=3"], ["data.flip", "true or false", "3"]),
    "unknown section": (["foo.bar=1"], ["'foo'", "section"]),
    "unknown field": (["train.stpes=5"], ["'train.stpes'", "'train.steps'"]),
    "table for a value": (["train.lr.x=1"], ["train.lr", "number"]),
    "value for a table": (["train=3"], ["train", "table"]),
    "no =": (["train.steps"], ["'train.steps'", "section.field=value"]),
    "ema_decay above 1": (["train.ema_decay=1.5"], ["train.ema_decay", "1.5"]),
    "negative label_dropout": (["train.label_dropout=-1"], ["train.label_dropout", "-1"]),
    "zero frames": (["data.frames=0"], ["data.frames", "positive", "0"]),
    "gamma above 1": (["sample.gamma=3"], ["sample.gamma", "3"]),
    "frame correlation 1": (["diffusion.frame_noise_correlation=1"], ["diffusion.frame_noise_correlation", "1"]),
    "negative lr": (["train.lr=-0.001"], ["train.lr", "positive", "-0.001"]),
    "negative weight decay": (["train.weight_decay=-1"], ["train.weight_decay", "-1"]),
    "beta of 1.5": (["train.betas=0.9,1.5"], ["train.betas[1]", "1.5"]),
    "one beta": (["train.betas=0.9"], ["train.betas", "a list", "0.9"]),
    "three betas": (["train.betas=0.9,0.9,0.9"], ["train.betas", "2 entries", "3"]),
    "lr beyond float": (["train.lr=1" + "0" * 400], ["train.lr", "finite", "401 digits"]),
    "NaN lr": (["train.lr=nan"], ["train.lr", "finite", "nan"]),
    "inf lr": (["train.lr=inf"], ["train.lr", "finite", "inf"]),
    "overflowing lr": (["train.lr=1e999"], ["train.lr", "finite", "inf"]),
    "NaN beta": (["train.betas=0.9,nan"], ["train.betas[1]", "finite", "nan"]),
    "NaN guidance": (["sample.guidance=nan"], ["sample.guidance", "finite", "nan"]),
    "inf guidance": (["sample.guidance=-inf"], ["sample.guidance", "finite", "-inf"]),
    "NaN in the model": (["model.dropout=nan"], ["model.dropout", "finite", "nan"]),
    "NaN time limit": (["train.time_limit_minutes=nan"], ["train.time_limit_minutes", "finite"]),
    "huge frames": (["data.frames=100000000"], ["data.frames", "100000000", "at most"]),
    "huge height": (["data.height=1000000", "data.width=1000000"], ["data.height", "1000000", "at most"]),
    "huge clip": (["data.frames=4096", "data.height=2048", "data.width=2048"], ["4096×2048×2048×1", "elements", "GiB"]),
    "huge batch": (["train.batch_size=100000000"], ["train.batch_size", "100,000,000 clips", "GiB", "grad_accum"]),
    "huge network": (["model.base_channels=100000"], ["model", "100000x[1, 2]", "parameters", "GB"]),
    "network beyond int64": (["model.base_channels=1000000000000"], ["model", "cannot build", "overflow"]),
    "huge block count": (["model.blocks_per_level=100000"], ["blocks_per_level", "at most 64", "100000"]),
    "negative relative distance": (["model.max_relative_distance=-1"], ["max_relative_distance", "-1"]),
    "negative class count": (["model.num_classes=-3"], ["num_classes", "-3"]),
    "negative workers": (["data.num_workers=-1"], ["data.num_workers", "-1"]),
    "negative data seed": (["data.seed=-1"], ["data.seed", "-1"]),
    "zero reference resolution": (["diffusion.reference_resolution=0"], ["diffusion.reference_resolution", "0"]),
}


@pytest.mark.parametrize("overrides, names", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_a_bad_override_is_one_line_naming_the_field(tmp_path, overrides, names):
    _run(_train(tmp_path, *overrides), *names)
    assert not (tmp_path / "runs" / "bad").exists()  # refused before the run folder is made


def test_colour_moving_digits_is_one_line(tmp_path):
    # refused when the dataset is built (the config alone is valid for `kinema prepare data.channels=3`)
    _run(_train(tmp_path, "data.channels=3"), "data.channels is 3", "moving-digits clips have 1 (grey)")


DIT_OVERRIDES = {
    "huge DiT": (["model.hidden_dim=1000000"], ["model", "dit width 1000000", "parameters"]),
    "huge DiT depth": (["model.depth=100000"], ["depth", "at most 1024", "100000"]),
    "negative DiT text width": (["model.text_dim=-1"], ["text_dim", "-1"]),
    "NaN mlp ratio": (["model.mlp_ratio=nan"], ["model.mlp_ratio", "finite", "nan"]),
}


@pytest.mark.parametrize("overrides, names", DIT_OVERRIDES.values(), ids=DIT_OVERRIDES.keys())
def test_a_bad_dit_override_is_one_line_naming_the_field(tmp_path, overrides, names):
    _run(_train(tmp_path, *overrides, micro=MICRO_DIT), *names)


FILES = {
    "malformed TOML": ("[train\nsteps = 1\n", ["not valid TOML"]),
    "duplicate key": ("[train]\nsteps = 1\nsteps = 2\n", ["not valid TOML"]),
    "int as a string": ('[train]\nsteps = "abc"\n', ["train.steps", "integer", "'abc'"]),
    "table for a value": ("[train.lr]\nx = 1\n", ["train.lr", "number"]),
    "inline table for a value": ("[train]\nlr = {x = 1}\n", ["train.lr", "number"]),
    "value for a table": ("train = 3\n", ["train", "table"]),
    "array of tables for a table": ("[[data]]\nframes = 4\n", ["data", "table"]),
    "list item of the wrong type": ('[model]\nchannel_mults = [1, "a"]\n', ["model.channel_mults[1]", "integer"]),
    "unknown section": ("[foo]\nbar = 1\n", ["'foo'", "section"]),
    "unknown field": ("[data]\nframe = 4\n", ["'data.frame'", "'data.frames'"]),
    "out of range": ("[train]\nema_decay = 1.5\n", ["train.ema_decay", "1.5"]),
    "NaN": ("[train]\nlr = nan\n", ["train.lr", "finite", "nan"]),
    "inf": ("[sample]\nguidance = inf\n", ["sample.guidance", "finite", "inf"]),
    "huge height": ("[data]\nheight = 1000000\nwidth = 1000000\n", ["data.height", "1000000", "at most"]),
}


@pytest.mark.parametrize("text, names", FILES.values(), ids=FILES.keys())
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_field(tmp_path, text, names):
    path = tmp_path / "run.toml"
    path.write_text(text)
    _run(_train(tmp_path, config=path), "run.toml", *names)


def test_a_config_file_that_is_not_text_or_not_there_is_one_line(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00[train]\x9c")
    _run(_train(tmp_path, config=path), "binary.toml", "UTF-8")
    _run(_train(tmp_path, config=tmp_path / "absent.toml"), "absent.toml", "not found")
    _run(_train(tmp_path, config=tmp_path), "is a directory", code=2)  # click: --config takes a file


SAMPLING = {  # name: (command and options after the checkpoint, what the message names); all write to --out OUT
    "NaN guidance": (["sample", "--num", 1, "--guidance", "nan"], ["sample.guidance", "finite", "nan"]),
    "inf guidance": (["sample", "--num", 1, "--guidance", "inf"], ["sample.guidance", "finite", "inf"]),
    "NaN gamma": (["sample", "--num", 1, "--sampler", "ancestral", "--gamma", "nan"], ["sample.gamma", "nan"]),
    "NaN eta": (["sample", "--num", 1, "--eta", "nan"], ["sample.eta", "nan"]),
    "zero steps": (["sample", "--num", 1, "--steps", 0], ["--steps"]),
    "steps as a word": (["sample", "--num", 1, "--steps", "many"], ["--steps", "'many'"]),
    "zero videos": (["sample", "--num", 0], ["number of videos", "0"]),
    "zero frames": (["sample", "--num", 1, "--frames", 0], ["number of frames", "0"]),
    "huge frames": (["sample", "--num", 1, "--frames", 100000000], ["100,000,000 frames", "65,536"]),
    "huge num": (["sample", "--num", 100000000], ["100,000,000 videos", "GiB"]),
    "NaN fps": (["sample", "--num", 1, "--fps", "nan"], ["fps", "nan"]),
    "negative fps": (["sample", "--num", 1, "--fps", -2], ["fps", "-2"]),
    "huge extension": (["extend", "--num", 1, "--length", 10**11], ["100,000,000,000 frames", "GiB"]),
    "huge prediction": (["predict", "--context", "CLIPS", "--frames", 10**11], ["100,000,000,002 frames", "GiB"]),
    "NaN reconstruction weight": (["extend", "--num", 1, "--length", 8, "--weight", "nan"], ["weight", "nan"]),
    "eval batch of 0": (["eval", "--num", 2, "--batch-size", 0, "--quiet"], ["--batch-size", "0"]),
}


@pytest.mark.parametrize("args, names", SAMPLING.values(), ids=SAMPLING.keys())
def test_bad_sampling_options_are_one_line(micro_run, tmp_path, args, names):
    clips = tmp_path / "clips.npz"
    write_videos(np.zeros((1, 2, 16, 16, 3), np.uint8), clips)
    out = tmp_path / ("eval" if args[0] == "eval" else "s.gif")
    args = [clips if a == "CLIPS" else a for a in args]
    _run([args[0], micro_run, *args[1:], "--steps", 1, "--out", out] if "--steps" not in args else
         [args[0], micro_run, *args[1:], "--out", out], *names, code=2 if "--steps" in args else 1)
    assert not out.exists()


# --- corrupt media ----------------------------------------------------------------------------------------------------

def _real_video(path, frames=4, size=16):
    rng = np.random.default_rng(0)
    write_videos(rng.integers(0, 256, (1, frames, size, size, 3), dtype=np.uint8), path)  # a 20×20 grid (border)
    return path


def _bad_media(folder):
    """{name: (file, what the message must say about it)}: random bytes, a truncated video, an empty file."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    (folder / "random.mp4").write_bytes(rng.bytes(4096))
    truncated = _real_video(folder / "truncated.mp4")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(2048))
    return {name: folder / name for name in ("random.mp4", "truncated.mp4", "empty.mp4", "random.png")}


COMMANDS = {
    "predict": lambda ck, video, out: ["predict", ck, "--context", video, "--frames", 2, "--steps", 1, "--out", out],
    "interpolate": lambda ck, video, out: ["interpolate", ck, "--video", video, "--factor", 2, "--steps", 1,
                                           "--out", out],
    "upsample": lambda ck, video, out: ["upsample", ck, "--video", video, "--steps", 1, "--out", out],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", ["random.mp4", "truncated.mp4", "empty.mp4", "random.png"])
def test_a_corrupt_video_is_one_line_naming_the_file(micro_run, tmp_path, command, name):
    video = _bad_media(tmp_path / "media")[name]
    _run(COMMANDS[command](micro_run, video, tmp_path / "out.gif"), name,
         "empty file" if name == "empty.mp4" else "unreadable (")
    assert not (tmp_path / "out.gif").exists()


def test_a_missing_video_is_one_line(micro_run, tmp_path):
    _run(COMMANDS["predict"](micro_run, tmp_path / "absent.mp4", tmp_path / "out.gif"), "absent.mp4", "no such file")


def _folder_of_bad_videos(tmp_path):
    folder = tmp_path / "clips"
    _bad_media(folder)
    (folder / "random.png").unlink()
    _real_video(folder / "short.gif", frames=2)  # decodes, but too short for a 4-frame clip
    return folder


def test_a_video_folder_of_bad_files_is_one_line_naming_the_folder_and_each_reason(tmp_path):
    folder = _folder_of_bad_videos(tmp_path)
    names = [str(folder), "no usable clips in 4", "random.mp4: unreadable (", "truncated.mp4: unreadable (",
             "empty.mp4: empty file", "short.gif: only 2 frames, a clip needs 4"]
    with pytest.warns(UserWarning, match="skipping"):
        _run(["data", "video-folder", "--path", folder, "--out", tmp_path / "d.gif", "data.frames=4"], *names)
    with pytest.warns(UserWarning, match="skipping"):
        _run(_train(tmp_path, "data.dataset=video-folder", f"data.path={folder}"), *names)
    _run(_train(tmp_path, "data.dataset=video-folder", f"data.path={tmp_path / 'absent'}"), "absent", "does not exist")


def test_an_image_folder_of_corrupt_images_is_one_line_naming_the_folder_and_the_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(2).bytes(2048))
    (folder / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping"):
        _run(["data", "image-folder", "--path", folder, "--out", tmp_path / "d.gif"], str(folder), "none of 2",
             "random.png", "empty.jpg")


# --- .npz inputs to the conditional commands --------------------------------------------------------------------------

def _pickled(path):
    np.savez(path, videos=np.array([{"not": "an array"}, None], dtype=object))


def _truncated(path):
    np.savez(path, videos=np.zeros((1, 4, 16, 16, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:200])


NPZ = {  # name: (write the file, extra args, what the message names)
    "no 'videos' key": (lambda p: np.savez(p, clips=np.zeros((1, 4, 16, 16, 3), np.uint8)), [], ["'videos'", "clips"]),
    "wrong ndim": (lambda p: np.savez(p, videos=np.zeros((4, 16, 16, 3), np.uint8)), [], ["5 dimensions",
                                                                                           "(4, 16, 16, 3)"]),
    "a scalar": (lambda p: np.savez(p, videos=np.uint8(3)), [], ["'videos'", "5 dimensions", "()"]),
    "float": (lambda p: np.savez(p, videos=np.zeros((1, 4, 16, 16, 3), np.float32)), [], ["float32", "uint8"]),
    "two channels": (lambda p: np.savez(p, videos=np.zeros((1, 4, 16, 16, 2), np.uint8)), [], ["2 channels"]),
    "colour for a grey model": (lambda p: np.savez(p, videos=np.random.default_rng(0).integers(
        0, 256, (1, 4, 16, 16, 3), dtype=np.uint8)), [], ["colour", "--fit"]),
    "wrong size": (lambda p: np.savez(p, videos=np.zeros((1, 4, 12, 20, 3), np.uint8)), [], ["12×20", "16×16",
                                                                                               "--fit"]),
    "zero frames": (lambda p: np.savez(p, videos=np.zeros((1, 0, 16, 16, 3), np.uint8)), [], ["no frames",
                                                                                               "(1, 0, 16, 16, 3)"]),
    "zero frames with --fit": (lambda p: np.savez(p, videos=np.zeros((1, 0, 12, 12, 3), np.uint8)), ["--fit"],
                               ["no frames", "(1, 0, 12, 12, 3)"]),
    "zero clips": (lambda p: np.savez(p, videos=np.zeros((0, 4, 16, 16, 3), np.uint8)), [], ["no frames",
                                                                                              "(0, 4, 16, 16, 3)"]),
    "empty frames with --fit": (lambda p: np.savez(p, videos=np.zeros((1, 4, 0, 16, 3), np.uint8)), ["--fit"],
                                ["no frames", "(1, 4, 0, 16, 3)"]),
    "pickled objects": (_pickled, [], ["'videos'", "object", "pickle"]),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(3).bytes(1000)), [], ["not a readable .npz"]),
    "truncated": (_truncated, [], ["not a readable .npz"]),
}


@pytest.mark.parametrize("make, extra, names", NPZ.values(), ids=NPZ.keys())
def test_a_bad_npz_context_is_one_line_naming_the_file_and_the_fault(micro_run, tmp_path, make, extra, names):
    path = tmp_path / "clips.npz"
    make(path)
    _run([*COMMANDS["predict"](micro_run, path, tmp_path / "out.gif"), *extra], "clips.npz", *names)


@pytest.mark.parametrize("command", ["interpolate", "upsample"])
@pytest.mark.parametrize("case", ["pickled objects", "zero frames", "wrong ndim"])
def test_interpolate_and_upsample_refuse_a_bad_npz_the_same_way(micro_run, tmp_path, command, case):
    make, _, names = NPZ[case]
    path = tmp_path / "clips.npz"
    make(path)
    _run(COMMANDS[command](micro_run, path, tmp_path / "out.gif"), "clips.npz", *names)


# --- checkpoints ------------------------------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(micro_run, tmp_path):
    """A writable copy of the session's micro checkpoint."""
    return shutil.copytree(micro_run / "checkpoints" / "step_000003", tmp_path / "ck")


def _rewrite(file, change):
    weights = load_file(str(file))
    change(weights)
    save_file(weights, str(file))


def _sample(checkpoint, *extra):
    return ["sample", checkpoint, "--num", 1, "--steps", 1, "--out", checkpoint.parent / "s.npz", *extra]


def test_a_checkpoint_missing_a_tensor_is_one_line_naming_the_file_and_the_tensor(checkpoint):
    name = sorted(load_file(str(checkpoint / "ema.safetensors")))[0]
    _rewrite(checkpoint / "ema.safetensors", lambda w: w.pop(name))
    _run(_sample(checkpoint), "ema.safetensors", "missing 1", name)


def test_a_checkpoint_with_extra_tensors_is_one_line_naming_them(checkpoint):
    _rewrite(checkpoint / "ema.safetensors", lambda w: w.update({"extra.weight": torch.zeros(2),
                                                                  "other.bias": torch.zeros(3)}))
    _run(_sample(checkpoint), "ema.safetensors", "unexpected 2", "extra.weight", "other.bias")


def test_a_checkpoint_tensor_of_the_wrong_shape_is_one_line_naming_it_and_both_shapes(checkpoint):
    weights = load_file(str(checkpoint / "ema.safetensors"))
    name = next(k for k, v in sorted(weights.items()) if v.ndim == 2)
    shape = list(weights[name].shape)
    _rewrite(checkpoint / "ema.safetensors", lambda w: w.update({name: torch.zeros(shape[0] + 1, shape[1])}))
    _run(_sample(checkpoint), "ema.safetensors", "shape mismatch", name, f"saved [{shape[0] + 1}, {shape[1]}]",
         f"network [{shape[0]}, {shape[1]}]")


def test_model_weights_are_checked_the_same_way(checkpoint):
    name = sorted(load_file(str(checkpoint / "model.safetensors")))[-1]
    _rewrite(checkpoint / "model.safetensors", lambda w: w.pop(name))
    _run(_sample(checkpoint, "--weights", "model"), "model.safetensors", "missing 1", name)


def test_a_corrupt_or_absent_weights_file_is_one_line_naming_it(checkpoint):
    good = (checkpoint / "ema.safetensors").read_bytes()
    (checkpoint / "ema.safetensors").write_bytes(np.random.default_rng(4).bytes(500))
    _run(_sample(checkpoint), "damaged checkpoint", "ema.safetensors is truncated")
    (checkpoint / "ema.safetensors").write_bytes(b"")
    _run(_sample(checkpoint), "damaged checkpoint", "ema.safetensors is truncated (0 bytes")
    (checkpoint / "ema.safetensors").write_bytes(good)
    (checkpoint / "model.safetensors").unlink()
    _run(_sample(checkpoint, "--weights", "model"), "model.safetensors", "--weights ema")


def test_a_checkpoint_config_that_is_not_toml_or_not_valid_is_one_line_naming_it(checkpoint):
    config = checkpoint / "config.toml"
    good = config.read_text()
    config.write_text(good + "\n[train\n")
    _run(_sample(checkpoint), "config.toml", "not valid TOML")
    config.write_text(good.replace("[data]", "[data]\nframe = 4", 1))
    _run(_sample(checkpoint), "config.toml", "'data.frame'")


@pytest.mark.parametrize("text", ['{"step": 3,', "[3]", "\udcff"], ids=["truncated", "a list", "not UTF-8"])
def test_eval_with_a_state_json_that_is_not_json_is_one_line_naming_it(checkpoint, text):
    (checkpoint / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _run(["eval", checkpoint, "--num", 2, "--steps", 1, "--quiet", "--out", checkpoint.parent / "eval"],
         "state.json", "not valid JSON")
    assert not (checkpoint.parent / "eval").exists()  # refused before sampling


@pytest.mark.parametrize("case", ["pickled objects", "zero clips", "truncated"])
def test_eval_refuses_a_bad_samples_npz_the_same_way(checkpoint, case):
    make, _, names = NPZ[case]
    path = checkpoint.parent / "clips.npz"
    make(path)
    _run(["eval", checkpoint, "--samples", path, "--num", 2, "--quiet", "--out", checkpoint.parent / "eval"],
         "clips.npz", *names)


@pytest.mark.parametrize("shape", [(1, 1, 0, 16, 16), (0, 1, 4, 16, 16)], ids=["no frames", "no clips"])
@pytest.mark.parametrize("task", ["predict", "interpolate", "upsample"])
def test_the_library_tasks_refuse_an_empty_clip_naming_its_shape(task, shape):
    from helpers import micro
    from kinema.build import build_model
    from kinema.sample import conditional

    cfg = micro()
    args = {"predict": (2,), "interpolate": (2,), "upsample": ()}[task]
    with pytest.raises(ValueError, match="holds no frames.*" + re.escape(str(shape))):
        getattr(conditional, task)(build_model(cfg), cfg, torch.zeros(shape), *args)


# --- resuming from a damaged checkpoint (kinema.checkpoint.load_state and the trainer's resume read these) ------------

def _drop_first(file):
    _rewrite(file, lambda w: w.pop(sorted(w)[0]))


RESUME = {  # name: (damage the newest checkpoint, what the message names, marks)
    "config.toml not TOML": (lambda ck: (ck / "config.toml").write_text("[train"), ["config.toml", "not valid TOML"],
                             []),
    "state.json not JSON": (lambda ck: (ck / "state.json").write_text("{"), ["state.json"],
                             []),
    "state.json a list": (lambda ck: (ck / "state.json").write_text("[3]"), ["state.json"],
                             []),
    "model tensor missing": (lambda ck: _drop_first(ck / "model.safetensors"), ["model.safetensors", "missing 1"],
                             []),
    "ema tensor missing": (lambda ck: _drop_first(ck / "ema.safetensors"), ["ema.safetensors", "missing 1"],
                             []),
    "model.safetensors corrupt": (lambda ck: (ck / "model.safetensors").write_bytes(b"xx" * 100),
                                  ["model.safetensors"],
                             []),
    "optimizer.pt corrupt": (lambda ck: (ck / "optimizer.pt").write_bytes(b"xx" * 100), ["optimizer.pt"],
                             []),
}


@pytest.mark.parametrize("damage, names", [pytest.param(damage, names, marks=marks, id=name)
                                           for name, (damage, names, marks) in RESUME.items()])
def test_resuming_from_a_damaged_checkpoint_is_one_line_naming_the_file(micro_run, tmp_path, damage, names):
    run = shutil.copytree(micro_run, tmp_path / "run")
    damage(run / "checkpoints" / "step_000003")
    _run(["train", "--resume", "--out-dir", tmp_path, "--name", "run", "--quiet", "train.steps=4"], *names)
