"""Validate the Moving Digits oracle metrics as metrics: real held-out clips against temporal corruptions.

    python benchmarks/oracle_validation.py [--num 256] [--seed 0] [--json out.json] [--fvd-weights I3D_WEIGHTS]

For each data setting (one digit, 8 frames of 16×16: the `tiny16` preset and the shipped model; one digit, 8 frames
of 32×32: the `tiny` preset; two digits, 16 frames of 64×64), scores N real clips of the held-out test split, the
same clips corrupted (frames shuffled; the first digit swapped for another class mid-clip; frozen in place; jumping
to another position mid-clip) and the control (every frame redrawn with its own blur, contrast and noise, which
motion plausibility must not penalise); see kinema.eval.corruptions.
The oracle Fréchet distance of each row is against N *other* held-out clips, so the real row's value is the noise
floor at this N. With --fvd-weights, an FVD column is added (against the same N other clips): FVD's content bias,
measured on our data.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kinema.eval.corruptions import CONTROLS, CORRUPTIONS, corrupt, format_table, validation_table

SETTINGS = {
    "1 digit, 8×16×16": dict(frames=8, size=16, num_digits=1, digit_size=8, speed=(0.5, 1.5)),
    "1 digit, 8×32×32": dict(frames=8, size=32, num_digits=1, digit_size=14, speed=(1.0, 3.0)),
    "2 digits, 16×64×64": dict(frames=16, size=64, num_digits=2, digit_size=14, speed=(1.0, 3.0)),
}


def fvd_column(weights: str, num: int, frames: int, size: int, num_digits: int, digit_size: int,
               speed: tuple[float, float], seed: int) -> dict[str, float]:
    from kinema.data import MovingDigits
    from kinema.eval import frechet_distance_from_features
    from kinema.eval.i3d import i3d_features, load_i3d

    ds = MovingDigits("test", frames, size, num_digits, digit_size, speed, seed=seed)
    items = [ds[i] for i in range(num)]
    reference = torch.stack([ds[num + i]["video"] for i in range(num)])
    i3d = load_i3d(weights)
    ref = i3d_features(i3d, reference, progress=True)
    rows = {"real": torch.stack([it["video"] for it in items])}
    rows.update({kind: corrupt(ds, items, kind, seed) for kind in (*CORRUPTIONS, *CONTROLS)})
    return {name: frechet_distance_from_features(ref, i3d_features(i3d, v, progress=True)) for name, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=256, help="clips per row (and in the reference set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--fvd-weights", help="I3D Kinetics-400 weights: adds an FVD column")
    args = parser.parse_args()
    results = {}
    for title, setting in SETTINGS.items():
        start = time.time()
        table = validation_table(num=args.num, seed=args.seed, **setting)
        if args.fvd_weights:
            for name, value in fvd_column(args.fvd_weights, args.num, seed=args.seed, **setting).items():
                table[name]["fvd"] = value
        results[title] = table
        print(format_table(table, f"{title}, N = {args.num}"))
        if args.fvd_weights:
            print("FVD: " + ", ".join(f"{name} {row['fvd']:.1f}" for name, row in table.items()))
        print(f"({time.time() - start:.0f} s)\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
