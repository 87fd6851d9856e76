"""Folders of video files and of images, as datasets of (C, F, H, W) clips in [-1, 1], without a prepare step.

Videos are decoded once at construction (with a progress bar) straight to the training size, so DataLoader workers
only slice and flip; this holds the whole folder in memory, which suits small folders (for a corpus, prepare a clip
cache: `kinema prepare`, `data.dataset=clips`). A file that cannot be used is skipped with a one-line warning that
names it and says why, and counted in `skipped`; an empty result is an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .media import IMAGE_SUFFIXES, fit_frames
from .prepare import CacheSettings, decode_source
from .provides import Provides
from .sources import Skip, list_sources
from .windows import FileClips, to_clip

__all__ = ["VideoFolder", "ImageFolder"]


def _folder(data) -> str:
    if not data.path:
        raise ValueError(f"data.path must name a folder for data.dataset={data.dataset}")
    return data.path


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise ValueError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")


def _find(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    _check_folder(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


class VideoFolder(FileClips):
    """Clips of `frames` frames (every `stride`-th) of every video under `root`, resampled to `fps` when set;
    `balance` says whether each clip (`clips`) or each file (`files`) is equally likely per draw.
    Item: {"video": float32 (C, F, H, W) in [-1, 1]}."""

    splits = ()  # one set of files: a split does not apply

    @classmethod
    def provides(cls, data) -> Provides:
        return Provides(0, False, f"data.dataset=video-folder ({data.path}; for captions or labels prepare a cache)")

    @classmethod
    def from_config(cls, data, split: str = "train", progress: bool = True) -> "VideoFolder":
        return cls(_folder(data), data.frames, data.height, data.width, data.stride, data.flip, data.channels,
                   data.seed, fps=data.fps, balance=data.balance, progress=progress)

    def __init__(self, root: str | os.PathLike, frames: int = 8, height: int = 32, width: int = 32, stride: int = 1,
                 flip: bool = True, channels: int = 3, seed: int = 0, fps: float = 0.0, balance: str = "clips",
                 progress: bool = True):
        self.root = Path(root)
        _check_folder(self.root)  # a missing path or a file: the folder's own error
        sources, self.skipped = list_sources(self.root)
        span = (frames - 1) * stride + 1
        settings = CacheSettings(height, width, channels, float(fps))
        self.videos: list[np.ndarray] = []
        self.files: list[Path] = []
        for source in tqdm(sources, desc=f"decoding {self.root}", disable=not progress, leave=False):
            try:
                decoded = decode_source(source, settings, span)
            except ValueError as err:
                self.skipped.append(Skip(source.name, str(err)))
                continue
            self.videos.append(decoded.frames)
            self.files.append(source.path)
        for skip in self.skipped:  # after the progress bar has gone, so that each is a line of its own
            warnings.warn(f"skipping {self.root / skip.where}: {skip.reason}", stacklevel=2)
        if not self.videos:
            problems = "; ".join(str(skip) for skip in self.skipped)
            raise ValueError(f"{self.root}: no usable clips in {len(sources)} video file(s): {problems}")
        self._init_clips([len(v) for v in self.videos], frames, stride, flip, channels, seed, balance)

    def file_frames(self, file: int) -> np.ndarray:
        return self.videos[file]

    def summary(self) -> str:
        return (f"{self.root}: {len(self.files)} usable video file(s), {len(self):,} "
                f"{'clips' if self.windows.balance == 'clips' else 'files (one clip each per epoch)'} of "
                f"{self.frames} frames (stride {self.stride}), {len(self.skipped)} file(s) skipped")


class ImageFolder(Dataset):
    """Every image under `root` as a 1-frame clip: {"video": float32 (C, 1, H, W) in [-1, 1]}."""

    splits = ()

    @classmethod
    def provides(cls, data) -> Provides:
        return Provides(0, False, f"data.dataset=image-folder ({data.path})")

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
        clip = to_clip(self.images[index], self.channels)
        if self.flip and np.random.default_rng([self.seed, index, salt, 1]).random() < 0.5:
            clip = clip.flip(-1)
        return {"video": clip}

    def spread(self, num: int) -> list[dict]:
        """`num` images spread evenly over the folder (fewer when it has fewer)."""
        picks = np.linspace(0, len(self) - 1, min(num, len(self))).round().astype(int)
        return [self[int(i)] for i in picks]
