"""`data.dataset=clips`: training from a clip cache written by `kinema prepare` (see `kinema.data.prepare`).

The arrays are memory-mapped, opened on first use (at most `OPEN_ARRAYS` at once, so a corpus of any size stays
under the open-file limit): a process's memory does not grow with the corpus, and DataLoader workers and DDP
ranks read one copy through the page cache.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .prepare import CACHE_FORMAT, CacheSettings
from .provides import Provides
from .windows import FileClips

__all__ = ["ClipCache", "read_index"]

OPEN_ARRAYS = 256


def read_index(cache: str | Path) -> dict:
    """The index of a prepared cache; ValueError naming the folder when it is not one."""
    cache = Path(cache)
    index = cache / "index.json"
    if not index.is_file():
        hint = (" (a prepare was interrupted before its first index: run it again)"
                if (cache / "cache.json").is_file() else "")
        raise ValueError(f"{cache}: not a prepared clip cache, no index.json{hint}; "
                         f"make one with: kinema prepare SOURCE --out {cache}")
    saved = json.loads(index.read_text(encoding="utf-8"))
    if saved.get("format") != CACHE_FORMAT:
        raise ValueError(f"{cache}: a clip cache of format {saved.get('format')}, this kinema reads {CACHE_FORMAT}")
    return saved


def _folder(data) -> str:
    if not data.path:
        raise ValueError("data.path must name a clip cache for data.dataset=clips (made by kinema prepare)")
    return data.path


class ClipCache(FileClips):
    """Clips of a prepared cache. Item: {"video": (C, F, H, W), "caption": str, "label": int}, caption and label
    present when every entry of the cache has one."""

    splits = ()  # one set of videos: a split does not apply

    @classmethod
    def provides(cls, data) -> Provides:
        index = read_index(_folder(data))
        entries = index["entries"]
        labelled = sum(e["label"] is not None for e in entries)
        captioned = sum(e["caption"] is not None for e in entries)
        where = (f"the cache {data.path} ({labelled} of {len(entries)} videos have a label, "
                 f"{captioned} a caption)")
        return Provides(len(index["classes"]) if index["classes"] and labelled == len(entries) else 0,
                        captioned == len(entries), where)

    @classmethod
    def from_config(cls, data, split: str = "train", progress: bool = True) -> "ClipCache":
        return cls(_folder(data), data.frames, data.height, data.width, data.stride, data.flip, data.channels,
                   data.fps, data.seed, data.balance)

    def __init__(self, cache: str | Path, frames: int = 8, height: int = 32, width: int = 32, stride: int = 1,
                 flip: bool = True, channels: int = 3, fps: float = 0.0, seed: int = 0, balance: str = "clips"):
        self.root = Path(cache)
        index = read_index(self.root)
        saved = CacheSettings(**index["settings"])
        asked = CacheSettings(height, width, channels, float(fps or saved.fps))
        if asked != saved:
            raise ValueError(f"{self.root}: the cache holds clips at {saved.describe()}, the run asks for "
                             f"{asked.describe()} (set data.height/width/channels/fps to match, or prepare another "
                             "cache)")
        self.entries, self.classes = index["entries"], index["classes"]
        self._init_clips([e["frames"] for e in self.entries], frames, stride, flip, channels, seed, balance)
        self.short = int((self.windows.counts == 0).sum())
        if self.short:
            warnings.warn(f"{self.root}: {self.short} of {len(self.entries)} videos are shorter than a clip of "
                          f"{frames} frames (stride {stride}) and are not used", stacklevel=2)
        if not len(self.windows):
            raise ValueError(f"{self.root}: no video is as long as a clip of {frames} frames (stride {stride})")
        self.with_captions = all(e["caption"] is not None for e in self.entries)
        self.with_labels = bool(self.classes) and all(e["label"] is not None for e in self.entries)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def file_frames(self, file: int) -> np.ndarray:
        array = self._open.pop(file, None)
        if array is None:
            array = np.load(self.root / self.entries[file]["array"], mmap_mode="r")
            if len(self._open) >= OPEN_ARRAYS:
                self._open.popitem(last=False)
        self._open[file] = array
        return array

    def file_fields(self, file: int) -> dict:
        entry = self.entries[file]
        return ({"caption": entry["caption"]} if self.with_captions else {}) | (
            {"label": entry["label"]} if self.with_labels else {})

    def summary(self) -> str:
        used = len(self.entries) - self.short
        return (f"{self.root}: {used} of {len(self.entries)} videos, {len(self):,} "
                f"{'clips' if self.windows.balance == 'clips' else 'files (one clip each per epoch)'} of "
                f"{self.frames} frames (stride {self.stride})")
