"""The U-Net `tiny` against `dit-tiny` on Moving Digits, each trained for the same wall-clock budget.

    python benchmarks/unet_vs_dit.py [--minutes 10] [--num 64] [--steps 50] [--out-dir runs/unet_vs_dit]

Both run presets share data (8 frames of 32×32 grey Moving Digits), batch, learning rate, EMA and precision; only
the network differs. Each is trained with kinema's own trainer (`kinema.train.train`) until
`train.time_limit_minutes` stops it, one after the other in this process, into OUT_DIR/tiny and OUT_DIR/dit-tiny
(checkpoints there can be sampled with `kinema sample`). Reported per model:

- parameters, and FLOPs of one training step (forward + backward of the v-MSE loss on one batch), counted by
  torch.utils.flop_counter.FlopCounterMode (independent of precision);
- median step time (from metrics.jsonl, one record per step), steps done, final loss (mean of the last 50 steps);
- sample quality of N EMA samples (DDIM, --steps steps) by the Moving Digits oracle (`kinema.eval.DigitOracle`):
  identity consistency, motion plausibility, recognisability, and the oracle Fréchet distance to N real held-out
  clips; and the same figures for N other real clips, measured in the same run (the noise floor).

Prints a table and writes OUT_DIR/results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from kinema.build import build_dataset, build_model, build_schedule
from kinema.config import RUN_PRESETS, RunConfig, apply_overrides, with_sample
from kinema.diffusion import diffusion_loss
from kinema.eval import DigitOracle
from kinema.precision import resolve_precision
from kinema.sample import generate
from kinema.train import train

PRESETS = ("tiny", "dit-tiny")
LAST_STEPS = 50  # steps averaged for the final loss


def flops_per_step(cfg: RunConfig) -> float:
    """FLOPs of forward + backward of the training loss on one batch (batch_size clips of the data shape)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    d = cfg.data
    x = torch.rand(cfg.train.batch_size, d.channels, d.frames, d.height, d.width) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(model, build_schedule(cfg.diffusion), x, prediction=cfg.diffusion.prediction,
                       weighting=cfg.diffusion.weighting).mean().backward()
    return float(counter.get_total_flops())


def oracle_scores(oracle: DigitOracle, videos: torch.Tensor, reference: torch.Tensor) -> dict:
    """The oracle's metrics of `videos` and the oracle Fréchet distance to `reference` real clips."""
    return {**oracle.metrics(videos), "oracle_fd": oracle.frechet(reference, videos)}


def step_times(run_dir: Path) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step) from the run's metrics.jsonl (train.log_every = 1)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    elapsed = [0.0] + [r["elapsed_s"] for r in records]
    return [b - a for a, b in zip(elapsed, elapsed[1:])], [r["loss"] for r in records]


def run(name: str, args: argparse.Namespace, oracle: DigitOracle, reference: torch.Tensor) -> dict:
    cfg = apply_overrides(copy.deepcopy(RUN_PRESETS[name]), [
        f"train.time_limit_minutes={args.minutes}", "train.steps=100000000", "train.sample_every=0",
        "train.log_every=1", "train.checkpoint_every=100000000"])
    params = sum(p.numel() for p in build_model(cfg).parameters())
    flops = flops_per_step(cfg)
    print(f"training {name} for {args.minutes} min ({params / 1e6:.2f} M parameters, {flops / 1e9:.1f} GFLOP/step)")
    result = train(cfg, args.out_dir / name, progress=not args.quiet)
    times, losses = step_times(args.out_dir / name)
    print(f"sampling {args.num} videos from {name} ({args.steps} DDIM steps)")
    videos = generate(result.ema, with_sample(cfg, steps=args.steps, sampler="ddim"), args.num, progress=not args.quiet)
    return {"name": name, "model": cfg.model.summary(), "params": params, "gflop_per_step": flops / 1e9,
            "median_step_s": statistics.median(times), "steps": result.step,
            "final_loss": float(np.mean(losses[-LAST_STEPS:])), **oracle_scores(oracle, videos, reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per model")
    parser.add_argument("--num", type=int, default=64, help="samples (and real clips) per oracle measurement")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/unet_vs_dit"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    taken = [args.out_dir / name for name in PRESETS if (args.out_dir / name).exists()]
    if taken:
        sys.exit(f"{', '.join(map(str, taken))} already exist(s): remove, or choose another --out-dir")

    data = RUN_PRESETS[PRESETS[0]].data
    oracle = DigitOracle(data.num_digits, data.digit_size, (data.speed_min, data.speed_max))
    real_ds = build_dataset(data, "test", progress=False)
    reference = torch.stack([real_ds[i]["video"] for i in range(args.num)])
    real = torch.stack([real_ds[args.num + i]["video"] for i in range(args.num)])
    results = [run(name, args, oracle, reference) for name in PRESETS]
    baseline = oracle_scores(oracle, real, reference)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(RUN_PRESETS[PRESETS[0]].train.precision, device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\n{args.minutes} min of training each; {data.frames}x{data.height}x{data.width} Moving Digits; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision} on {device.type}; "
          f"commit {commit or '?'}")
    print(f"{'model':<10}{'params':>9}{'GFLOP/step':>12}{'step s':>8}{'steps':>7}{'loss':>8}"
          f"{'identity':>10}{'motion':>8}{'recognis.':>11}{'oracle FD':>11}")
    for r in results:
        print(f"{r['name']:<10}{r['params'] / 1e6:>8.2f}M{r['gflop_per_step']:>12.1f}{r['median_step_s']:>8.3f}"
              f"{r['steps']:>7}{r['final_loss']:>8.4f}{r['identity_consistency']:>10.1%}"
              f"{r['motion_plausibility']:>8.1%}{r['recognisability']:>11.1%}{r['oracle_fd']:>11.2f}")
    print(f"{'real':<54}{baseline['identity_consistency']:>10.1%}{baseline['motion_plausibility']:>8.1%}"
          f"{baseline['recognisability']:>11.1%}{baseline['oracle_fd']:>11.2f}")
    print(f"N = {args.num} samples per model ({args.steps} DDIM steps, EMA weights) and {args.num} real test clips")
    out = {"minutes": args.minutes, "num": args.num, "sampling_steps": args.steps, "commit": commit,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "device": device.type,
           "precision": precision, "final_loss_over_last_steps": LAST_STEPS,
           "models": results, "real": baseline}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
