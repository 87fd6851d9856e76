"""Moving Digits oracle metrics: what FVD cannot see on our data (spec F1, "content bias").

FVD's I3D features respond mostly to per-frame appearance; a video whose frames are shuffled can score well. On
Moving Digits we know what a correct video is — the same digits, each moving at constant velocity and bouncing
off the walls — so we measure that directly, offline, with the shipped digit classifier
(`kinema.eval.digit_classifier`):

1. Every frame is segmented into digits: pixels brighter than `threshold` (in [0, 1]), grouped into
   8-connected components; components smaller than `min_pixels` are noise and ignored.
2. Each digit is cropped, classified (class, confidence) and embedded (32 features), and located by its
   intensity-weighted centroid. A component holds as many digits as its size requires: one digit's ink fits
   in a (digit_size + 2)² box (2 pixels of slack for blurry samples) and covers at most digit_size² pixels, so
   a component holds max(⌈extent / (digit_size + 2)⌉, ⌈ink / digit_size²⌉) digits; more than one is overlapping
   digits (or junk, such as a frame of noise), neither classified nor tracked. For several digits, digits are linked
   frame to frame by the assignment that minimises the total centroid distance, wherever every digit is seen
   on its own.

Metrics, each a fraction in [0, 1] (higher is better) — see `OracleResult`:

* recognisability — per frame, the fraction of its digits (those seen on their own, not overlapping another)
  classified with confidence ≥ `confidence`, 0 for a frame without any; averaged over frames;
* identity consistency — videos whose digits keep their classes: the sorted classes are the same in every frame
  in which all `num_digits` digits are seen separately (at least half of the frames), and no track changes class;
* adjacent agreement — of the pairs of consecutive frames in which every digit is seen on its own, the fraction
  whose (sorted) classes agree: a softer identity measure for weak models, where a single changed frame already
  fails a video's identity;
* count consistency — videos that show the data's `num_digits` digits in every frame: no digit appears,
  vanishes, splits or merges, and no frame is junk (a video of noise shows a steady number of blobs; a blank
  video a steady zero; neither counts). Count accuracy: frames with exactly `num_digits` digits;
* motion plausibility — videos whose every track moves like a Moving Digit: along each axis the speed is
  constant (±1 pixel of rounding, plus `jitter`) except on steps that touch a wall, a step never moves faster
  than that speed, the direction reverses only next to a wall (steps shorter than `jitter` have no direction),
  and the speed lies in the data's range: at least half the slowest speed, at most the fastest plus a pixel
  (clips of fewer than 3 frames are not judged). `jitter` is the centroid's measurement noise: a sample draws
  its digit a little differently in every frame, which moves the intensity-weighted centroid without moving the
  digit. The default is about twice the 99th percentile of how far redrawing real clips frame by frame with
  random blur, contrast and pixel noise (`kinema.eval.corruptions.restyled`) moves a step's centroid; without
  it, a large share of such redrawn real clips would count as implausible motion
  (`benchmarks/oracle_validation.py`; benchmarks/RESULTS.md, "Oracle validation");
* the oracle Fréchet distance (`clip_features`, `frechet`) between the Gaussians of per-clip features: the
  mean classifier embedding, how far the embedding moves from frame to frame, the centroid's speed and
  acceleration, and the digit count.

The corruptions in `kinema.eval.corruptions` show each temporal metric catching what it should;
`benchmarks/oracle_validation.py` prints that table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .digit_classifier import DigitNet, load_digit_classifier, resize_patches, square_patch
from .frechet import frechet_distance_from_features

__all__ = ["DigitOracle", "Detections", "MOTION_FAULTS", "OracleResult", "label_components"]

# why a video's motion is implausible, in the order checked: a step faster than the track's speed; a changed speed
# away from the walls; a reversal away from the walls; a mean speed outside the data's range; no track of ≥ 3 frames
MOTION_FAULTS = ("jump", "uneven speed", "mid-canvas turn", "speed out of range", "untracked")
_ROUNDING = 1.0 + 1e-6  # digits are drawn at integer positions: a constant velocity moves ⌊v⌋ or ⌈v⌉ pixels a step


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of binary images (n, H, W) → labels (n, H, W): 0 = background, otherwise one
    positive label per component, unique across all the images.

    Union-find over the ink pixels, vectorised: every pair of neighbouring ink pixels hooks the larger root
    under the smaller, then paths are compressed, until no pair spans two roots.
    """
    mask = np.asarray(mask, dtype=bool)
    n, h, w = mask.shape
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    pairs = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour relation once
        a = index[:, :h - dy, max(0, -dx):w - max(0, dx)]
        b = index[:, dy:, max(0, dx):w - max(0, -dx) if dx < 0 else w]
        both = (a >= 0) & (b >= 0)
        pairs.append((a[both], b[both]))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    parent = np.arange(int(mask.sum()))
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        ra, rb = ra[differ], rb[differ]
        parent[np.maximum(ra, rb)] = np.minimum(ra, rb)  # roots only ever point lower: no cycles
        while True:  # path compression: point every node at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    labels = np.zeros(mask.shape, dtype=np.int64)
    labels[mask] = parent + 1
    return labels


@dataclass
class Detections:
    """Every digit found in N videos of F frames of H×W pixels; M digits in all, arrays of length M."""

    shape: tuple[int, int, int, int]  # (N, F, H, W)
    video: np.ndarray  # (M,) int
    frame: np.ndarray  # (M,) int
    centroid: np.ndarray  # (M, 2) intensity-weighted (y, x)
    box: np.ndarray  # (M, 4) ink bounding box (y0, y1, x0, x1), end exclusive
    pixels: np.ndarray  # (M,) ink pixels
    probs: np.ndarray  # (M, 10) class probabilities
    embedding: np.ndarray  # (M, D) classifier features
    digits: np.ndarray  # (M,) digits in the component: 1, or more for ink larger than one digit (overlaps, junk)

    @property
    def classes(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(1)

    def count(self) -> np.ndarray:
        """(N, F) digits per frame."""
        n, f = self.shape[:2]
        return np.bincount(self.video * f + self.frame, self.digits, minlength=n * f).round().astype(int).reshape(n, f)

    def per_frame(self) -> list[list[np.ndarray]]:
        """[video][frame] -> indices of that frame's digits."""
        n, f = self.shape[:2]
        order = np.lexsort((self.frame, self.video))
        keys = self.video[order] * f + self.frame[order]
        bounds = np.searchsorted(keys, np.arange(n * f + 1))
        return [[order[bounds[v * f + t]:bounds[v * f + t + 1]] for t in range(f)] for v in range(n)]


@dataclass
class OracleResult:
    """Per-frame and per-video verdicts; `summary()` gives the metric fractions."""

    recognisable: np.ndarray  # (N, F) fraction of the frame's one-digit components classified confidently
    count: np.ndarray  # (N, F) int
    identity_kept: np.ndarray  # (N,) bool
    count_consistent: np.ndarray  # (N,) bool
    motion_plausible: np.ndarray  # (N,) bool
    num_digits: int
    details: dict = field(default_factory=dict)
    # (N, 2): adjacent frame pairs in which every digit is seen on its own, and how many of them agree on the classes
    adjacent_pairs: Optional[np.ndarray] = None
    # (N,) str: why a video's motion is implausible ("" where it is plausible): one of MOTION_FAULTS
    motion_fault: Optional[np.ndarray] = None

    def summary(self) -> dict[str, float]:
        pairs = self.adjacent_pairs.sum(0) if self.adjacent_pairs is not None else np.zeros(2)
        return {
            "recognisability": float(self.recognisable.mean()),
            "identity_consistency": float(self.identity_kept.mean()),
            "count_consistency": float(self.count_consistent.mean()),
            "count_accuracy": float((self.count == self.num_digits).mean()),
            "motion_plausibility": float(self.motion_plausible.mean()),
            "digits_per_frame": float(self.count.mean()),
            # softer than identity: one changed frame costs one or two pairs, not the whole video
            "adjacent_agreement": float(pairs[1] / pairs[0]) if pairs[0] else 0.0,
        }

    def motion_faults(self) -> dict[str, float]:
        """Fraction of the videos whose motion fails for each reason (each failing video counts once, for the
        first check one of its tracks fails); the fractions add up to 1 − motion plausibility."""
        if self.motion_fault is None:
            raise ValueError("this result holds no motion verdicts (motion_fault)")
        return {name: float((self.motion_fault == name).mean()) for name in MOTION_FAULTS}


class DigitOracle:
    """Oracle metrics for Moving Digits videos (N, 1, F, H, W) in [-1, 1].

    num_digits, digit_size, speed: the data's (`data.num_digits`, `data.digit_size`, (`data.speed_min`,
    `data.speed_max`)); speed=None skips the speed-range check. threshold: ink level in [0, 1]. confidence:
    the classifier probability that counts as recognised. min_pixels: smallest component kept (default 8% of
    digit_size², about a third of the smallest digit's ink). jitter: pixels a centroid step may deviate beyond
    rounding (measurement noise of the centroid, see the module docstring).
    """

    def __init__(self, num_digits: int = 1, digit_size: int = 14, speed: Optional[Sequence[float]] = (1.0, 3.0),
                 threshold: float = 0.25, confidence: float = 0.7, min_pixels: Optional[int] = None,
                 classifier: Optional[DigitNet] = None, batch_size: int = 4096, jitter: float = 0.5):
        if num_digits < 1 or digit_size < 2:
            raise ValueError(f"num_digits and digit_size must be positive; got {num_digits}, {digit_size}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1) pixels; got {jitter}")
        self.jitter = jitter
        self.num_digits, self.digit_size = num_digits, digit_size
        self.speed = tuple(speed) if speed is not None else None
        self.threshold, self.confidence = threshold, confidence
        self.min_pixels = min_pixels if min_pixels is not None else max(4, round(0.08 * digit_size ** 2))
        self.classifier = classifier or load_digit_classifier()
        self.batch_size = batch_size
        # one digit's ink fits in its s×s box; 2 pixels of slack for blurry samples. Wider ink is overlapping digits.
        self.single_extent = digit_size + 2

    # ------------------------------------------------------------------------------------------ detection
    @torch.no_grad()
    def detect(self, videos: Tensor) -> Detections:
        """Segment, classify and locate every digit in videos (N, 1, F, H, W) in [-1, 1]."""
        if videos.ndim != 5 or videos.shape[1] != 1:
            raise ValueError(f"the oracle reads grey videos (N, 1, F, H, W); got {tuple(videos.shape)}")
        n, _, f, h, w = videos.shape
        frames = ((videos[:, 0].float().clamp(-1, 1) + 1) / 2).reshape(n * f, h, w)
        intensity = frames.numpy()
        labels = label_components(intensity > self.threshold)
        fi, yy, xx = np.nonzero(labels)
        label_of, first, inv = np.unique(labels[fi, yy, xx], return_index=True, return_inverse=True)
        frame_of = fi[first]
        pixels = np.bincount(inv, minlength=len(label_of))
        weight = intensity[fi, yy, xx].astype(np.float64)
        mass = np.bincount(inv, weight, minlength=len(label_of))
        m = len(label_of)
        centroid = np.stack([np.bincount(inv, weight * yy, m), np.bincount(inv, weight * xx, m)], 1).astype(np.float64)
        centroid /= np.maximum(mass, 1e-12)[:, None]
        box = np.stack([np.full(len(label_of), h), np.zeros(len(label_of), int), np.full(len(label_of), w),
                        np.zeros(len(label_of), int)], 1)
        np.minimum.at(box[:, 0], inv, yy)
        np.maximum.at(box[:, 1], inv, yy + 1)
        np.minimum.at(box[:, 2], inv, xx)
        np.maximum.at(box[:, 3], inv, xx + 1)
        keep = pixels >= self.min_pixels
        frame_of, label_of, pixels, centroid, box = (a[keep] for a in (frame_of, label_of, pixels, centroid, box))
        probs, embedding = self._classify(intensity, labels, frame_of, label_of, box)
        extent = np.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2])
        digits = np.maximum.reduce([np.ones_like(extent), np.ceil(extent / self.single_extent),
                                    np.ceil(pixels / self.digit_size ** 2)]).astype(int)
        return Detections((n, f, h, w), frame_of // f, frame_of % f, centroid, box, pixels, probs, embedding,
                          digits)

    def _classify(self, intensity, labels, frame_of, label_of, box) -> tuple[np.ndarray, np.ndarray]:
        probs, embedding = [], []
        for start in range(0, len(box), self.batch_size):
            sl = slice(start, start + self.batch_size)
            patches = [np.where(square_patch(labels[i], b) == lab, square_patch(intensity[i], b), 0)
                       for i, lab, b in zip(frame_of[sl], label_of[sl], box[sl])]
            emb = self.classifier.embed(resize_patches(patches))
            probs.append(torch.softmax(self.classifier.head(emb), dim=1).numpy())
            embedding.append(emb.numpy())
        d = self.classifier.head.in_features
        return (np.concatenate(probs) if probs else np.zeros((0, 10), np.float32),
                np.concatenate(embedding) if embedding else np.zeros((0, d), np.float32))

    # ------------------------------------------------------------------------------------------ tracking
    def _resolved(self, idx: np.ndarray, det: Detections) -> bool:
        """A frame in which every digit is seen on its own: num_digits components, each one digit."""
        return len(idx) == self.num_digits and bool((det.digits[idx] == 1).all())

    def _tracks(self, frames: list[np.ndarray], det: Detections) -> list[list[int]]:
        """Tracks (lists of detection indices over consecutive frames) through resolved frames; any other
        frame ends every track."""
        k, tracks, open_tracks = self.num_digits, [], None
        for idx in frames:
            if not self._resolved(idx, det):
                tracks += open_tracks or []
                open_tracks = None
                continue
            if open_tracks is None:
                open_tracks = [[i] for i in idx]
                continue
            last = det.centroid[[t[-1] for t in open_tracks]]
            now = det.centroid[idx]
            cost = ((last[:, None] - now[None]) ** 2).sum(-1)
            if k <= 6:
                best = min(itertools.permutations(range(k)), key=lambda p: cost[np.arange(k), list(p)].sum())
            else:  # greedy beyond 6! assignments
                best, free = [], set(range(k))
                for row in range(k):
                    j = min(free, key=lambda c: cost[row, c])
                    best.append(j)
                    free.remove(j)
            for t, j in zip(open_tracks, best):
                t.append(idx[j])
        return tracks + (open_tracks or [])

    def _track_fault(self, track: list[int], det: Detections) -> Optional[str]:
        """None for a track that moves like a Moving Digit (constant speed per axis except at walls, never faster,
        reversing only at walls, speed in range), else the first check it fails: one of `MOTION_FAULTS`."""
        if len(track) < 3:
            return None  # nothing to judge; the video needs at least one judged track (see evaluate)
        size = det.shape[2:]
        c, box = det.centroid[track], det.box[track]
        d = np.diff(c, axis=0)
        mean_speed = []
        for axis in (0, 1):
            step = d[:, axis]
            lo, hi = box[:, 2 * axis], box[:, 2 * axis + 1]
            # the digit's s×s box touches the wall at a bounce, and its ink lies up to s − extent inside that box;
            # a frame is near a wall if the ink is within that, plus one step, of the edge
            reach = self.speed[1] if self.speed is not None else float(np.median(np.abs(step)))
            margin = np.clip(self.digit_size - (hi - lo), 0, None) + reach + _ROUNDING
            near = (lo <= margin) | (size[axis] - hi <= margin)
            step_near = near[:-1] | near[1:]
            free = np.abs(step[~step_near])
            # away from the walls a digit moves ⌊v⌋ or ⌈v⌉ pixels a step; a bounce step moves less, never more
            u = float(np.median(free)) if len(free) else float(np.abs(step).max())
            tolerance = _ROUNDING + self.jitter
            if (np.abs(step) > u + tolerance).any():
                return "jump"
            if (np.abs(free - u) > tolerance).any():
                return "uneven speed"
            moving = np.where(np.abs(step) > self.jitter, step, 0.0)  # a shorter step is noise, no direction
            reversal = moving[:-1] * moving[1:] < 0
            if (reversal & ~near[1:-1]).any():
                return "mid-canvas turn"
            mean_speed.append(np.abs(step).mean())
        if self.speed is not None:
            # rounding and bounces make a short clip's mean step slower than its speed (real 8×16×16 clips at
            # speeds ≥ 0.5 measure ≥ 0.43), never by half
            speed = float(np.hypot(*mean_speed))
            if not self.speed[0] / 2 <= speed <= self.speed[1] + 1.0:
                return "speed out of range"
        return None

    # ------------------------------------------------------------------------------------------ metrics
    def evaluate(self, videos: Tensor, detections: Optional[Detections] = None) -> OracleResult:
        """All verdicts for videos (N, 1, F, H, W) in [-1, 1] (pass `detections` to reuse a `detect`)."""
        det = detections if detections is not None else self.detect(videos)
        n, f = det.shape[:2]
        count = det.count()
        key, single = det.video * f + det.frame, det.digits == 1
        sure = np.bincount(key, single & (det.confidence >= self.confidence), minlength=n * f).reshape(n, f)
        singles = np.bincount(key, single, minlength=n * f).reshape(n, f)
        recognisable = sure / np.maximum(singles, 1)  # 0 where no digit is seen on its own
        classes = det.classes
        identity, fault = np.zeros(n, bool), np.full(n, "", dtype=object)
        adjacent = np.zeros((n, 2), int)
        for v, frames in enumerate(det.per_frame()):
            # per frame: its sorted classes if every digit is seen on its own, else None
            seen = [tuple(sorted(classes[idx])) if self._resolved(idx, det) else None for idx in frames]
            resolved = [s for s in seen if s is not None]
            for a, b in zip(seen[:-1], seen[1:]):
                if a is not None and b is not None:
                    adjacent[v] += (1, a == b)
            tracks = self._tracks(frames, det)
            same_classes = len(set(resolved)) == 1
            tracks_keep_class = all(len(set(classes[t])) == 1 for t in tracks)
            identity[v] = 2 * len(resolved) >= f and same_classes and tracks_keep_class
            judged = [t for t in tracks if len(t) >= 3]
            first = next((x for x in (self._track_fault(t, det) for t in judged) if x is not None), None)
            fault[v] = first or ("" if judged or f < 3 else "untracked")
        return OracleResult(recognisable, count, identity, (count == self.num_digits).all(1), fault == "",
                            self.num_digits, adjacent_pairs=adjacent, motion_fault=fault)

    def metrics(self, videos: Tensor) -> dict[str, float]:
        return self.evaluate(videos).summary()

    # ------------------------------------------------------------------------------------------ features
    def clip_features(self, videos: Tensor, detections: Optional[Detections] = None) -> np.ndarray:
        """Per-clip features (N, D + 10) for the oracle Fréchet distance.

        Per frame: the digits' mean unit-length classifier embedding e_t, their mean centroid c_t (pixels; held
        from the previous frame where no digit is found) and their count n_t. Per clip: mean e_t; mean and max
        ‖e_{t+1} − e_t‖; mean |Δc_t| per axis (speed); mean and max |Δ²c_t| per axis (acceleration: bounces,
        jumps); mean n_t and mean |Δn_t|.
        """
        det = detections if detections is not None else self.detect(videos)
        n, f, h, w = det.shape
        dim = det.embedding.shape[1]
        unit = det.embedding / np.linalg.norm(det.embedding, axis=1, keepdims=True).clip(1e-6)
        key = det.video * f + det.frame
        count = np.bincount(key, minlength=n * f).astype(np.float64)
        emb = np.zeros((n * f, dim))
        np.add.at(emb, key, unit)
        cen = np.zeros((n * f, 2))
        np.add.at(cen, key, det.centroid)
        seen = count > 0
        emb[seen] /= count[seen, None]
        cen[seen] /= count[seen, None]
        emb, cen, count, seen = emb.reshape(n, f, dim), cen.reshape(n, f, 2), count.reshape(n, f), seen.reshape(n, f)
        for v in range(n):  # hold the last seen position through frames without digits
            last = np.array([h / 2, w / 2])
            for t in range(f):
                if seen[v, t]:
                    last = cen[v, t]
                else:
                    cen[v, t] = last
        de = np.linalg.norm(np.diff(emb, axis=1), axis=2) if f > 1 else np.zeros((n, 1))
        dc = np.abs(np.diff(cen, axis=1)) if f > 1 else np.zeros((n, 1, 2))
        ddc = np.abs(np.diff(cen, n=2, axis=1)) if f > 2 else np.zeros((n, 1, 2))
        dn = np.abs(np.diff(count, axis=1)) if f > 1 else np.zeros((n, 1))
        return np.concatenate([
            emb.mean(1), de.mean(1, keepdims=True), de.max(1, keepdims=True), dc.mean(1),
            ddc.mean(1), ddc.max(1), count.mean(1, keepdims=True), dn.mean(1, keepdims=True)], axis=1)

    def frechet(self, real: Tensor | np.ndarray, fake: Tensor | np.ndarray) -> float:
        """Oracle Fréchet distance between two sets of videos (or of `clip_features`)."""
        a = real if isinstance(real, np.ndarray) else self.clip_features(real)
        b = fake if isinstance(fake, np.ndarray) else self.clip_features(fake)
        return frechet_distance_from_features(a, b)

    # ------------------------------------------------------------------------------------------ shortcuts
    def classify_frames(self, videos: Tensor) -> np.ndarray:
        """(N, F) class of the largest digit in each frame; -1 where no digit is found."""
        det = self.detect(videos)
        n, f = det.shape[:2]
        out = np.full((n, f), -1)
        order = np.argsort(det.pixels, kind="stable")  # later (larger) writes win
        out[det.video[order], det.frame[order]] = det.classes[order]
        return out

    def identity_kept(self, videos: Tensor) -> np.ndarray:
        """(N,) bool: the video's digits keep their classes (see the module docstring)."""
        return self.evaluate(videos).identity_kept
