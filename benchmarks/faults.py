"""The fault table of docs/faults.md, measured: each fault injected into a real `kinema train`, what it cost.

    python benchmarks/faults.py            # about a minute on 2 CPU cores; prints a markdown table

For every fault: how it was injected, the steps lost (steps trained but in no checkpoint the next run can use),
the exit code (of the run that met the fault; for SIGKILL, the killed run's and then the resumed run's) and the
line the user sees. The runs are the test suite's micro config (tests/helpers.py).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import MICRO  # noqa: E402

KINEMA = [sys.executable, "-m", "kinema"]


def kinema(args, out_dir: Path, wait: bool = True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*KINEMA, "train", "--quiet", "--out-dir", str(out_dir), *MICRO, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def logged_steps(run: Path) -> int:
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return json.loads(lines[-1])["step"] if lines else 0


def newest(run: Path) -> int:
    found = sorted((run / "checkpoints").glob("step_??????"))
    return int(found[-1].name[5:]) if found else 0


def wait_for(run: Path, step: int, proc) -> None:
    while logged_steps(run) < step and proc.poll() is None:
        time.sleep(0.01)


def line(out: str, *needles: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip() and "it/s" not in ln]
    for needle in needles:
        found = [ln for ln in lines if needle in ln]
        if found:
            return found[0]
    return lines[-1] if lines else ""


def signal_run(tmp: Path, sig, every: int) -> dict:
    run = tmp / f"sig{int(sig)}"
    proc = kinema(["--name", run.name, "train.steps=400", f"train.checkpoint_every={every}"], tmp, wait=False)
    wait_for(run, 37, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=600)
    trained = logged_steps(run)
    return {"lost": trained - newest(run), "code": proc.returncode, "says": line(out, "stopped by", "Error", "trained")}


def second_trainer(tmp: Path) -> dict:
    run = tmp / "locked"
    first = kinema(["--name", run.name, "train.steps=400"], tmp, wait=False)
    wait_for(run, 3, first)
    code, out = kinema(["--name", run.name, "--resume", "train.steps=400"], tmp)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=600)
    return {"lost": 0, "code": code, "says": line(out, "Error")}


def stale_lock(tmp: Path) -> dict:
    run = tmp / "stale"
    first = kinema(["--name", run.name, "train.steps=400", "train.checkpoint_every=10"], tmp, wait=False)
    wait_for(run, 25, first)
    first.kill()
    first.wait()
    trained, saved = logged_steps(run), newest(run)
    code, out = kinema(["--name", run.name, "--resume", "train.steps=30"], tmp)
    return {"lost": trained - saved, "code": f"{first.returncode}, then {code}", "says": line(out, "took over")}


def damaged(tmp: Path, what: str) -> dict:
    run = tmp / f"damaged-{what}"
    kinema(["--name", run.name, "train.steps=30", "train.checkpoint_every=10"], tmp)
    ckpt = run / "checkpoints" / "step_000030"
    if what == "weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (ckpt / "state.json").write_text("{")
    code, out = kinema(["--name", run.name, "--resume", "train.steps=40"], tmp)
    resumed_from = int(re.search(r"resuming from step_(\d+)", out).group(1))
    return {"lost": 30 - resumed_from, "code": code, "says": line(out, "resuming from")}


def changed_shape(tmp: Path) -> dict:
    run = tmp / "shape"
    kinema(["--name", run.name, "train.steps=10"], tmp)
    code, out = kinema(["--name", run.name, "--resume", "train.steps=20", "model.base_channels=16"], tmp)
    return {"lost": 0, "code": code, "says": line(out, "Error")}


FULL_DISK = """
import errno, sys
import kinema.checkpoint as ck
from kinema.cli import main
real, calls = ck.save_file, []
def full(*a, **k):
    calls.append(1)
    if len(calls) > 2 * 3:  # the 4th checkpoint
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(*a, **k)
ck.save_file = full
main(sys.argv[1:])
"""


def full_disk(tmp: Path) -> dict:
    run = tmp / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", FULL_DISK, "train", "--quiet", "--out-dir", str(tmp), "--name", run.name, *MICRO,
           "train.steps=60", "train.checkpoint_every=10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    temporary = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not temporary and errno.ENOSPC
    return {"lost": logged_steps(run) - newest(run), "code": proc.returncode,
            "says": line(proc.stdout + proc.stderr, "Error")}


FAULTS = [
    ("SIGTERM (SLURM, spot instance)", "`kill -TERM` after step 37", "test_kinema_train_exits_75_on_sigterm_and_the_"
     "printed_resume_command_continues_it", lambda t: signal_run(t, signal.SIGTERM, 1000)),
    ("SIGINT (Ctrl-C)", "`kill -INT` after step 37", "test_a_stop_signal_finishes_the_step_checkpoints_and_restores_"
     "the_handlers", lambda t: signal_run(t, signal.SIGINT, 1000)),
    ("SIGUSR1 (SLURM `--signal=USR1@…`)", "`kill -USR1` after step 37", "test_a_stop_signal_finishes_the_step_"
     "checkpoints_and_restores_the_handlers", lambda t: signal_run(t, signal.SIGUSR1, 1000)),
    ("SIGKILL (OOM killer, lost machine)", "`kill -9` after step 25, checkpoint every 10",
     "test_sigkill_at_any_point_resumes_to_the_same_weights, test_a_lock_left_by_a_killed_trainer_is_taken_over",
     stale_lock),
    ("a second trainer on the same run", "`kinema train --resume` while one trains",
     "test_a_second_trainer_on_a_locked_run_stops_at_once_naming_the_holder", second_trainer),
    ("truncated newest model.safetensors", "cut to half its size, then `--resume`",
     "test_a_damaged_newest_checkpoint_is_reported_and_resume_falls_back_to_the_newest_intact",
     lambda t: damaged(t, "weights")),
    ("unreadable newest state.json", "overwritten with `{`, then `--resume`",
     "test_a_damaged_newest_checkpoint_is_reported_and_resume_falls_back_to_the_newest_intact",
     lambda t: damaged(t, "state")),
    ("a changed network on resume", "`--resume model.base_channels=16`",
     "test_resume_refuses_a_changed_network_or_clip_shape_and_notes_allowed_changes", changed_shape),
    ("disk full while writing a checkpoint", "ENOSPC from the 4th checkpoint's first file (step 40)",
     "test_a_failed_checkpoint_write_keeps_the_earlier_ones_and_stops_with_the_step_reached", full_disk),
]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("| fault | injected | steps lost | exit | what the user sees | test |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, how, test, run in FAULTS:
            r = run(Path(tmp))
            says = r["says"].replace("|", "\\|").replace(tmp, "…")
            print(f"| {name} | {how} | {r['lost']} | {r['code']} | {says} | `{test}` |", flush=True)


if __name__ == "__main__":
    main()
