"""Does `kinema plan` tell the truth? Its memory estimate against the measured peak, its step time against the
trainer's own log.

    python benchmarks/plan_check.py [--presets tiny16 small] [--timed 5] [--train-steps 12] [--rounds 3]
                                    [--no-memory] [--out FILE.json]

For each preset, on the CPU:
* the plan's counts (`kinema.train.plan.plan`, timed=0): parameters, FLOPs and the memory estimate;
* the measured peak, twice, each in a fresh subprocess running 2 real trainer steps (the first allocates AdamW's
  moments, the second is a steady one):
  - *tensors*: torch.profiler with profile_memory=True; the running sum of every op's self allocations, in time
    order, gives the peak of live tensor bytes during the steps, to which the network and EMA weights that were
    already allocated (their exact nbytes) are added. This is the quantity the estimate models.
  - *RSS*: the process's resident-set high-water mark (ru_maxrss) minus its RSS just before the steps, plus the
    same weights; this also counts allocator overhead and oneDNN scratch space, which the estimate leaves out.
* `--rounds` alternations of the plan's step timing (`time_steps` of a `TrainerStep`, 2 untimed steps then
  `--timed` timed ones: what `kinema plan` runs) and a real training run (`kinema.train.train`, `--train-steps`
  steps, logging every step). From the run's metrics.jsonl: 1 / steps_per_s of the last record (which averages in
  the first steps' warm-up) and the seconds per step between the records of step 2 and the last (leaving out the
  first 2 steps, as the plan does). Alternating puts a change in a shared machine's load on both sides.
A markdown table is printed; --out writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kinema.config import RUN_PRESETS, apply_overrides
from kinema.train import train
from kinema.train.plan import TrainerStep, plan, time_steps

QUIET = ["train.sample_every=0", "train.log_every=1", "train.checkpoint_every=100000000"]


def preset(name: str):
    cfg = apply_overrides(copy.deepcopy(RUN_PRESETS[name]), QUIET)
    cfg.name = f"plan_check-{name}"
    return cfg


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_peak(name: str, how: str) -> int:
    """Peak bytes of 2 real trainer steps of preset `name` in this process (see the module docstring)."""
    step = TrainerStep(preset(name), torch.device("cpu"))
    if how == "rss":
        before = _rss_now()
        for _ in range(2):
            step()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before + step.weight_bytes()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(2):
            step()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    return max(itertools.accumulate(m for _, m in events)) + step.weight_bytes()


def peak_in_subprocess(name: str, how: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--measure", name, how], check=True, capture_output=True,
                         text=True).stdout
    return int(out.strip().splitlines()[-1])


def trainer_rates(name: str, steps: int) -> tuple[float, float]:
    """(steps_per_s logged at the last step, the rate between the records of step 2 and the last) of a real run."""
    with tempfile.TemporaryDirectory() as tmp:
        train(preset(name), Path(tmp) / "run", max_steps=steps, progress=False)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[1], records[-1]
    return last["steps_per_s"], (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def check(name: str, timed: int, train_steps: int, rounds: int, memory: bool) -> dict:
    """One preset's row. The step-time comparison alternates `rounds` times between the plan's timing and a real
    run, so that a change in the load of a shared machine falls on both sides."""
    result = plan(preset(name), torch.device("cpu"), timed=0)
    row = {"preset": name, "precision": result.precision, "parameters": result.parameters,
           "gflop_per_step": result.flops_per_step / 1e9, "estimate_mib": result.memory.total / 2**20,
           "plan_step_s": [], "log_step_s": [], "log_steady_step_s": []}
    if memory:
        row["peak_tensors_mib"] = peak_in_subprocess(name, "tensors") / 2**20
        row["peak_rss_mib"] = peak_in_subprocess(name, "rss") / 2**20
    step = TrainerStep(preset(name), torch.device("cpu"))
    for _ in range(rounds):
        row["plan_step_s"].append(time_steps(step, torch.device("cpu"), 2, timed))
        logged, steady = trainer_rates(name, train_steps)
        row["log_step_s"].append(1 / logged)
        row["log_steady_step_s"].append(1 / steady)
    return row


def _ratio(r: dict, key: str) -> str:
    return f"{r['estimate_mib']:.0f} / {r[key]:.0f} = {r['estimate_mib'] / r[key]:.2f}" if key in r else "–"


def table(rows: list[dict]) -> str:
    lines = ["| preset | precision | params | GFLOP/step | estimate / peak tensors MiB | estimate / peak RSS MiB | "
             "plan step s | trainer log step s (last record) | trainer log step s (steps 2–last) | "
             "plan / log (steps 2–last), median |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = sorted(p / s for p, s in zip(r["plan_step_s"], r["log_steady_step_s"]))
        seconds = {k: ", ".join(f"{v:.3f}" for v in r[k]) for k in ("plan_step_s", "log_step_s", "log_steady_step_s")}
        lines.append(f"| `{r['preset']}` | {r['precision']} | {r['parameters'] / 1e6:.2f} M | "
                     f"{r['gflop_per_step']:.1f} | {_ratio(r, 'peak_tensors_mib')} | {_ratio(r, 'peak_rss_mib')} | "
                     f"{seconds['plan_step_s']} | {seconds['log_step_s']} | {seconds['log_steady_step_s']} | "
                     f"{ratios[len(ratios) // 2]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny16", "small"])
    parser.add_argument("--timed", type=int, default=5, help="Plan's timed steps (after 2 untimed).")
    parser.add_argument("--train-steps", type=int, default=12, help="Steps of the real run whose log is read.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternations of plan timing and a real run.")
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory subprocesses.")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", nargs=2, metavar=("PRESET", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the fresh subprocess of one peak measurement
        print(measure_peak(*args.measure))
        return
    rows = [check(name, args.timed, args.train_steps, args.rounds, not args.no_memory) for name in args.presets]
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
