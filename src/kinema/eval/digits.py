"""A digit-identity oracle for Moving Digits samples: does each video keep its digit's class?

Per frame, the digit is cropped at its bounding box (pixels above a threshold), resized to 8×8 and
classified by an RBF support-vector machine trained on the *train* split of scikit-learn's bundled
digits (the same images Moving Digits draws from). It is trained in about a second, so it is
rebuilt on use rather than shipped. One digit per video is assumed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DigitOracle"]


@lru_cache(maxsize=1)
def _classifier():
    from sklearn.svm import SVC

    from ..data.moving_digits import digit_images

    images, labels = digit_images("train", 8)
    return SVC(C=10.0, gamma="scale").fit(images.reshape(len(images), -1), labels)


class DigitOracle:
    def __init__(self, threshold: float = 0.25):
        self.threshold = threshold
        self.classifier = _classifier()

    def crops(self, frames: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """frames (N, H, W) in [-1, 1] -> (8×8 crops (N, 64) in [0, 1], visible (N,) bool)."""
        x = (frames.float() + 1) / 2
        out, visible = np.zeros((len(x), 64), dtype=np.float32), np.zeros(len(x), dtype=bool)
        for i, frame in enumerate(x):
            ys, xs = torch.nonzero(frame > self.threshold, as_tuple=True)
            if len(ys) < 4:
                continue
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            side = max(y1 - y0, x1 - x0)  # square crop, centred on the box: keeps the aspect of thin digits
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            pad = F.pad(frame, (side, side, side, side))
            crop = pad[cy - side // 2 + side: cy - side // 2 + 2 * side, cx - side // 2 + side: cx - side // 2 + 2 * side]
            small = F.interpolate(crop[None, None], size=(8, 8), mode="area")[0, 0]
            out[i], visible[i] = small.clamp(0, 1).flatten().numpy(), True
        return out, visible

    def classify_frames(self, videos: Tensor) -> np.ndarray:
        """videos (N, 1, F, H, W) in [-1, 1] -> predicted class per frame (N, F); -1 where no digit is visible."""
        n, c, f, h, w = videos.shape
        crops, visible = self.crops(videos[:, 0].reshape(n * f, h, w))
        pred = np.full(n * f, -1)
        if visible.any():
            pred[visible] = self.classifier.predict(crops[visible])
        return pred.reshape(n, f)

    def identity_kept(self, videos: Tensor) -> np.ndarray:
        """(N,) bool: the digit is visible in every frame and every frame gets the same class."""
        pred = self.classify_frames(videos)
        return (pred[:, :1] >= 0).ravel() & (pred == pred[:, :1]).all(axis=1)
