"""Distil the shipped moving-digits model into a few-step student, in resumable chunks; or time a distillation step.

    python benchmarks/distill.py [--teacher moving-digits] [--name moving-digits-fast] [--out-dir runs]
                                 [--start-steps 256] [--end-steps 4] [--steps-per-round 2000] [--minutes 60]
    python benchmarks/distill.py --time 5           # seconds per update: training vs distillation, one run

The first form runs `kinema distill` for at most --minutes of wall clock (train.time_limit_minutes: it stops with a
checkpoint), then exits; run the same command again to continue (it resumes the run if it exists), until it prints
"distilled N of N steps". The student is then `runs/NAME` (or `runs/NAME/rounds/n0004`), sampled with
`kinema sample runs/NAME --label 3` and scored with `kinema eval runs/NAME`; `kinema export` makes it shippable.

`--time K` measures, in one process, K optimizer updates (batch 16, fp32) of each of: training with the teacher's own
objective; distillation against the guided teacher (round 1: two teacher passes over a doubled batch per update);
and against an unguided one (later rounds: two passes over the batch). The three alternate, so a shared CPU's load
falls on all of them; it prints the median seconds per update and the ratios to training. A round costs
steps per round × its seconds per update.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from kinema.build import build_dataset, build_model, load_model, resolve_model
from kinema.config import apply_overrides, load_config, with_sample
from kinema.train import distill, distill_config
from kinema.train.distill import Distillation
from kinema.train.trainer import Objective


def _timed_update(objective, network, optimizer, x, cond, generator) -> float:
    """Seconds of one optimizer update of `network` under `objective`: loss, backward, step."""
    start = time.perf_counter()
    objective.loss(network, x, cond, generator).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_steps(teacher: str, repeats: int, batch: int = 16) -> dict:
    """Median seconds per update of training (the teacher's own objective) and of distillation against the guided
    teacher (round 1) and an unguided one (later rounds), interleaved so a shared CPU's load falls on all three."""
    teacher_cfg, teacher_net = load_model(teacher)
    cfg = resolve_model(distill_config(teacher, name="timing"))
    network = build_model(cfg)
    network.load_state_dict(teacher_net.state_dict())
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-12)
    data = build_dataset(cfg.data, "train", progress=False)
    x = torch.stack([data[i]["video"] for i in range(batch)])
    cond = {"labels": torch.tensor([data[i]["label"] for i in range(batch)])} if network.null_class is not None else {}
    objectives = {"train": Objective(resolve_model(teacher_cfg))}
    for name, w in (("round 1 (guided teacher)", cfg.distill.guidance), ("round 2+", 0.0)):
        objective = Distillation(cfg, Path("unused"))
        objective.teacher, objective.teacher_cfg, objective.round = teacher_net, with_sample(teacher_cfg, guidance=w), 1
        objectives[name] = objective
    generator, times = torch.Generator().manual_seed(0), {name: [] for name in objectives}
    for _ in range(repeats + 1):  # the first round warms up
        for name, objective in objectives.items():
            times[name].append(_timed_update(objective, network, optimizer, x, cond, generator))
    out = {f"{name} s/update": statistics.median(t[1:]) for name, t in times.items()}
    for name in list(objectives)[1:]:
        out[f"{name} / train"] = out[f"{name} s/update"] / out["train s/update"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="moving-digits")
    parser.add_argument("--name", default="moving-digits-fast")
    parser.add_argument("--out-dir", default="runs")
    parser.add_argument("--start-steps", type=int, default=256)
    parser.add_argument("--end-steps", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=60.0, help="Wall clock of this chunk; 0: no limit.")
    parser.add_argument("--time", type=int, metavar="K", help="Only time K updates of training and distilling.")
    args = parser.parse_args()
    if args.time:
        for key, value in time_steps(args.teacher, args.time).items():
            print(f"{key:<32} {value:.3f}")
        return
    run = Path(args.out_dir) / args.name
    limit = [f"train.time_limit_minutes={args.minutes}"]
    if (run / "checkpoints").is_dir():
        cfg = apply_overrides(load_config(run / "config.toml"), limit)
    else:
        cfg = distill_config(args.teacher, name=args.name, start_steps=args.start_steps, end_steps=args.end_steps,
                             steps_per_round=args.steps_per_round, overrides=limit)
    result = distill(cfg, run, resume=(run / "checkpoints").is_dir())
    print(f"distilled {result.step} of {cfg.train.steps} steps ({result.stopped_by}); newest: {result.checkpoint}")


if __name__ == "__main__":
    main()
