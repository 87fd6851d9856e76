"""Datasets of clips (C, F, H, W) in [-1, 1]: Moving Digits, video folders, image folders, joint image+video.

`DATASETS` is the table of `data.dataset` names: config validation and the CLI's choices read it. Each class
builds itself from a `DataConfig` (`from_config(data, split, progress)`) and says what it provides:
`provides(data)` (labels and captions, see `Provides`), `splits` (empty: one set, the split does not apply), and
`spread(num)` (clips covering the whole corpus, for `kinema data` and evaluation's reference).
"""

from .cache import ClipCache
from .folders import ImageFolder, VideoFolder
from .joint import JointImageVideo
from .media import fit_frames
from .moving_digits import MovingDigits, digit_images
from .provides import Provides
from .sampler import ResumableBatchSampler

__all__ = ["DATASETS", "Provides", "ClipCache",
           "MovingDigits", "digit_images", "VideoFolder", "ImageFolder", "fit_frames", "JointImageVideo",
           "ResumableBatchSampler"]

DATASETS = {"moving-digits": MovingDigits, "video-folder": VideoFolder, "image-folder": ImageFolder, "clips": ClipCache}
