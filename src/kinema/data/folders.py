"""Folders of video files and of images, as datasets of (C, F, H, W) clips in [-1, 1].

Files are decoded once at construction (with a progress bar) into uint8 arrays already resized to
the training size, so DataLoader workers only slice and flip. Unreadable or too-short files are
skipped with a warning that names them, and counted in `skipped`; an empty result is an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, fit_frames, read_video

__all__ = ["VideoFolder", "ImageFolder"]


def _folder(data) -> str:
    if not data.path:
        raise ValueError(f"data.path must name a folder for data.dataset={data.dataset}")
    return data.path


def _find(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not root.exists():
        raise ValueError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _to_clip(frames: np.ndarray, channels: int) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (C, F, H, W)
    return x.mean(0, keepdim=True) if channels == 1 else x


class VideoFolder(Dataset):
    """Every clip of `frames` frames (taken every `stride` frames) of every video under `root`.

    Item: {"video": float32 (C, F, H, W) in [-1, 1]}; a key (index, salt) varies the random flip
    between epochs (the batch sampler passes the epoch as salt).
    """

    num_classes = 0
    captions = False
    splits = ()  # one set of files: a split does not apply

    @classmethod
    def from_config(cls, data, split: str = "train", progress: bool = True) -> "VideoFolder":
        return cls(_folder(data), data.frames, data.height, data.width, data.stride, data.flip, data.channels,
                   data.seed, progress=progress)

    def __init__(self, root: str | os.PathLike, frames: int = 8, height: int = 32, width: int = 32, stride: int = 1,
                 flip: bool = True, channels: int = 3, seed: int = 0, max_frames_per_file: Optional[int] = None,
                 progress: bool = True):
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be positive; got frames={frames}, stride={stride}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        self.root, self.frames, self.stride = Path(root), frames, stride
        self.flip, self.channels, self.seed = flip, channels, seed
        files = _find(self.root, VIDEO_SUFFIXES)
        if not files:
            raise ValueError(f"{self.root}: no video files ({', '.join(VIDEO_SUFFIXES)}) found in this folder or below")
        span = (frames - 1) * stride + 1
        self.videos: list[np.ndarray] = []
        self.files: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in tqdm(files, desc=f"decoding {self.root}", disable=not progress, leave=False):
            try:
                decoded = read_video(path, max_frames=max_frames_per_file)
            except ValueError as err:
                self._skip(path, str(err))
                continue
            if len(decoded) < span:
                self._skip(path, f"{path}: only {len(decoded)} frames, a clip needs {span} "
                                 f"(frames={frames}, stride={stride})")
                continue
            self.videos.append(fit_frames(decoded, height, width))
            self.files.append(path)
        self.clips = [(v, start) for v, video in enumerate(self.videos) for start in range(len(video) - span + 1)]
        if not self.clips:
            problems = "; ".join(reason for _, reason in self.skipped)
            raise ValueError(f"{self.root}: no usable clips in {len(files)} video file(s): {problems}")

    def _skip(self, path: Path, reason: str) -> None:
        warnings.warn(f"skipping {reason}", stacklevel=3)
        self.skipped.append((path, reason))

    def summary(self) -> str:
        return (f"{self.root}: {len(self.files)} usable video file(s), {len(self.clips)} clips of {self.frames} frames "
                f"(stride {self.stride}), {len(self.skipped)} file(s) skipped")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key) -> dict:
        index, salt = key if isinstance(key, tuple) else (key, 0)
        v, start = self.clips[index]
        frames = self.videos[v][start:start + (self.frames - 1) * self.stride + 1:self.stride]
        clip = _to_clip(frames, self.channels)
        if self.flip and np.random.default_rng([self.seed, index, salt]).random() < 0.5:
            clip = clip.flip(-1)
        return {"video": clip}


class ImageFolder(Dataset):
    """Every image under `root` as a 1-frame clip: {"video": float32 (C, 1, H, W) in [-1, 1]}."""

    num_classes = 0
    captions = False
    splits = ()

    @classmethod
    def from_config(cls, data, split: str = "train", progress: bool = True, path: str | None = None) -> "ImageFolder":
        """The images of `data.path` (or `path`, e.g. data.images_path for joint training) at the data's size."""
        return cls(path or _folder(data), data.height, data.width, data.flip, data.channels, data.seed,
                   progress=progress)

    def __init__(self, root: str | os.PathLike, height: int = 32, width: int = 32, flip: bool = True,
                 channels: int = 3, seed: int = 0, progress: bool = True):
        import imageio.v3 as iio

        self.root, self.flip, self.channels, self.seed = Path(root), flip, channels, seed
        files = _find(self.root, IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found in this folder or below")
        self.images: list[np.ndarray] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in tqdm(files, desc=f"reading {self.root}", disable=not progress, leave=False):
            try:
                image = np.asarray(iio.imread(path))
            except Exception as err:  # Pillow and imageio raise many kinds, some over several lines: keep the first
                first_line = str(err).strip().partition("\n")[0]
                reason = f"{path}: cannot read image ({type(err).__name__}: {first_line})"
                warnings.warn(f"skipping {reason}", stacklevel=2)
                self.skipped.append((path, reason))
                continue
            if image.ndim == 2:
                image = image[..., None]
            # grey (+ alpha) -> RGB; RGBA -> RGB
            image = np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]
            image = image.astype(np.uint8)
            self.images.append(fit_frames(image[None], height, width))
        if not self.images:
            problems = "; ".join(reason for _, reason in self.skipped)
            raise ValueError(f"{self.root}: none of {len(files)} image file(s) could be read: {problems}")

    def summary(self) -> str:
        return f"{self.root}: {len(self.images)} image(s), {len(self.skipped)} skipped"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> dict:
        index, salt = key if isinstance(key, tuple) else (key, 0)
        clip = _to_clip(self.images[index], self.channels)
        if self.flip and np.random.default_rng([self.seed, index, salt, 1]).random() < 0.5:
            clip = clip.flip(-1)
        return {"video": clip}
