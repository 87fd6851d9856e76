"""Training that survives faults: stop signals, the run lock, resume checks, damaged checkpoints, failed writes.

docs/faults.md is the table of these faults; each row names the test here that covers it.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import kinema.checkpoint as checkpoint_module
import kinema.train.trainer as trainer
from helpers import MICRO, micro
from kinema.checkpoint import list_checkpoints, verify_checkpoint
from kinema.cli import main
from kinema.config import ConfigError
from kinema.train import EXIT_RESUMABLE, RunLock, TrainingError, train
from kinema.train.resume import checkpoint_to_resume


def _weights(ckpt: Path, kind: str = "model") -> dict:
    return load_file(str(ckpt / f"{kind}.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _signal_at(monkeypatch, step: int, signals=(signal.SIGTERM,)):
    """Send `signals` to this process right after optimizer step `step`."""
    real = trainer._optimizer_step

    def stepping(cfg, state, *args, **kwargs):
        out = real(cfg, state, *args, **kwargs)
        if state.step == step:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(trainer, "_optimizer_step", stepping)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_finishes_the_step_checkpoints_and_restores_the_handlers(tmp_path, monkeypatch, sig):
    before = signal.getsignal(sig)
    _signal_at(monkeypatch, 3, (sig, sig))  # a second signal while stopping changes nothing
    result = train(micro("train.steps=20", "train.checkpoint_every=100"), tmp_path / "run", progress=False)
    assert result.stopped_by == f"signal {signal.Signals(sig).name}" and result.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000003"]
    assert verify_checkpoint(result.checkpoint, training=True) == []
    assert signal.getsignal(sig) == before
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_run_stopped_by_a_signal_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = micro("train.steps=8", "train.checkpoint_every=100")
    _signal_at(monkeypatch, 5)
    assert train(cfg, tmp_path / "stopped", progress=False).stopped_by == "signal SIGTERM"
    monkeypatch.undo()
    train(cfg, tmp_path / "stopped", resume=True, progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    a, b = (tmp_path / name / "checkpoints" / "step_000008" for name in ("stopped", "straight"))
    assert _same(_weights(a), _weights(b)) and _same(_weights(a, "ema"), _weights(b, "ema"))


def _kinema(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kinema", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_log(run: Path, lines: int, proc, timeout: float = 120) -> None:
    log, deadline = run / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= lines:
            return
        time.sleep(0.01)
    raise AssertionError(f"the trainer logged fewer than {lines} steps (exit code {proc.poll()})")


@pytest.mark.slow
def test_kinema_train_exits_75_on_sigterm_and_the_printed_resume_command_continues_it(tmp_path):
    args = ["train", "--quiet", "--out-dir", str(tmp_path), "--name", "run", *MICRO, "train.steps=100",
            "train.checkpoint_every=1000"]
    proc = _kinema(args, tmp_path)
    _wait_for_log(tmp_path / "run", 5, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_RESUMABLE, out
    assert "stopped by a SIGTERM" in out and "kinema train --resume --name run" in out
    (stopped,) = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert verify_checkpoint(stopped, training=True) == [] and 5 <= int(stopped.name[5:]) < 100
    resumed = _kinema([*args, "--resume"], tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "trained 100 steps (steps)" in out, out


DDP_SCRIPT = """
import os, sys, torch.distributed as dist
from kinema.config import RunConfig, apply_overrides
from kinema.train import train
run, mode = sys.argv[1], sys.argv[2]  # mode: full | resume
cfg = apply_overrides(RunConfig(name="ddp"), sys.argv[3:])
os.makedirs(run, exist_ok=True)
open(f"{run}/pid{dist.get_rank() if dist.is_initialized() else os.environ['RANK']}", "w").write(str(os.getpid()))
result = train(cfg, run, progress=False, resume=mode == "resume")
print(f"rank {dist.get_rank()} stopped at step {result.step} by {result.stopped_by}", flush=True)
dist.destroy_process_group()
"""


def _torchrun(script: Path, run: Path, mode: str, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(run), mode, *MICRO, "train.batch_size=4", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_both_at_the_same_step_and_resumes_bit_identically(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    args = ("train.steps=60", "train.checkpoint_every=1000")
    proc = _torchrun(script, tmp_path / "stopped", "full", *args)
    at = random.randint(3, 30)  # a random step: resume is exact wherever the signal lands
    _wait_for_log(tmp_path / "stopped", at, proc)
    os.kill(int((tmp_path / "stopped" / "pid1").read_text()), signal.SIGTERM)  # rank 1 only
    out, _ = proc.communicate(timeout=300)
    stops = dict(re.findall(r"rank (\d) stopped at step (\d+) by signal", out))
    assert len(stops) == 2 and stops["0"] == stops["1"], out[-3000:]  # both ranks, at the same step
    (stopped,) = list_checkpoints(tmp_path / "stopped" / "checkpoints")
    for name, mode in (("stopped", "resume"), ("straight", "full")):
        out, _ = _torchrun(script, tmp_path / name, mode, *args).communicate(timeout=300)
        assert "stopped at step 60 by steps" in out, out[-3000:]
    a, b = (tmp_path / name / "checkpoints" / "step_000060" for name in ("stopped", "straight"))
    assert _same(_weights(a), _weights(b)) and _same(_weights(a, "ema"), _weights(b, "ema")), stopped.name


def test_a_second_trainer_on_a_locked_run_stops_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    train(micro("train.steps=2"), run, progress=False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with RunLock(run):
        result = CliRunner().invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "run", "--resume",
                                           "--quiet", "train.steps=4"])
    assert result.exit_code == 1
    assert f"pid {os.getpid()} on host" in result.output and "being trained by" in result.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched


@pytest.mark.slow
def test_a_lock_left_by_a_killed_trainer_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom kinema.train import RunLock\n"
                               f"RunLock({str(run)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    result = CliRunner().invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "run", "--quiet", *MICRO,
                                       "train.steps=1"])
    assert result.exit_code == 1 and f"pid {holder.pid}" in result.output  # alive: refused
    holder.kill()
    holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid  # the dead holder's record is still there
    result = CliRunner().invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "run", "--quiet", *MICRO,
                                       "train.steps=1"])
    assert result.exit_code == 0, result.output
    assert f"took over the lock of {run} left by pid {holder.pid}" in result.output


def test_resume_refuses_a_changed_network_or_clip_shape_and_notes_allowed_changes(tmp_path):
    run = tmp_path / "run"
    train(micro("train.steps=2"), run, progress=False)
    for override, named in (("model.base_channels=16", "model.base_channels 8 -> 16"),
                            ("data.frames=8", "data.frames 4 -> 8"),
                            ("diffusion.prediction=eps", "diffusion.prediction 'v' -> 'eps'")):
        with pytest.raises(ConfigError, match="cannot resume with another network or clip shape") as err:
            train(micro("train.steps=4", override), run, resume=True, progress=False)
        assert named in str(err.value)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000002"]
    result = CliRunner().invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "run", "--resume", "--quiet",
                                       "train.steps=4", "train.lr=1e-3", "model.gradient_checkpointing=true"])
    assert result.exit_code == 0, result.output
    assert "resuming with changed settings" in result.output and "train.steps 2 -> 4" in result.output
    assert "train.lr 0.0005 -> 0.001" in result.output and "trained 4 steps" in result.output


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_a_damaged_newest_checkpoint_is_reported_and_resume_falls_back_to_the_newest_intact(tmp_path):
    cfg = micro("train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=5")
    train(cfg, tmp_path / "run", progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    _truncate(ckpts / "step_000006" / "model.safetensors")
    last, notes = checkpoint_to_resume(tmp_path / "run", resume=True)  # one damaged: back one checkpoint
    assert last.name == "step_000004" and notes[-1] == "resuming from step_000004 instead: 2 step(s) to train again"
    (ckpts / "step_000004" / "state.json").write_text("{not json")
    for training in (False, True):
        assert "model.safetensors is truncated" in verify_checkpoint(ckpts / "step_000006", training=training)[0]
    result = CliRunner().invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "run", "--resume", "--quiet",
                                       "train.steps=8"])
    assert result.exit_code == 0, result.output
    assert "skipping the damaged checkpoint" in result.output and "step_000006 (model.safetensors is truncated" in (
        result.output)
    assert "step_000004 (state.json is not valid JSON" in result.output
    assert "resuming from step_000002 instead: 4 step(s) to train again" in result.output
    assert (ckpts / "step_000006.damaged" / "model.safetensors").is_file()  # moved aside when re-written, kept
    train(micro("train.steps=8", "train.checkpoint_every=2"), tmp_path / "straight", progress=False)
    a, b = ckpts / "step_000008", tmp_path / "straight" / "checkpoints" / "step_000008"
    assert _same(_weights(a), _weights(b))


def test_sampling_skips_a_damaged_newest_checkpoint_and_refuses_a_damaged_folder(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run / "checkpoints", run / "checkpoints")
    bad = run / "checkpoints" / "step_000004"
    shutil.copytree(run / "checkpoints" / "step_000003", bad)
    (bad / "state.json").write_text(json.dumps({"step": 4}))
    _truncate(bad / "ema.safetensors")
    runner = CliRunner()
    with pytest.warns(UserWarning, match=f"skipping the damaged checkpoint {bad}: ema.safetensors is truncated"):
        result = runner.invoke(main, ["sample", str(run), "--num", "1", "--steps", "1",
                                      "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["sample", str(bad), "--num", "1", "--steps", "1"])
    assert result.exit_code == 1 and "damaged checkpoint: ema.safetensors is truncated" in result.output
    (bad / "ema.safetensors").write_bytes((run / "checkpoints" / "step_000003" / "ema.safetensors").read_bytes())
    (bad / "state.json").write_text(json.dumps({"step": 3}))
    assert verify_checkpoint(bad) == ["state.json says step 3, the folder's name step 4"]


def test_a_failed_checkpoint_write_keeps_the_earlier_ones_and_stops_with_the_step_reached(tmp_path, monkeypatch):
    real, calls = checkpoint_module.save_file, []

    def full_disk(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) > 2:  # the second checkpoint's first file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    synced = []
    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    monkeypatch.setattr(checkpoint_module, "_fsync_dir", synced.append)
    with pytest.raises(TrainingError, match="stopped at step 4: .*step_000004: the checkpoint could not be written "
                                            r"\(No space left on device\).* the last good checkpoint is .*step_000002"):
        train(micro("train.steps=6", "train.checkpoint_every=2"), tmp_path / "run", progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002"]  # no temporary folder left behind
    assert verify_checkpoint(ckpts / "step_000002", training=True) == [] and synced == [ckpts]
    monkeypatch.undo()
    assert train(micro("train.steps=6", "train.checkpoint_every=2"), tmp_path / "run", resume=True,
                 progress=False).step == 6
