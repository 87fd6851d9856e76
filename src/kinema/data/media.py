"""Reading and writing videos: PyAV for decoding, imageio (+ PyAV / Pillow) for encoding.

Arrays on this boundary are uint8 (F, H, W, C); tensors inside kinema are float (C, F, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "Decoded", "decode_video", "nearest_frames", "read_video",
           "read_npz", "read_clips", "fit_frames", "to_uint8",
           "tile_videos", "write_videos", "frame_strip"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif", ".avi", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_video(path: str | os.PathLike, max_frames: Optional[int] = None) -> np.ndarray:
    """Decode a video file to uint8 RGB frames (F, H, W, 3). Raises ValueError naming the file."""
    import av

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    frames, streams = [], True
    try:
        with av.open(str(path)) as container:
            streams = bool(container.streams.video)
            if streams:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
    except Exception as err:  # PyAV's FFmpeg errors (ValueErrors that may not name the file): name it, one line
        raise _decode_error(path, err) from err
    if not streams:
        raise ValueError(f"{path}: no video stream")
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames)


def _decode_error(path, err: Exception) -> ValueError:
    """FFmpeg's errors as one plain line naming the file (its errno, e.g. 1094995529, means nothing to a user)."""
    reason = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
    return ValueError(f"{path}: unreadable ({reason})")


@dataclass(frozen=True)
class Decoded:
    """A decoded video: frames uint8 (F, H, W, C), their presentation times (F,) in seconds, the source's rate."""

    frames: np.ndarray
    times: np.ndarray
    source_fps: float


def nearest_frames(times: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the source frames nearest to the times t0, t0 + 1/fps, … ≤ t_last (t0 = times[0]; ties go to the
    earlier frame): resampling by presentation time, so a variable-rate file keeps its real speed."""
    targets = times[0] + np.arange(int(np.floor((times[-1] - times[0]) * fps + 1e-6)) + 1) / fps
    right = np.searchsorted(times, targets, side="left").clip(1, len(times) - 1)
    left = right - 1
    return np.where(targets - times[left] <= times[right] - targets, left, right) if len(times) > 1 else left * 0


def _timed_frames(path, start: Optional[float], end: Optional[float]) -> Iterator[tuple[float, object]]:
    """(time in seconds, av.VideoFrame) in presentation order, within [start, end)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else (index / rate if rate else None)
                if time is None:
                    raise ValueError(f"{path}: frames without timestamps and no frame rate")
                if start is not None and time < start - 1e-9:
                    continue
                if end is not None and time >= end - 1e-9:
                    break
                yield time, frame
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise _decode_error(path, err) from err
    except Exception as err:  # PyAV's FFmpeg errors (OSError subclasses mostly)
        raise _decode_error(path, err) from err


def decode_video(path: str | os.PathLike, height: int, width: int, channels: int = 3, fps: float = 0.0,
                 start: Optional[float] = None, end: Optional[float] = None, chunk: int = 32) -> Decoded:
    """Decode `path` straight to the training size (centre-crop + resize, `chunk` frames at a time, so memory holds
    the small frames and not the source's), optionally resampled to `fps` by presentation time and cut to the
    seconds [start, end). Grey (`channels=1`) is the rounded mean of RGB. Raises ValueError naming the file."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    times, raw, small = [], [], []
    for time, frame in _timed_frames(path, start, end):
        times.append(time)
        raw.append(frame.to_ndarray(format="rgb24"))
        if len(raw) == chunk:
            small.append(fit_frames(np.stack(raw), height, width))
            raw = []
    if raw:
        small.append(fit_frames(np.stack(raw), height, width))
    if not times:
        window = "" if start is None and end is None else f" between {start or 0:g} s and {end or 'the end'} s"
        raise ValueError(f"{path}: the video has no frames{window}")
    frames, stamps = np.concatenate(small), np.asarray(times, dtype=np.float64)
    span = stamps[-1] - stamps[0]
    source_fps = (len(stamps) - 1) / span if span > 0 else 0.0
    if fps > 0 and len(stamps) > 1:
        keep = nearest_frames(stamps, fps)
        frames, stamps = frames[keep], stamps[keep]
    if channels == 1:
        frames = frames.mean(-1, keepdims=True).round().astype(np.uint8)
    return Decoded(frames, stamps, source_fps)


def read_npz(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array 'videos' (N, F, H, W, C) of an .npz file as `kinema sample --out X.npz` writes it, with at
    least one frame. Never unpickles: an object array is refused. Raises ValueError naming the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (not a zip archive, as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "videos" not in data:
                raise ValueError(f"{path}: expected an array named 'videos' (N, F, H, W, C); found {sorted(data)}")
            try:
                videos = data["videos"]
            except ValueError as err:  # an object array: numpy refuses to unpickle it
                raise ValueError(f"{path}: cannot read 'videos' as a plain array ({err}); kinema reads uint8 "
                                 "(N, F, H, W, C) arrays and never unpickles an object array") from err
    except ValueError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged archive
        raise ValueError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err
    if videos.ndim != 5:
        raise ValueError(f"{path}: 'videos' must have 5 dimensions (N, F, H, W, C); got shape {videos.shape}")
    if videos.dtype != np.uint8:
        raise ValueError(f"{path}: 'videos' must be uint8 (values 0-255); got {videos.dtype}")
    if videos.size == 0:
        raise ValueError(f"{path}: 'videos' holds no frames; its shape (N, F, H, W, C) is {videos.shape}")
    return videos


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop uint8 (F, H, W, C) frames to the target aspect ratio and resize (antialiased)."""
    f, h, w, c = frames.shape
    target = width / height
    if w / h > target:  # too wide: crop width
        new_w = max(1, round(h * target))
        x0 = (w - new_w) // 2
        frames = frames[:, :, x0:x0 + new_w]
    else:
        new_h = max(1, round(w / target))
        y0 = (h - new_h) // 2
        frames = frames[:, y0:y0 + new_h]
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clips(path: str | os.PathLike, channels: int, size: Optional[tuple[int, int]] = None,
               fit: bool = False) -> Tensor:
    """Clips for conditional generation: (N, channels, F, H, W) float in [-1, 1].

    `*.npz` (as written by `kinema sample`, key "videos") gives N clips; a video file gives one.
    Grey stored as RGB (equal channels, as kinema writes grey) reads as grey. With `fit`, frames
    are centre-cropped and resized to `size` and colour is averaged to grey for a grey model;
    without it a different size or a colour clip for a grey model is an error naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    videos = read_npz(path) if path.suffix.lower() == ".npz" else read_video(path)[None]
    if fit and size is not None:
        videos = np.stack([fit_frames(v, *size) for v in videos])
    elif size is not None and tuple(videos.shape[2:4]) != tuple(size):
        raise ValueError(f"{path}: frames are {videos.shape[2]}×{videos.shape[3]}, the model needs {size[0]}×{size[1]} "
                         "(pass --fit to centre-crop and resize)")
    clips = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (N, C, F, H, W)
    if channels == 1 and clips.shape[1] == 3:
        grey = bool((clips[:, :1] == clips[:, 1:]).all())
        if not grey and not fit:
            raise ValueError(f"{path}: a colour clip, but the model is grey (pass --fit to convert it)")
        clips = clips.mean(1, keepdim=True)
    elif clips.shape[1] != channels:
        raise ValueError(f"{path}: {clips.shape[1]} channels, the model needs {channels}")
    return clips


def to_uint8(videos: Tensor) -> np.ndarray:
    """(N, C, F, H, W) float in [-1, 1] -> (N, F, H, W, 3) uint8 (grey is repeated to RGB)."""
    if videos.ndim != 5:
        raise ValueError(f"videos must have shape (N, C, F, H, W); got {tuple(videos.shape)}")
    x = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 4, 1).cpu().numpy()
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def tile_videos(videos: np.ndarray, columns: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """(N, F, H, W, C) -> one grid video (F, rows·(H+pad)+pad, cols·(W+pad)+pad, C), with a white border."""
    n, f, h, w, c = videos.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((f, rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = videos[i]
    return grid


def frame_strip(videos: np.ndarray, pad: int = 1) -> np.ndarray:
    """(N, F, H, W, C) uint8 -> one image (N·(H+pad)+pad, F·(W+pad)+pad, C): a row per video, frames left to right."""
    n, f, h, w, c = videos.shape
    out = np.full((n * (h + pad) + pad, f * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        for t in range(f):
            y, x = pad + i * (h + pad), pad + t * (w + pad)
            out[y:y + h, x:x + w] = videos[i, t]
    return out


def _write_h264(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 through PyAV directly: imageio's pyav plugin costs about 0.3 s of set-up per file, which a corpus of
    thousands of small files (benchmarks/data_scale.py) cannot afford."""
    import av

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_one(path: Path, frames: np.ndarray, fps: float, scale: int) -> None:
    import imageio.v3 as iio

    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
        # H.264 wants even sides: pad by one white pixel where needed.
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        _write_h264(path, frames, fps)
    else:
        raise ValueError(f"{path}: unsupported video suffix {suffix!r} (use .gif or .mp4)")


def write_videos(videos: np.ndarray, path: str | os.PathLike, fps: float = 8.0, scale: int = 1,
                 columns: Optional[int] = None) -> list[Path]:
    """Write uint8 videos (N, F, H, W, C) to `path` and return the files written.

    - `*.gif` / `*.mp4`: one grid video of all N;
    - `*.npz`: the raw array under the key "videos", shape (N, F, H, W, C);
    - anything else: a directory with one `{i:04d}.gif` per video.
    """
    path = Path(path)
    if videos.ndim != 5 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 (N, F, H, W, C); got {videos.dtype} {videos.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps (frames per second) must be a positive number; got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez_compressed(path, videos=videos)
        return [path]
    if suffix in (".gif", ".mp4"):
        _write_one(path, tile_videos(videos, columns), fps, scale)
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for i, video in enumerate(videos):
        out = path / f"{i:04d}.gif"
        _write_one(out, video, fps, scale)
        written.append(out)
    return written
