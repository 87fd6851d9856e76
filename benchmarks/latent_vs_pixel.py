"""Latent against pixel diffusion at equal CPU time: 64×64 Moving Digits (28-pixel digits, the Moving MNIST scale).

    python benchmarks/latent_vs_pixel.py --ae-minutes 20 --diffusion-minutes 20 [--num 256] [--eval-steps 50]
        [--out runs/lvp]

Three runs, each `kinema train` under train.time_limit_minutes, then scored by `kinema eval` (oracle metrics):
  1. the autoencoder (`--preset ae-digits64`) for --ae-minutes, scored on its reconstructions (PSNR, SSIM);
  2. a latent run (`--preset tiny`, latent.autoencoder = run 1) for --diffusion-minutes;
  3. a pixel run (`--preset tiny`, the same data) for --ae-minutes + --diffusion-minutes, the latent pipeline's
     whole budget.
Both diffusion runs sample with the preset's sampler (DDIM), --eval-steps steps (the preset's 50 by default; a pixel
64×64 sample costs far more than a latent one, `kinema plan`, so a slow machine may need fewer). Each finished stage
writes OUT/NAME.json and is skipped when the script is called again, so a session that ends mid-way loses at most the
stage it was in (a stage interrupted mid-training restarts: its time limit is per call). Prints a markdown table with
the real clips' scores (eval's real column) as the ceiling and the real clips frozen at their first frame as the
trivial baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.height=64", "data.width=64", "data.digit_size=28", "data.speed_min=2", "data.speed_max=6"]
METRICS = ("identity_consistency", "motion_plausibility", "recognisability", "count_consistency", "oracle_fd")


def kinema(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "kinema", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"kinema {' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def stage(out: Path, name: str, train_args: list[str], minutes: float, num: int, steps: int) -> dict:
    """Train OUT/runs/NAME for `minutes` (fresh), evaluate it; cached in OUT/NAME.json."""
    done = out / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run = out / "runs" / name
    if run.exists():
        import shutil

        shutil.rmtree(run)  # an interrupted stage restarts: its budget is one uninterrupted call
    start = time.time()
    kinema("train", "--quiet", "--out-dir", str(run.parent), "--name", name, *train_args, "train.steps=1000000",
           "train.sample_every=0", f"train.time_limit_minutes={minutes}")
    trained_s = time.time() - start
    start = time.time()
    kinema("eval", str(run), "--num", str(num), "--no-fvd", "--quiet", "--out", str(out / "eval" / name),
           *([] if "ae-digits64" in train_args else ["--steps", str(steps)]))
    eval_s = time.time() - start
    result = json.loads((out / "eval" / name / "eval.json").read_text())
    record = {"name": name, "minutes": minutes, "trained_s": trained_s, "eval_s": eval_s, "step": result["step"],
              "num": num, "eval_steps": steps,
              "metrics": {m["key"]: [m["samples"], m["real"]] for m in result["metrics"]}}
    done.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{name}: {record['step']} steps, {trained_s / 60:.1f} min, eval {eval_s / 60:.1f} min", file=sys.stderr,
          flush=True)
    return record


def frozen_baseline(num: int) -> dict:
    """Oracle scores of real 64×64 clips frozen at their first frame (kinema.eval.corruptions.frozen)."""
    from kinema.config import RUN_PRESETS, apply_overrides
    from kinema.eval.evaluation import reference_clips, score

    data = apply_overrides(RUN_PRESETS["tiny"], DATA).data
    real = reference_clips(data, "test", num)
    frozen = real[:, :, :1].expand_as(real).contiguous()
    other = reference_clips(data, "test", num, offset=num)
    rows, _, _ = score(frozen, real, data, real_baseline=other)
    return {row.key: [row.samples, row.real] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-minutes", type=float, default=20.0)
    parser.add_argument("--diffusion-minutes", type=float, default=20.0)
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--eval-steps", type=int, default=50, help="DDIM steps of both diffusion runs' samples")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "latent-vs-pixel")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ae = stage(args.out, "ae64", ["--preset", "ae-digits64"], args.ae_minutes, args.num, args.eval_steps)
    ae_run = args.out / "runs" / "ae64"
    latent = stage(args.out, "latent64", ["--preset", "tiny", f"latent.autoencoder={ae_run}", *DATA],
                   args.diffusion_minutes, args.num, args.eval_steps)
    pixel = stage(args.out, "pixel64", ["--preset", "tiny", *DATA], args.ae_minutes + args.diffusion_minutes,
                  args.num, args.eval_steps)
    frozen = frozen_baseline(args.num)
    m = ae["metrics"]
    print(f"autoencoder: {ae['step']:,} steps in {ae['trained_s'] / 60:.1f} min; reconstruction PSNR "
          f"{m['reconstruction_psnr'][0]:.2f} dB (blank frame {m['blank_psnr'][0]:.2f}), SSIM "
          f"{m['reconstruction_ssim'][0]:.3f} (blank {m['blank_ssim'][0]:.3f}), N = {args.num} held-out clips\n")
    print("| run | CPU minutes (training) | steps | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    real = pixel["metrics"]
    print("| real clips (ceiling) | | | " + " | ".join(_cell(real.get(k, [None, None])[1]) for k in METRICS) + " |")
    print("| real clips frozen at frame 0 (trivial) | | | " + " | ".join(_cell(frozen.get(k, [None])[0])
                                                                        for k in METRICS) + " |")
    for label, r, minutes in (("latent (ae + diffusion)", latent, ae["trained_s"] + latent["trained_s"]),
                              ("pixel", pixel, pixel["trained_s"])):
        print(f"| {label} | {minutes / 60:.1f} | {r['step']:,} | " +
              " | ".join(_cell(r["metrics"].get(k, [None])[0]) for k in METRICS) + " |")


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
