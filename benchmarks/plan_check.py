"""Does `kinema plan` tell the truth? Its memory estimate against the measured peak, its step time against the
trainer's own log.

    python benchmarks/plan_check.py [--presets tiny16 small] [--timed 5] [--train-steps 12] [--out FILE.json]

For each preset, on this device, in this order:
* the plan (`kinema.train.plan.plan`): parameters, FLOPs, the memory estimate and a step time measured over
  `--timed` real trainer steps after 2 untimed ones;
* the measured peak, twice, each in a fresh subprocess running 2 real trainer steps (the first allocates AdamW's
  moments, the second is a steady one):
  - *tensors*: torch.profiler with profile_memory=True; the running sum of every op's self allocations, in time
    order, gives the peak of live tensor bytes during the steps, to which the network and EMA weights that were
    already allocated (their exact nbytes) are added. This is the quantity the estimate models.
  - *RSS*: the process's resident-set high-water mark (ru_maxrss) minus its RSS just before the steps, plus the
    same weights; this also counts allocator overhead and oneDNN scratch space, which the estimate leaves out.
* a real training run (`kinema.train.train`, --train-steps steps, logging every step): its metrics.jsonl
  steps_per_s at the last step (which averages in the first, warm-up step) and the rate between the log records
  of steps 2 and the last (the same steps the plan times).
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
from kinema.train.plan import TrainerStep, plan

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


def check(name: str, timed: int, train_steps: int) -> dict:
    result = plan(preset(name), torch.device("cpu"), timed=timed)
    tensors, rss = peak_in_subprocess(name, "tensors"), peak_in_subprocess(name, "rss")
    logged, steady = trainer_rates(name, train_steps)
    return {"preset": name, "precision": result.precision, "parameters": result.parameters,
            "gflop_per_step": result.flops_per_step / 1e9, "estimate_mib": result.memory.total / 2**20,
            "peak_tensors_mib": tensors / 2**20, "peak_rss_mib": rss / 2**20, "plan_step_s": result.step_s,
            "log_steps_per_s": logged, "log_steady_steps_per_s": steady, "mfu": result.mfu}


def table(rows: list[dict]) -> str:
    lines = ["| preset | precision | params | GFLOP/step | estimate MiB | peak tensors MiB (est./peak) | peak RSS MiB "
             "(est./peak) | plan step s | trainer log step s: last record / steps 2–last | plan MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(f"| `{r['preset']}` | {r['precision']} | {r['parameters'] / 1e6:.2f} M | "
                     f"{r['gflop_per_step']:.1f} | {r['estimate_mib']:.0f} | {r['peak_tensors_mib']:.0f} "
                     f"({r['estimate_mib'] / r['peak_tensors_mib']:.2f}) | {r['peak_rss_mib']:.0f} "
                     f"({r['estimate_mib'] / r['peak_rss_mib']:.2f}) | {r['plan_step_s']:.3f} | "
                     f"{1 / r['log_steps_per_s']:.3f} / {1 / r['log_steady_steps_per_s']:.3f} | {mfu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny16", "small"])
    parser.add_argument("--timed", type=int, default=5, help="Plan's timed steps (after 2 untimed).")
    parser.add_argument("--train-steps", type=int, default=12, help="Steps of the real run whose log is read.")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", nargs=2, metavar=("PRESET", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the fresh subprocess of one peak measurement
        print(measure_peak(*args.measure))
        return
    rows = [check(name, args.timed, args.train_steps) for name in args.presets]
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
