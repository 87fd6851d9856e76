"""Known-frame patterns for training a frame-conditioned model (MCVD's masking, FDM's random subsets).

One model learns unconditional generation, prediction, interpolation and in-filling when each training example
draws which of its frames are given: none (also the dropped condition of classifier-free guidance), a prefix of
k frames (prediction, extension), the first and last (interpolation), or a random subset (in-filling, any plan of
`kinema.sample.plan_windows`). Every pattern leaves at least one frame unknown, since only unknown frames count in
the loss.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["PATTERNS", "draw_known_masks", "known_mask"]

PATTERNS = ("none", "prefix", "first_last", "subset")  # the order of train.frame_patterns


def known_mask(pattern: str, frames: int, generator: torch.Generator) -> Tensor:
    """(frames,) bool: the known frames of one clip of `frames` ≥ 1 frames under `pattern`."""
    mask = torch.zeros(frames, dtype=torch.bool)
    if frames < 2 or pattern == "none":
        return mask
    if pattern == "prefix":
        mask[: int(torch.randint(1, frames, (), generator=generator, device=generator.device))] = True
    elif pattern == "first_last":
        mask[0] = True
        mask[-1] = frames > 2  # a 2-frame clip with both ends known has nothing left to learn from: its first only
    elif pattern == "subset":
        mask = (torch.rand(frames, generator=generator, device=generator.device) < 0.5).cpu()
        if bool(mask.all()):
            mask[int(torch.randint(0, frames, (), generator=generator, device=generator.device))] = False
    else:
        raise ValueError(f"known-frame pattern must be one of {', '.join(PATTERNS)}; got {pattern!r}")
    return mask


def draw_known_masks(batch: int, frames: int, weights: Sequence[float], generator: torch.Generator,
                     frame_mask: Optional[Tensor] = None) -> Tensor:
    """(batch, frames) bool known-frame masks, each example's pattern drawn with the relative `weights` of
    `PATTERNS`, on the CPU. With joint image+video training, `frame_mask` (batch, frames) marks the clip frames
    (they come first); the appended images are never known, each being its own unconditional one-frame video."""
    weights = torch.as_tensor(list(weights), dtype=torch.float64, device=generator.device)  # draws on its device
    picks = torch.multinomial(weights, batch, replacement=True, generator=generator).cpu()
    clip_frames = [frames] * batch if frame_mask is None else frame_mask.sum(dim=1).tolist()
    masks = torch.zeros(batch, frames, dtype=torch.bool)
    for b, (pick, n) in enumerate(zip(picks.tolist(), clip_frames)):
        masks[b, :n] = known_mask(PATTERNS[pick], int(n), generator)
    return masks
