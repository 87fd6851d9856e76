"""Datasets of clips (C, F, H, W) in [-1, 1]: Moving Digits, video folders, image folders, joint image+video."""

from .folders import ImageFolder, VideoFolder, fit_frames
from .joint import JointImageVideo
from .moving_digits import MovingDigits, digit_images
from .sampler import ResumableBatchSampler

__all__ = ["MovingDigits", "digit_images", "VideoFolder", "ImageFolder", "fit_frames", "JointImageVideo",
           "ResumableBatchSampler"]
