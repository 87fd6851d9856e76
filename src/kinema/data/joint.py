"""Joint image+video training (VDM, spec A10): each clip gets K independent images appended as frames."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["JointImageVideo"]


class JointImageVideo(Dataset):
    """Item: {"video": (C, F + K, H, W), "frame_mask": (F + K,) bool (True = clip frame), ...clip fields}.

    `images` is any dataset of 1-frame clips (an ImageFolder, or frames of other videos); which K
    images join clip i is a deterministic function of (seed, i, salt).

    The clip's "label" and "caption" are dropped (`CONDITIONING_FIELDS`): the networks apply an
    item's label or caption to the whole item, image frames included, and the appended images are
    unrelated to the clip, so keeping them would train the images on a wrong class or caption. A
    class- or text-conditional run therefore cannot use joint images (the trainer refuses it, naming
    the missing field); train unconditionally, or without images. The clip's other fields are kept
    and describe its F clip frames only.
    """

    CONDITIONING_FIELDS = ("label", "caption")

    def __init__(self, videos: Dataset, images: Dataset, images_per_video: int, seed: int = 0):
        if images_per_video < 1:
            raise ValueError(f"images_per_video must be at least 1; got {images_per_video}")
        self.videos, self.images, self.k, self.seed = videos, images, images_per_video, seed
        clip, image = videos[0]["video"], images[0]["video"]
        if clip.shape[0] != image.shape[0] or clip.shape[2:] != image.shape[2:]:
            raise ValueError(f"images of shape {tuple(image.shape)} do not fit clips of shape {tuple(clip.shape)} "
                             "(channels, height and width must match)")
        self.channels = getattr(videos, "channels", clip.shape[0])

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key) -> dict:
        index, salt = key if isinstance(key, tuple) else (key, 0)
        item = {k: v for k, v in self.videos[key].items() if k not in self.CONDITIONING_FIELDS}
        picks = np.random.default_rng([self.seed, index, salt, 2]).integers(0, len(self.images), size=self.k)
        extra = [self.images[(int(p), salt)]["video"] for p in picks]
        frames = item["video"].shape[1]
        item["video"] = torch.cat([item["video"], *extra], dim=1)
        item["frame_mask"] = torch.cat([torch.ones(frames, dtype=torch.bool), torch.zeros(self.k, dtype=torch.bool)])
        return item

    def spread(self, num: int) -> list[dict]:
        """`num` items spread evenly over the clips, each with its images."""
        picks = np.linspace(0, len(self) - 1, min(num, len(self))).round().astype(int)
        return [self[int(i)] for i in picks]
