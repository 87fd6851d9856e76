"""Moving Digits: scikit-learn's bundled 8×8 digits, upscaled, bouncing on a canvas (Moving-MNIST style).

Every clip is a pure function of (seed, split, index), so the dataset is deterministic, needs no
download, and any clip can be regenerated on any rank or worker. Train and test draw from disjoint
sets of source digit images (a fixed 80/20 split of the 1,797 bundled digits).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .provides import Provides

__all__ = ["MovingDigits", "digit_images", "caption", "direction_word"]

_SPLITS = {"train": 0, "test": 1}


@lru_cache(maxsize=8)
def digit_images(split: str, digit_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, s, s) in [0, 1], labels int64 (N,)) of one split, upscaled bilinearly."""
    from sklearn.datasets import load_digits

    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    cut = int(0.8 * len(order))
    idx = np.sort(order[:cut] if split == "train" else order[cut:])
    small = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    return big[:, 0].clamp(0, 1).numpy(), digits.target[idx].astype(np.int64)


class MovingDigits(Dataset):
    """Clips of `num_digits` digits moving with constant velocity and bouncing off the walls.

    Item: {"video": float32 (1, F, H, W) in [-1, 1], "label": class of the first digit,
    "digits": (N,) classes, "velocity": (N, 2) pixels/frame (dy, dx), "positions": (N, F, 2)
    top-left corners, "source": (N,) index of the source image within its split, "caption": a
    sentence such as "a 3 moving left and a 7 moving down" (for text conditioning)}.
    """

    channels = 1
    splits = ("train", "test")

    @classmethod
    def provides(cls, data) -> Provides:
        """Labels (the first digit's class) and captions: read by the builder instead of testing the name."""
        return Provides(10, True, "data.dataset=moving-digits")

    @classmethod
    def from_config(cls, data, split: str = "train", progress: bool = True) -> "MovingDigits":
        """From a `DataConfig` (data.frames/height/width/num_digits/digit_size/speed_min/speed_max/seed)."""
        if data.height != data.width:
            raise ValueError(f"moving-digits needs square frames; got data.height={data.height}, "
                             f"data.width={data.width}")
        if data.channels != cls.channels:
            raise ValueError(f"data.channels is {data.channels}, but moving-digits clips have {cls.channels} (grey)")
        return cls(split, data.frames, data.height, data.num_digits, data.digit_size, (data.speed_min, data.speed_max),
                   seed=data.seed)

    def __init__(self, split: str = "train", frames: int = 8, size: int = 32, num_digits: int = 1,
                 digit_size: int = 14, speed: Sequence[float] = (1.0, 3.0), length: int = 1_000_000, seed: int = 0):
        if digit_size >= size:
            raise ValueError(f"digit_size ({digit_size}) must be smaller than size ({size})")
        if frames < 1 or num_digits < 1 or length < 1:
            raise ValueError(f"frames, num_digits and length must be positive; got {frames}, {num_digits}, {length}")
        if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed must be (min, max) with 0 <= min <= max; got {tuple(speed)}")
        self.split, self.frames, self.size, self.num_digits = split, frames, size, num_digits
        self.digit_size, self.speed, self.length, self.seed = digit_size, tuple(speed), length, seed
        self.images, self.labels = digit_images(split, digit_size)

    def __len__(self) -> int:
        return self.length

    def trajectory(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Positions (F, 2) and initial velocity (2,) of one digit, reflecting at the walls."""
        limit = self.size - self.digit_size
        pos = rng.uniform(0, limit, size=2)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*self.speed)
        vel = np.array([np.sin(angle), np.cos(angle)]) * speed
        start_vel = vel.copy()
        out = np.empty((self.frames, 2))
        for f in range(self.frames):
            out[f] = pos
            pos = pos + vel
            for d in range(2):  # reflect, possibly more than once for very fast digits
                while pos[d] < 0 or pos[d] > limit:
                    pos[d] = -pos[d] if pos[d] < 0 else 2 * limit - pos[d]
                    vel[d] = -vel[d]
        return out, start_vel

    def render(self, sources: Sequence[int], positions: np.ndarray) -> torch.Tensor:
        """Video (1, F, H, W) in [-1, 1] of this split's digit images `sources` (N,) with top-left corners
        `positions` (N, F, 2) (rounded to pixels, each within [0, size − digit_size]), composited by maximum."""
        positions = np.rint(np.asarray(positions)).astype(int)
        limit, s = self.size - self.digit_size, self.digit_size
        if positions.ndim != 3 or positions.shape[0] != len(sources) or positions.min() < 0 or positions.max() > limit:
            raise ValueError(f"positions must be (N, F, 2) within [0, {limit}]; got shape {positions.shape}")
        canvas = np.zeros((positions.shape[1], self.size, self.size), dtype=np.float32)
        for src, path in zip(sources, positions):
            for f, (y, x) in enumerate(path):
                np.maximum(canvas[f, y:y + s, x:x + s], self.images[src], out=canvas[f, y:y + s, x:x + s])
        return torch.from_numpy(canvas * 2 - 1)[None]

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MovingDigits of length {self.length}")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        sources = rng.integers(0, len(self.images), size=self.num_digits)
        positions, velocities = [], []
        for _ in sources:
            traj, vel = self.trajectory(rng)
            positions.append(traj)
            velocities.append(vel)
        return {
            "video": self.render(sources, np.stack(positions)),
            "label": torch.tensor(self.labels[sources[0]]),
            "digits": torch.from_numpy(self.labels[sources]),
            "velocity": torch.tensor(np.stack(velocities), dtype=torch.float32),
            "positions": torch.tensor(np.stack(positions), dtype=torch.float32),
            "source": torch.from_numpy(sources),
            "caption": caption(self.labels[sources].tolist(), velocities),
        }

    def spread(self, num: int) -> list[dict]:
        """The first `num` clips (every clip is an independent draw, so these cover the data)."""
        return [self[i] for i in range(min(num, self.length))]


_DIRECTIONS = ("right", "up and right", "up", "up and left", "left", "down and left", "down", "down and right")


def direction_word(velocity: Sequence[float]) -> str:
    """One of eight compass words for a velocity (dy, dx) in image coordinates (y grows downwards)."""
    dy, dx = float(velocity[0]), float(velocity[1])
    angle = np.degrees(np.arctan2(-dy, dx)) % 360.0
    return _DIRECTIONS[int(((angle + 22.5) % 360.0) // 45.0)]


def caption(digits: Sequence[int], velocities: Sequence[Sequence[float]]) -> str:
    """"a 3 moving left and a 7 moving down": each digit with the direction of its initial velocity."""
    parts = [f"{'an' if int(d) == 8 else 'a'} {int(d)} moving {direction_word(v)}" for d, v in zip(digits, velocities)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
