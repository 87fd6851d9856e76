"""Trained frame conditioning (MCVD, Voleti et al. 2022; RaMViD, Höppe et al. 2022): the known frames and their
mask enter as extra input channels, concatenated with z_t.

Input channels: [z_t (C), m·x^a (C), m (1)], where m (B, 1, F, H, W) is 1 at a known frame. Channel concatenation
puts each known frame exactly where it belongs in space and time, costs one wider input layer and nothing else,
and works unchanged in every backbone (a U-Net's first convolution, a DiT's patch embedding); the mask channel
tells a known all-black frame from an unknown one. The network learns from data what "known" means: it is never
told a noise level per frame, so it knows nothing of the schedule.

An absent condition is the all-False mask and zero frames, so a model called without known frames runs exactly
the path it was trained on for the dropped condition (the "none" pattern), which classifier-free guidance over
the frames needs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["input_channels", "with_known_frames"]


def input_channels(channels: int, frame_conditioning: bool) -> int:
    """Channels of the network's first layer: z alone, or z, the masked known frames and the mask."""
    return 2 * channels + 1 if frame_conditioning else channels


def with_known_frames(z: Tensor, frame_conditioning: bool, known_frames: Optional[Tensor],
                      known_mask: Optional[Tensor]) -> Tensor:
    """z (B, C, F, H, W) with the known frames (B, C, F, H, W) and mask (B, F) bool appended as channels.

    Frames where the mask is False are zeroed whatever they hold, so only the mask decides what is known.
    """
    if not frame_conditioning:
        if known_frames is not None or known_mask is not None:
            raise ValueError("known frames were given, but this model was trained without frame conditioning "
                             "(model.frame_conditioning = false)")
        return z
    batch, _, frames = z.shape[:3]
    if (known_frames is None) != (known_mask is None):
        raise ValueError("frame conditioning needs both known_frames and known_mask, or neither")
    if known_mask is None:
        mask = z.new_zeros(batch, 1, frames, *z.shape[3:])
        return torch.cat([z, torch.zeros_like(z), mask], dim=1)
    if known_frames.shape != z.shape:
        raise ValueError(f"known_frames must have z's shape {tuple(z.shape)}; got {tuple(known_frames.shape)}")
    if known_mask.shape != (batch, frames):
        raise ValueError(f"known_mask must have shape ({batch}, {frames}); got {tuple(known_mask.shape)}")
    keep = known_mask.to(device=z.device, dtype=torch.bool)[:, None, :, None, None]
    frames_in = torch.where(keep, known_frames.to(z), torch.zeros((), dtype=z.dtype, device=z.device))  # +0, not -0
    mask = keep.to(z.dtype).expand(batch, 1, *z.shape[2:])
    return torch.cat([z, frames_in, mask], dim=1)
