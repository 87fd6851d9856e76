import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from helpers import MICRO, micro
from kinema.build import resolve_model
from kinema.checkpoint import list_checkpoints, load_optimizer_state, load_state
from kinema.cli import main
from kinema.config import ConfigError, RunConfig, apply_overrides, load_config, save_config
from kinema.train import TrainingError, learning_rate, train


def _weights(ckpt: Path, kind: str = "model") -> dict:
    return load_file(str(ckpt / f"{kind}.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip(tmp_path):
    cfg = micro("train.steps=3", "train.checkpoint_every=2", "train.keep_checkpoints=1")
    result = train(cfg, tmp_path / "run", progress=False)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000003"]  # keep_checkpoints=1 pruned step 2
    loaded_cfg, state = load_state(ckpts[0])
    assert loaded_cfg == resolve_model(cfg) and state["step"] == 3 and state["batches"] == 3
    for key, value in result.model.state_dict().items():
        assert torch.equal(_weights(ckpts[0])[key], value)
    opt = load_optimizer_state(ckpts[0])  # weights_only=True: no arbitrary unpickling
    assert "state" in opt["optimizer"] and opt["optimizer"]["param_groups"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    cfg = micro("train.steps=6", "train.checkpoint_every=2", "model.dropout=0.1", "train.class_conditional=true",
                "train.precision=bf16")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "interrupted", progress=False, max_steps=3)
    train(cfg, tmp_path / "interrupted", progress=False, resume=True)
    a, b = (tmp_path / name / "checkpoints" / "step_000006" for name in ("straight", "interrupted"))
    assert _same(_weights(a), _weights(b)) and _same(_weights(a, "ema"), _weights(b, "ema"))
    log = (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in log]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    cfg = micro("train.steps=1")
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg, tmp_path / "fresh", progress=False, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import kinema.train.objective as trainer  # the diffusion objective calls diffusion_loss

    real_loss, calls = trainer.diffusion_loss, []

    def failing_loss(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", failing_loss)
    with pytest.raises(TrainingError, match=r"nan at step 4.*step_000002"):
        train(micro("train.steps=10", "train.checkpoint_every=2"), tmp_path / "run", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000002"]


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kinema", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_weights(tmp_path):
    args = ["train", "--quiet", "--out-dir", str(tmp_path), *MICRO, "train.steps=60", "train.checkpoint_every=1"]
    proc = _cli([*args, "--name", "killed"], tmp_path)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while len(list_checkpoints(ckpts)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere inside a later step or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = list_checkpoints(ckpts)[-1]
    assert 2 <= int(done_before.name.split("_")[1]) < 60
    resumed = _cli([*args, "--name", "killed", "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    straight = _cli([*args, "--name", "straight"], tmp_path)
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out
    a, b = ckpts / "step_000060", tmp_path / "straight" / "checkpoints" / "step_000060"
    assert _same(_weights(a), _weights(b)) and _same(_weights(a, "ema"), _weights(b, "ema"))


DDP_SCRIPT = """
import sys, torch.distributed as dist
from safetensors.torch import save_file
from kinema.config import RunConfig, apply_overrides
from kinema.train import train
run, mode = sys.argv[1], sys.argv[2]  # mode: full | first-half | resume
cfg = apply_overrides(RunConfig(name="ddp"), sys.argv[3:])
result = train(cfg, run, progress=False, resume=mode == "resume",
               max_steps=cfg.train.steps // 2 if mode == "first-half" else None)
rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{run}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


def _torchrun(script: Path, run: Path, mode: str, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(run), mode, *MICRO, *overrides],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    _torchrun(script, run, "full", "train.steps=4", "train.batch_size=4")
    r0, r1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert _same(r0, r1)
    assert _same(r0, _weights(run / "checkpoints" / "step_000004"))
    torch.manual_seed(0)  # the trainer's seed: the shared initial weights
    from kinema.build import build_model

    init = build_model(micro()).state_dict()
    assert not _same(r0, {k: v.contiguous() for k, v in init.items()})  # training really moved them
    # the same weights, but each rank its own global RNG (dropout masks) and diffusion generator
    rngs = json.loads((run / "checkpoints" / "step_000004" / "state.json").read_text())["rng"]
    assert rngs["0"]["torch"] != rngs["1"]["torch"] and rngs["0"]["generator"] != rngs["1"]["generator"]


@pytest.mark.slow
def test_two_process_ddp_resume_is_bit_identical(tmp_path):
    """Each rank draws its own noise; a resumed run must restore every rank's generator, not rank 0's."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    args = ("train.steps=4", "train.batch_size=4", "train.checkpoint_every=2")
    _torchrun(script, tmp_path / "straight", "full", *args)
    _torchrun(script, tmp_path / "resumed", "first-half", *args)
    _torchrun(script, tmp_path / "resumed", "resume", *args)
    a, b = (tmp_path / name / "checkpoints" / "step_000004" for name in ("straight", "resumed"))
    assert _same(_weights(a), _weights(b)) and _same(_weights(a, "ema"), _weights(b, "ema"))


def test_sample_from_a_checkpoint_folder_alone(tmp_path):
    train(micro("train.steps=2"), tmp_path / "run", progress=False)
    alone = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step_000002", alone)
    shutil.rmtree(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(main, ["sample", str(alone), "--num", "3", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    videos = np.load(tmp_path / "s.npz")["videos"]
    assert videos.shape == (3, 4, 16, 16, 3) and videos.dtype == np.uint8
    for out in ("s.gif", "s.mp4", "folder"):
        result = runner.invoke(main, ["sample", str(alone), "--num", "2", "--steps", "2", "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "folder").glob("*.gif"))) == 2
    # the same seed gives the same samples
    runner.invoke(main, ["sample", str(alone), "--num", "3", "--steps", "2", "--out", str(tmp_path / "t.npz")])
    assert np.array_equal(np.load(tmp_path / "t.npz")["videos"], videos)


def test_learning_rate_warms_up_holds_and_decays_linearly_to_zero(tmp_path):
    cfg = micro("train.steps=6", "train.warmup_steps=2", "train.decay_steps=3", "train.lr=0.01")
    # update k (making step k + 1): min(warm-up (k + 1) / 2, decay (6 - k) / 3)
    assert [learning_rate(cfg, k) for k in range(6)] == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.01 * 2 / 3, 0.01 / 3])
    train(cfg, tmp_path / "run", progress=False)  # the trainer uses it: the logged lr of every step
    logged = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([learning_rate(cfg, k) for k in range(6)])
    assert learning_rate(micro("train.steps=6", "train.warmup_steps=2"), 5) == pytest.approx(5e-4)  # no decay: constant
    with pytest.raises(ConfigError, match="train.decay_steps"):
        micro("train.steps=6", "train.decay_steps=7")


def test_config_errors_name_the_field(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out-dir", str(tmp_path), "train.stepz=3"])
    assert result.exit_code != 0 and "train.stepz" in result.output and "train.steps" in result.output
    result = runner.invoke(main, ["train", "--out-dir", str(tmp_path), "train.lr=fast"])
    assert result.exit_code != 0 and "train.lr must be a number" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nbase_channels = 'wide'\n")
    result = runner.invoke(main, ["train", "--config", str(bad), "--out-dir", str(tmp_path)])
    assert result.exit_code != 0 and "bad.toml" in result.output and "model.base_channels" in result.output
    with pytest.raises(ConfigError, match="data.frames"):
        apply_overrides(RunConfig(), ["data.frames=0"])


def test_conditional_training_with_joint_images_is_refused_naming_the_missing_field(tmp_path):
    import imageio.v3 as iio

    for i in range(2):
        iio.imwrite(tmp_path / f"img{i}.png", np.full((16, 16), 40 * i, dtype=np.uint8))
    joint = ("data.images_per_video=2", f"data.images_path={tmp_path}", "train.steps=1")
    with pytest.raises(ValueError, match=r"'label'.*data\.images_per_video"):
        train(micro(*joint, "train.class_conditional=true"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    train(micro(*joint), tmp_path / "unconditional", progress=False)  # an unconditional run uses no labels


def test_config_file_round_trip(tmp_path):
    cfg = micro("diffusion.prediction=eps", "train.betas=[0.9, 0.95]")
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg


def test_report_page(tmp_path):
    train(micro("train.steps=3", "train.sample_every=3", "train.sample_count=2"), tmp_path / "run", progress=False)
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "index.html").read_text()
    assert "<svg" in page and "polyline" in page and "samples/step_000003.gif" in page and "real.gif" in page
    assert (tmp_path / "run" / "real.gif").is_file() and (tmp_path / "run" / "samples" / "step_000003.mp4").is_file()
    other = tmp_path / "run" / "samples" / "step_000003.gif"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--extra", f"Shipped model={other}"])
    assert result.exit_code == 0 and "Shipped model" in (tmp_path / "run" / "index.html").read_text()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--extra", "no-title.gif"])
    assert result.exit_code != 0 and "TITLE=GIF" in result.output


def test_grad_accumulation_consumes_micro_batches(tmp_path):
    train(micro("train.steps=2", "train.batch_size=4", "train.grad_accum=2"), tmp_path / "run", progress=False)
    _, state = load_state(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert state["step"] == 2 and state["batches"] == 4
    with pytest.raises(ValueError, match="divisible"):
        train(micro("train.batch_size=3", "train.grad_accum=2"), tmp_path / "bad", progress=False)


def test_dataloader_workers_do_not_change_the_result(tmp_path):
    a = train(micro("train.steps=3"), tmp_path / "w0", progress=False)
    b = train(micro("train.steps=3", "data.num_workers=2"), tmp_path / "w2", progress=False)
    assert _same(a.model.state_dict(), b.model.state_dict())


def test_saved_config_says_what_the_network_is(tmp_path):
    """The preset's in_channels = 3 / num_classes = 0 are what the builder overrides from the data: the run's
    config.toml (and so its report page) records the network as built, and loading it builds the same network."""
    cfg = micro("train.steps=1", "train.class_conditional=true")
    assert (cfg.model.in_channels, cfg.model.num_classes) == (3, 0)
    result = train(cfg, tmp_path / "run", progress=False)
    saved = load_config(tmp_path / "run" / "config.toml")
    assert (saved.model.in_channels, saved.model.out_channels, saved.model.num_classes) == (1, 1, 10)
    assert resolve_model(saved) == saved  # resolving is idempotent
    assert result.model.config == saved.model
