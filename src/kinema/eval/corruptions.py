"""Temporal corruptions of real Moving Digits clips, and the table that validates the oracle metrics with them.

Each corruption keeps every frame a clean, recognisable digit image and breaks one temporal property:

* shuffled — the frames in a random order (not the identity);
* swapped  — from the middle frame on, the first digit is drawn from another source image of another class,
  on the same path;
* frozen   — the first digit stays where it is in the first frame;
* jumping  — from the middle frame on, the first digit continues from another position (at least half a
  digit away) with the same velocity, bouncing as usual.

A metric validates if real held-out clips score as real and each corruption scores clearly worse on at least
one temporal metric while recognisability stays high (`validation_table`, `benchmarks/oracle_validation.py`).

Appearance corruptions (`APPEARANCE`) keep time intact and degrade every frame alike, at three strengths each:

* blur σ   — a Gaussian blur of σ = 0.5, 1 or 2 pixels (at the clip's own resolution);
* noise σ  — Gaussian pixel noise of σ = 0.05, 0.1 or 0.2 of the value range, clipped.

They are what FVD should see first (spec F1, "content bias"); `fvd_table` and `benchmarks/fvd_validation.py` score
all of them with FVD against real vs real.

One control (`CONTROLS`) changes what a temporal metric must *not* see:

* restyled — every frame redrawn with its own blur, contrast and pixel noise, as a generator draws the same
  digit a little differently from frame to frame; the digit, its path and its speed are untouched, so motion
  plausibility must stay as real.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.moving_digits import MovingDigits
from .frechet import frechet_distance_from_features
from .i3d import InceptionI3d, i3d_features
from .oracle import DigitOracle

__all__ = ["CORRUPTIONS", "CONTROLS", "APPEARANCE", "GENERIC", "corrupt", "restyled", "blurred", "noised",
           "digit_sets", "validation_table", "format_table", "fvd_table"]


def _reflect_path(start: np.ndarray, velocity: np.ndarray, frames: int, limit: float) -> np.ndarray:
    """Positions (frames, 2) from `start` at `velocity`, reflecting at 0 and `limit` as MovingDigits does."""
    pos, vel, out = start.astype(float).copy(), velocity.astype(float).copy(), np.empty((frames, 2))
    for f in range(frames):
        out[f] = pos
        pos = pos + vel
        for d in range(2):
            while pos[d] < 0 or pos[d] > limit:
                pos[d] = -pos[d] if pos[d] < 0 else 2 * limit - pos[d]
                vel[d] = -vel[d]
    return out


def shuffled(ds: MovingDigits, item: dict, rng: np.random.Generator) -> Tensor:
    f = item["video"].shape[1]
    order = np.arange(f)
    while (order == np.arange(f)).all():
        order = rng.permutation(f)
    return item["video"][:, torch.from_numpy(order)]


def swapped(ds: MovingDigits, item: dict, rng: np.random.Generator) -> Tensor:
    sources, positions = item["source"].numpy(), item["positions"].numpy()
    others = np.flatnonzero(ds.labels != ds.labels[sources[0]])
    other = rng.choice(others)
    half = positions.shape[1] // 2
    first = ds.render(sources, positions[:, :half])
    second = ds.render(np.concatenate([[other], sources[1:]]), positions[:, half:])
    return torch.cat([first, second], dim=1)


def frozen(ds: MovingDigits, item: dict, rng: np.random.Generator) -> Tensor:
    positions = item["positions"].numpy().copy()
    positions[0] = positions[0, :1]
    return ds.render(item["source"].numpy(), positions)


def jumping(ds: MovingDigits, item: dict, rng: np.random.Generator) -> Tensor:
    positions = item["positions"].numpy().copy()
    f, half, limit = positions.shape[1], positions.shape[1] // 2, ds.size - ds.digit_size
    # the velocity at the middle frame, after any bounces so far
    velocity = _reflect_path(positions[0, 0], item["velocity"][0].numpy(), half + 1, limit)
    velocity = velocity[half] - velocity[half - 1] if half > 0 else item["velocity"][0].numpy()
    while True:
        start = rng.uniform(0, limit, size=2)
        if np.abs(start - positions[0, half]).max() >= max(2.0, ds.digit_size / 2):
            break
    positions[0, half:] = _reflect_path(start, velocity, f - half, limit)
    return ds.render(item["source"].numpy(), positions)


def restyled(ds: MovingDigits, item: dict, rng: np.random.Generator) -> Tensor:
    """Each frame blurred (Gaussian σ uniform in [0.05, 0.85] px), dimmed (gain in [0.75, 1]) and noised
    (σ = 0.03 of the range) independently."""
    video = (item["video"] + 1) / 2  # (1, F, H, W) in [0, 1]
    frames = video.shape[1]
    taps = torch.arange(-2.0, 3.0)
    sigma = torch.from_numpy(rng.uniform(0.05, 0.85, frames)).float()
    kernel = torch.exp(-taps ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (F, 5): one kernel per frame, applied as grouped convs
    x = F.pad(video, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=frames)
    x = F.conv2d(x, kernel[:, None, :, None], groups=frames)
    gain = torch.from_numpy(rng.uniform(0.75, 1.0, (1, frames, 1, 1))).float()
    noise = torch.from_numpy(rng.normal(0.0, 0.03, x.shape)).float()
    return (x * gain + noise).clamp(0, 1) * 2 - 1


def blurred(video: Tensor, sigma: float) -> Tensor:
    """Every frame of a video (C, F, H, W) in [-1, 1] blurred by a Gaussian of `sigma` pixels (taps to ±3σ,
    edges replicated)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1.0)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(video.dtype)
    c, f, h, w = video.shape
    x = F.pad(video.reshape(c * f, 1, h, w), (radius,) * 4, mode="replicate")
    x = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return x.reshape(c, f, h, w)


def noised(video: Tensor, sigma: float, rng: np.random.Generator) -> Tensor:
    """A video (C, F, H, W) in [-1, 1] plus Gaussian noise of `sigma` in [0, 1] units, clipped to the range."""
    noise = torch.from_numpy(rng.normal(0.0, 2 * sigma, video.shape)).to(video.dtype)
    return (video + noise).clamp(-1, 1)


def held(ds, item: dict, rng: np.random.Generator) -> Tensor:
    """The first frame held for the whole clip: `frozen` for any video."""
    video = item["video"]
    return video[:, :1].expand_as(video).clone()


Corruption = Callable[[MovingDigits, dict, np.random.Generator], Tensor]
CORRUPTIONS: dict[str, Corruption] = {"shuffled": shuffled, "swapped": swapped, "frozen": frozen, "jumping": jumping}
CONTROLS: dict[str, Corruption] = {"restyled": restyled}
BLUR_SIGMAS, NOISE_SIGMAS = (0.5, 1.0, 2.0), (0.05, 0.1, 0.2)
APPEARANCE: dict[str, Corruption] = {
    **{f"blur σ={s:g}": lambda ds, item, rng, s=s: blurred(item["video"], s) for s in BLUR_SIGMAS},
    **{f"noise σ={s:g}": lambda ds, item, rng, s=s: noised(item["video"], s, rng) for s in NOISE_SIGMAS},
}
# the corruptions that need nothing but the video: they apply to real footage too
GENERIC: dict[str, Corruption] = {"shuffled": shuffled, "held": held, **APPEARANCE}
_ALL = {**CORRUPTIONS, **CONTROLS, **APPEARANCE, **GENERIC}


def corrupt(ds: Optional[MovingDigits], items: list[dict], kind: str, seed: int = 0) -> Tensor:
    """Corrupted (or control) videos (N, C, F, H, W) of dataset items (from `ds`, which must have drawn them; a
    `GENERIC` corruption needs only the items' "video")."""
    rng = np.random.default_rng(seed)
    change = _ALL.get(kind)
    if change is None:
        raise ValueError(f"unknown corruption {kind!r}; choose from {sorted(_ALL)}")
    if ds is None and kind not in GENERIC:
        raise ValueError(f"the {kind} corruption redraws Moving Digits; it needs the dataset that drew the items")
    return torch.stack([change(ds, item, rng) for item in items])


def digit_sets(num: int, frames: int, size: int, num_digits: int, digit_size: int, speed: tuple[float, float],
               seed: int = 0, kinds: Sequence[str] = (*CORRUPTIONS, *CONTROLS)) -> tuple[dict[str, Tensor], Tensor]:
    """Held-out Moving Digits clips 0…num−1 ("real") and each corruption of them, and the reference: clips
    num…2num−1, disjoint from them. Videos (num, 1, F, H, W)."""
    ds = MovingDigits("test", frames, size, num_digits, digit_size, speed, seed=seed)
    items = [ds[i] for i in range(num)]
    reference = torch.stack([ds[num + i]["video"] for i in range(num)])
    rows = {"real": torch.stack([it["video"] for it in items])}
    rows.update({kind: corrupt(ds, items, kind, seed) for kind in kinds})
    return rows, reference


def validation_table(num: int = 256, frames: int = 8, size: int = 32, num_digits: int = 1, digit_size: int = 14,
                     speed: tuple[float, float] = (1.0, 3.0), seed: int = 0) -> dict[str, dict[str, float]]:
    """Oracle metrics of `num` real held-out clips, of their corruptions and of the controls; each row's
    `oracle_fd` is against `num` other real held-out clips (so the real row's FD is the noise floor at this N)."""
    rows, reference = digit_sets(num, frames, size, num_digits, digit_size, speed, seed)
    oracle = DigitOracle(num_digits, digit_size, speed)
    ref_features = oracle.clip_features(reference)
    table = {}
    for name, videos in rows.items():
        det = oracle.detect(videos)
        table[name] = oracle.evaluate(videos, det).summary()
        table[name]["oracle_fd"] = oracle.frechet(ref_features, oracle.clip_features(videos, det))
    return table


COLUMNS = [("recognisability", "recognisability"), ("identity_consistency", "identity"),
           ("count_consistency", "count consistency"), ("motion_plausibility", "motion"), ("oracle_fd", "oracle FD")]


def format_table(table: dict[str, dict[str, float]], title: str = "") -> str:
    """A markdown table: rows = real and the corruptions, columns = the metrics (fractions as %)."""
    head = f"| {title} | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, values in table.items():
        cells = [f"{values[key]:.2f}" if key == "oracle_fd" else f"{values[key]:.1%}" for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fvd_table(i3d: InceptionI3d, sets: dict[str, Tensor], reference: Tensor, batch_size: int = 8,
              progress: bool = False) -> dict[str, float]:
    """FVD of each set of videos (N, C, F, H, W) in [-1, 1] against `reference` (`kinema.eval.i3d` protocol). With
    "real" a real set disjoint from the reference (`digit_sets`), its value is the real-vs-real floor at this N."""
    ref = i3d_features(i3d, reference, batch_size, progress=progress)
    return {name: frechet_distance_from_features(ref, i3d_features(i3d, videos, batch_size, progress=progress))
            for name, videos in sets.items()}
