"""The Gaussian noise of the diffusion process, optionally correlated across frames (spec A1).

`FrameNoise(correlation=ρ)` draws ε_f = √ρ · ε_shared + √(1−ρ) · ε_f for every frame f of a video
(B, C, F, H, W): each element is still N(0, 1), and any two frames of one video have correlation ρ.
This is the "mixed" noise model of Ge et al., "Preserve Your Own Correlation" (2023), whose α relates
as ρ = α² / (1 + α²). ρ = 0 is plain independent noise, drawn exactly as `torch.randn` would.

The forward process becomes q(z_t | x) = N(α_t x, σ_t² Σ) with Σ the frame correlation, the same Σ at
every t. Everything linear in ε (x̂ from v or ε, DDIM) is unchanged; what must change is *every* draw:
training's ε, the sampler's initial z_1, the fresh noise of ancestral and η > 0 DDIM steps (the
posterior q(z_s | z_t, x) has covariance σ̃² Σ), and the Langevin corrector's noise (with Σ as its
preconditioner, the drift −½δσ ε̂ stays as it is). Samplers take it as `noise_sampler`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["FrameNoise", "NoiseSampler", "randn_like"]

# The contract every consumer of fresh noise takes: noise_sampler(like, generator) -> noise of like's shape.
NoiseSampler = Callable[[Tensor, Optional[torch.Generator]], Tensor]


def randn_like(z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Independent standard normal noise of z's shape, device and dtype: the default `NoiseSampler`."""
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


class FrameNoise:
    """Noise for video tensors (B, C, F, H, W) whose frames share a component with weight √ρ."""

    def __init__(self, correlation: float = 0.0, frame_dim: int = 2):
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"frame noise correlation must lie in [0, 1); got {correlation}")
        self.correlation, self.frame_dim = float(correlation), frame_dim

    def __call__(self, shape: Sequence[int], *, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
        shape = tuple(shape)
        independent = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if self.correlation == 0.0:
            return independent
        if len(shape) <= self.frame_dim:
            raise ValueError(f"frame noise needs a frame axis {self.frame_dim}; got shape {shape}")
        shared_shape = shape[:self.frame_dim] + (1,) + shape[self.frame_dim + 1:]
        shared = torch.randn(shared_shape, generator=generator, device=device, dtype=dtype)
        return math.sqrt(self.correlation) * shared + math.sqrt(1.0 - self.correlation) * independent

    def like(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Noise of z's shape, device and dtype: the samplers' `noise_sampler` contract."""
        return self(z.shape, generator=generator, device=z.device, dtype=z.dtype)

    def __repr__(self) -> str:
        return f"FrameNoise(correlation={self.correlation})"
