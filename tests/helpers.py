"""Shared test helpers."""

import torch
from torch import nn


def randomize_zero_inits(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every all-zero parameter (zero-initialised output layers, position biases) random values.

    At initialisation those layers make temporal attention contribute nothing, which would make
    every interaction test pass vacuously.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def moving_glyph_clips(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """Moving-Digits-like clips in [-1, 1]: a random 5×5 glyph bouncing with constant velocity."""
    g = torch.Generator().manual_seed(seed)
    clips = -torch.ones(batch, 1, frames, size, size)
    for b in range(batch):
        glyph = (torch.rand(5, 5, generator=g) > 0.45).float() * 2 - 1
        pos = torch.randint(0, size - 5, (2,), generator=g)
        vel = torch.randint(-2, 3, (2,), generator=g)
        for f in range(frames):
            for d in range(2):
                if not 0 <= pos[d] + vel[d] <= size - 5:
                    vel[d] = -vel[d]
            pos = pos + vel if f else pos
            y, x = int(pos[0]), int(pos[1])
            clips[b, 0, f, y:y + 5, x:x + 5] = torch.maximum(clips[b, 0, f, y:y + 5, x:x + 5], glyph)
    return clips
