"""Temporal consistency of a Moving Digits run's samples, by the digit-identity oracle.

    python benchmarks/demo_identity.py runs/demo [--samples runs/demo/samples.npz] [--strip docs/demo_strip.png]

Reads the uint8 samples (N, F, H, W, C) that `kinema sample --out X.npz` writes, classifies the digit in every
frame (kinema.eval.DigitOracle), and prints the fraction of videos whose digit keeps one class in every frame and the
fraction of adjacent frame pairs that agree, next to the same figures for N real held-out clips of the run's data
config (the baseline measured in the same run). Optionally writes a PNG strip: sample rows above real rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kinema.config import load_config
from kinema.data import MovingDigits
from kinema.eval import DigitOracle
from kinema.media import to_uint8


def scores(oracle: DigitOracle, videos: torch.Tensor) -> tuple[float, float]:
    pred = oracle.classify_frames(videos)
    kept = oracle.identity_kept(videos).mean()
    adjacent = ((pred[:, 1:] == pred[:, :-1]) & (pred[:, 1:] >= 0)).mean()
    return float(kept), float(adjacent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--strip", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.run / "config.toml")
    raw = np.load(args.samples or args.run / "samples.npz")["videos"]  # (N, F, H, W, C) uint8
    samples = torch.from_numpy(raw[..., :1]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    d = cfg.data
    real_ds = MovingDigits("test", d.frames, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    real = torch.stack([real_ds[i]["video"] for i in range(len(samples))])
    oracle = DigitOracle(d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    s_kept, s_adj = scores(oracle, samples)
    r_kept, r_adj = scores(oracle, real)
    print(f"N = {len(samples)} videos of {d.frames}x{d.height}x{d.width}")
    print(f"{'':<22}{'identity kept':>15}{'adjacent agree':>16}")
    print(f"{'samples':<22}{s_kept:>15.1%}{s_adj:>16.1%}")
    print(f"{'real (test split)':<22}{r_kept:>15.1%}{r_adj:>16.1%}")
    if args.strip:
        import imageio.v3 as iio

        def rows(v: torch.Tensor, n: int) -> np.ndarray:
            x = to_uint8(v[:n])[..., 0]  # (n, F, H, W)
            x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=255)
            return np.concatenate([np.concatenate(list(video), axis=1) for video in x], axis=0)

        strip = np.concatenate([rows(samples, 4), np.full((6, rows(samples, 1).shape[1]), 255, np.uint8), rows(real, 4)])
        args.strip.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.strip, np.repeat(np.repeat(strip, 2, 0), 2, 1))
        print(f"wrote {args.strip}: 4 sample clips (top) above 4 real clips (bottom), frames left to right")


if __name__ == "__main__":
    main()
