"""Baselines and clip scores for frame-conditioned generation on Moving Digits (benchmarks/conditional.py).

Moving Digits is deterministic given its first frames (constant velocity, reflection at the walls:
data/moving_digits.py), so a held-out clip's rest is the ground truth and two trivial predictors set the bar:
- copy-last: every predicted frame is the last known one;
- centroid track: the digit's ink is cut from the last known frame and moved along the track of its centroid,
  extrapolated at the context's mean velocity and reflected at the walls (one digit).
For interpolation the trivial one is the linear cross-fade of the two known frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def copy_last(context: Tensor, frames: int) -> Tensor:
    """(N, C, K + frames, H, W): the context, then its last frame repeated."""
    return torch.cat([context, context[:, :, -1:].expand(-1, -1, frames, -1, -1)], dim=2)


def centroids(video: Tensor) -> np.ndarray:
    """(N, F, 2) intensity-weighted centroid (y, x) of each frame; NaN for a black frame."""
    ink = ((video[:, 0] + 1) / 2).clamp(min=0).double().numpy()  # (N, F, H, W)
    ys, xs = np.arange(ink.shape[2])[:, None], np.arange(ink.shape[3])[None, :]
    mass = ink.sum((2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(ink * ys).sum((2, 3)) / mass, (ink * xs).sum((2, 3)) / mass], axis=-1)


def _velocity(track: np.ndarray) -> np.ndarray:
    """Mean velocity over a track (K, 2), or its last step on an axis where the context holds a bounce."""
    steps = np.diff(track, axis=0)
    velocity = (track[-1] - track[0]) / max(1, len(track) - 1)
    bounced = (np.sign(steps) != np.sign(steps[-1])).any(axis=0)
    return np.where(bounced, steps[-1], velocity)


def centroid_track(context: Tensor, frames: int, threshold: float = -0.5) -> Tensor:
    """(N, C, K + frames, H, W): the last frame's ink box moved along the extrapolated centroid track."""
    out = copy_last(context, frames).clone()
    size = context.shape[-2:]
    track = centroids(context)
    for n in range(context.shape[0]):
        last = context[n, 0, -1]
        rows, cols = torch.nonzero(last > threshold, as_tuple=True)
        if len(rows) == 0 or np.isnan(track[n]).any() or context.shape[2] < 2:
            continue
        top = np.array([int(rows.min()), int(cols.min())], dtype=float)
        box = (int(rows.max()) + 1 - int(top[0]), int(cols.max()) + 1 - int(top[1]))
        patch = last[int(top[0]):int(top[0]) + box[0], int(top[1]):int(top[1]) + box[1]]
        limit = np.array([size[0] - box[0], size[1] - box[1]], dtype=float)
        pos, vel = top.copy(), _velocity(track[n])
        for f in range(frames):
            pos = pos + vel
            for d in range(2):  # reflect at the walls, as the data's trajectories do
                while pos[d] < 0 or pos[d] > limit[d]:
                    pos[d] = -pos[d] if pos[d] < 0 else 2 * limit[d] - pos[d]
                    vel[d] = -vel[d]
            y, x = np.rint(pos).astype(int)
            frame = torch.full_like(last, -1.0)
            frame[y:y + box[0], x:x + box[1]] = patch
            out[n, 0, context.shape[2] + f] = frame
    return out


def cross_fade(first: Tensor, last: Tensor, between: int) -> Tensor:
    """(N, C, between + 2, H, W): linear blends from `first` to `last` (N, C, H, W)."""
    w = torch.linspace(0, 1, between + 2)[None, None, :, None, None]
    return (1 - w) * first[:, :, None] + w * last[:, :, None]


def velocity_jump(video: Tensor, real: Tensor, boundaries: list[int]) -> float:
    """Mean |Δv − Δv_real| (pixels/frame²) of the centroid at the first frame b of each block, Δv(b) being
    (c_b − c_{b−1}) − (c_{b−1} − c_{b−2}), over videos with a digit in the frames involved.

    Measured against the real clip because the data renders digits at rounded positions: a real track's own Δv is
    about one pixel per frame² at any frame (0 → 1 → 0 pixel steps at a speed of 0.5), so the raw jump would rank
    a frozen prediction above the truth. The real clip scores 0; a block that restarts the motion scores its error."""
    c, r = centroids(video), centroids(real)
    def accel(t: np.ndarray, b: int) -> np.ndarray:
        return (t[:, b] - t[:, b - 1]) - (t[:, b - 1] - t[:, b - 2])
    jumps = [np.linalg.norm(accel(c, b) - accel(r, b), axis=-1) for b in boundaries if b >= 2]
    values = np.concatenate(jumps) if jumps else np.array([np.nan])
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
