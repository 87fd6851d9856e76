"""What buys temporal consistency per CPU-minute: short runs of the same preset, one change each, scored by
`kinema eval`'s Moving Digits oracle.

    python benchmarks/temporal_ablations.py [--minutes 5] [--num 64] [--steps 25] [--out-dir runs/abl]
        [--only base,tconv,...] [--collect | --rescore]

Every variant is `kinema train --preset tiny` on 8 frames of 16×16 Moving Digits (one 8-pixel digit, speed 0.5–1.5
pixels per frame) for the same wall-clock budget (`train.time_limit_minutes`), with one setting changed, then
`kinema eval RUN --num N --steps S` (DDIM, EMA weights, seed 0, held-out real clips). Runs go one after another,
never side by side: on a 2-core machine two trainings at once slow each other unevenly, and a time-limited run
measures the machine as much as the method. `--collect` only reads finished runs in OUT_DIR; `--rescore` samples and
scores finished runs again (the same samples: sampling is seeded) — after a change to the oracle.

Prints a table and writes OUT_DIR/ablations.json (and benchmarks/results/temporal_ablations.json with --save).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# 16×16 Moving Digits: 4× fewer pixels than the 32×32 default, and the oracle still reads every real frame
DATA = ["data.height=16", "data.width=16", "data.digit_size=8", "data.speed_min=0.5", "data.speed_max=1.5"]

@dataclass(frozen=True)
class Variant:
    change: str
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()  # extra `kinema eval` options


VARIANTS = {
    "base": Variant("tiny preset (attention at levels 1-2)"),
    "attn-all": Variant("spatial+temporal attention at every level", ("model.attention_levels=0,1,2",)),
    "min-snr": Variant("min-SNR-5 loss weighting", ("diffusion.weighting=min-snr",)),
    "tconv": Variant("temporal convolution (k=3) after every ResBlock", ("model.temporal_conv=3",)),
    "corr50": Variant("noise correlated across frames, rho=0.5", ("diffusion.frame_noise_correlation=0.5",)),
    "lr1e-3": Variant("learning rate 1e-3 (from 5e-4)", ("train.lr=1e-3",)),
    "batch8": Variant("batch 8 (from 16): twice the steps", ("train.batch_size=8",)),
    "class-cfg": Variant("class-conditional (labels dropped 20%), sampled with random classes and CFG w=1",
                         ("train.class_conditional=true", "train.label_dropout=0.2"), ("--guidance", "1")),
}
METRICS = ("identity_consistency", "adjacent_agreement", "motion_plausibility", "recognisability", "count_consistency")


KINEMA = [sys.executable, "-m", "kinema"]


def run_variant(name: str, variant: Variant, args) -> None:
    train = KINEMA + ["train", "--preset", "tiny", "--out-dir", str(args.out_dir), "--name", name, "--quiet", *DATA,
                      f"train.time_limit_minutes={args.minutes}", "train.sample_every=0",
                      "train.checkpoint_every=100000", *variant.overrides]
    subprocess.run(train, check=True)
    evaluate_variant(name, variant, args)


def evaluate_variant(name: str, variant: Variant, args) -> None:
    subprocess.run(KINEMA + ["eval", str(args.out_dir / name), "--num", str(args.num), "--steps", str(args.steps),
                             "--quiet", *variant.eval_args, "--out", str(args.out_dir / name / "eval")], check=True)


def collect(name: str, out_dir: Path) -> dict:
    run = out_dir / name
    result = json.loads((run / "eval" / "eval.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = {row["key"]: row for row in result["metrics"]}  # eval.json metric rows
    return {"variant": name, "change": VARIANTS[name].change, "overrides": list(VARIANTS[name].overrides),
            "steps": result["step"],
            "final_loss": sum(r["loss"] for r in records[-5:]) / len(records[-5:]),
            "minutes": records[-1]["elapsed_s"] / 60, "num": result["num"],
            "sampling_steps": result["sampling"].get("steps"), **{m: metrics[m]["samples"] for m in METRICS},
            "oracle_fd": metrics["oracle_fd"]["samples"],
            "real": {**{m: metrics[m]["real"] for m in METRICS}, "oracle_fd": metrics["oracle_fd"]["real"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/abl"))
    parser.add_argument("--only", help="Comma-separated variants (default: all).")
    parser.add_argument("--collect", action="store_true", help="Only read finished runs.")
    parser.add_argument("--rescore", action="store_true", help="Sample and score finished runs again, no training.")
    parser.add_argument("--save", action="store_true", help="Also write benchmarks/results/temporal_ablations.json.")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.rescore:
        for name in names:
            evaluate_variant(name, VARIANTS[name], args)
    elif not args.collect:
        for name in names:
            run_variant(name, VARIANTS[name], args)
    rows = [collect(n, args.out_dir) for n in names if (args.out_dir / n / "eval" / "eval.json").is_file()]
    print(f"{'variant':<10}{'steps':>7}{'identity':>10}{'adjacent':>10}{'motion':>8}{'recog':>8}{'count':>8}"
          f"{'oracle FD':>11}")
    for r in rows + ([{"variant": "real", "steps": "", **rows[0]["real"]}] if rows else []):
        print(f"{r['variant']:<10}{r['steps']:>7}{r['identity_consistency']:>10.3f}"
              f"{r.get('adjacent_agreement') or float('nan'):>10.3f}"
              f"{r['motion_plausibility']:>8.3f}{r['recognisability']:>8.3f}{r['count_consistency']:>8.3f}"
              f"{r['oracle_fd']:>11.2f}")
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "minutes": args.minutes, "data": DATA, "rows": rows}
    (args.out_dir / "ablations.json").write_text(json.dumps(report, indent=1))
    if args.save:
        Path("benchmarks/results/temporal_ablations.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
