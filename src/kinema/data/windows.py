"""Which clip a dataset index means, for corpora of files of any lengths (`data.balance`).

`clips`: every window of `span` frames of every file is one item, so a long file gives many (a 10-minute file
outnumbers a hundred 5-second ones). `files`: one item per file, its window drawn at random per (index, salt), so
every file is equally likely per draw whatever its length. Memory is O(files), never O(clips).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["BALANCES", "Windows", "FileClips", "to_clip"]

BALANCES = ("clips", "files")


class Windows:
    """Clip positions over files holding `counts[f]` windows each (files with none are never chosen)."""

    def __init__(self, counts, balance: str = "clips", seed: int = 0):
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}; got {balance!r}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.files = np.flatnonzero(self.counts > 0)  # the usable files
        self.balance, self.seed = balance, seed
        self.ends = np.cumsum(self.counts[self.files])

    def __len__(self) -> int:
        return int(self.ends[-1]) if self.balance == "clips" and len(self.files) else len(self.files)

    def locate(self, index: int, salt: int = 0) -> tuple[int, int]:
        """(file, first window) of item `index`; for `files` the window varies with the salt (the epoch)."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        if self.balance == "files":
            file = int(self.files[index])
            return file, int(np.random.default_rng([self.seed, index, salt, 3]).integers(self.counts[file]))
        slot = int(np.searchsorted(self.ends, index, side="right"))
        return int(self.files[slot]), int(index - (self.ends[slot - 1] if slot else 0))

    def spread(self, num: int) -> list[tuple[int, int]]:
        """`num` distinct (file, window) pairs covering the corpus: the files in turn (each file's share spread evenly
        over its length), so the first k pairs come from k different files. Fewer when the corpus has fewer."""
        counts = self.counts[self.files]
        share = np.zeros(len(counts), dtype=np.int64)
        while share.sum() < num and (share < counts).any():
            open_ = np.flatnonzero(share < counts)[: num - int(share.sum())]
            share[open_] += 1
        picks = [np.linspace(0, c - 1, s).round().astype(np.int64) if s else [] for c, s in zip(counts, share)]
        return [(int(self.files[i]), int(picks[i][r])) for r in range(int(share.max(initial=0)))
                for i in range(len(counts)) if r < share[i]]


def to_clip(frames: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (F, H, W, C) frames → float32 (channels, F, H, W) in [-1, 1] (RGB averaged for a grey clip)."""
    x = torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # a copy: never the mapped file
    return x.mean(0, keepdim=True) if channels == 1 and x.shape[0] == 3 else x


class FileClips(Dataset):
    """Clips of `frames` frames, every `stride`-th, cut on the fly from per-file uint8 (F, H, W, C) arrays.

    Subclasses set the attributes of `_init_clips` and give `file_frames(file)` (the array, possibly memory-mapped)
    and `file_fields(file)` (the item's other fields: caption, label). Item: {"video": float32 (C, F, H, W) in
    [-1, 1], ...fields}; a key (index, salt) varies the flip (and the window under `balance=files`) per epoch.
    """

    def _init_clips(self, lengths, frames: int, stride: int, flip: bool, channels: int, seed: int,
                    balance: str) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be positive; got frames={frames}, stride={stride}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        self.frames, self.stride, self.flip, self.channels, self.seed = frames, stride, flip, channels, seed
        self.span = (frames - 1) * stride + 1
        self.windows = Windows(np.maximum(np.asarray(lengths, dtype=np.int64) - self.span + 1, 0), balance, seed)

    def file_frames(self, file: int) -> np.ndarray:
        raise NotImplementedError

    def file_fields(self, file: int) -> dict:
        return {}

    def clip(self, file: int, start: int, salt: int = 0) -> dict:
        """The item of the window of `file` starting at frame `start`."""
        frames = self.file_frames(file)[start:start + self.span:self.stride]
        video = to_clip(frames, self.channels)
        if self.flip and np.random.default_rng([self.seed, file, start, salt]).random() < 0.5:
            video = video.flip(-1)
        return {"video": video, **self.file_fields(file)}

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key) -> dict:
        index, salt = key if isinstance(key, tuple) else (key, 0)
        return self.clip(*self.windows.locate(int(index), salt), salt)

    def spread(self, num: int) -> list[dict]:
        """`num` clips over the whole corpus, the files in turn (for `kinema data` and evaluation's reference)."""
        return [self.clip(file, start) for file, start in self.windows.spread(num)]
