"""Spatial and temporal self-attention for factorized video networks (spec B1, A10).

Activations travel through the U-Net as (B·F, C, H, W): frames folded into the batch, so that
1×3×3 convolutions are plain 2-D convolutions and spatial attention needs no reshaping of frames.
Temporal attention folds the spatial positions into the batch instead: (B·H·W, F, C).
Both go through `attention`, which picks between `F.scaled_dot_product_attention` and the explicit
product by sequence length (see there).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["SpatialAttention", "TemporalAttention", "RelativePositionBias", "temporal_attention_mask",
           "frame_attention_mask", "group_norm", "attention", "explicit_attention"]

# Longest sequence that takes the explicit product instead of the fused kernel. The fused CPU kernel
# processes queries in blocks of 32 or more, so shorter sequences waste most of each block. The thresholds are
# where benchmarks/attention.py found the fused kernel to overtake the explicit product, by pass and precision
# (benchmarks/RESULTS.md, "Attention kernels"). Explicit scores are at most 128 x 128 per head, so memory is no
# concern.
EXPLICIT_MAX_TOKENS_TRAIN_16BIT = 128
EXPLICIT_MAX_TOKENS_TRAIN_FP32 = 8
EXPLICIT_MAX_TOKENS_INFERENCE = 16


def _explicit(q: Tensor, training: bool) -> bool:
    if not training:
        limit = EXPLICIT_MAX_TOKENS_INFERENCE
    elif q.dtype in (torch.bfloat16, torch.float16):
        limit = EXPLICIT_MAX_TOKENS_TRAIN_16BIT
    else:
        limit = EXPLICIT_MAX_TOKENS_TRAIN_FP32
    return q.shape[-2] <= limit


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q kᵀ / √d + mask) v over the last two dimensions (tokens, head features), as
    `F.scaled_dot_product_attention`: a float mask is added to the scores, a boolean one says which may attend."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not _explicit(q, training):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return explicit_attention(q, k, v, mask)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """The same function as `attention`, always as the explicit product (no fused kernel)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1), v)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ max_groups that divides `channels`.

    Applied to (B·F, C, H, W) it normalises each frame on its own, which keeps frames independent
    outside temporal attention (the factorization and the joint-training mask rely on it).
    """
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _heads(channels: int, head_dim: int) -> int:
    if channels % head_dim:
        raise ValueError(f"attention channels ({channels}) must be a multiple of head_dim ({head_dim})")
    return channels // head_dim


class SpatialAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H·W positions of each frame, with a residual."""

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        self.heads = _heads(channels, head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B·F, C, H, W) -> same shape."""
        _, _, h, w = x.shape
        # Projections on (tokens, channels) keep each head's features contiguous, which lets
        # scaled_dot_product_attention take its fused kernel (on long sequences) instead of its slower math path.
        tokens = rearrange(self.norm(x), "n c h w -> n (h w) c")
        q, k, v = rearrange(self.qkv(tokens), "n hw (three heads d) -> three n heads hw d", three=3, heads=self.heads)
        y = rearrange(attention(q, k, v), "n heads hw d -> n hw (heads d)")
        return x + rearrange(self.out(y), "n (h w) c -> n c h w", h=h, w=w)


class RelativePositionBias(nn.Module):
    """A learned per-head bias over frame offsets j - i, clipped to [-max_distance, max_distance].

    Only offsets matter, never absolute frame indices, so the same weights serve any frame count
    and a clip shifted in time is processed identically. Initialised to zero (symmetric), i.e.
    the untrained model is equivariant to reversing time; training breaks the symmetry.
    """

    def __init__(self, heads: int, max_distance: int = 32):
        super().__init__()
        self.max_distance = max_distance
        self.bias = nn.Parameter(torch.zeros(heads, 2 * max_distance + 1))

    def forward(self, frames: int, device) -> Tensor:
        """Bias of shape (heads, F, F)."""
        pos = torch.arange(frames, device=device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.bias[:, offset]


def temporal_attention_mask(frame_mask: Tensor) -> Tensor:
    """Allowed temporal attention for joint image+video training (spec A10), shape (B, F, F).

    frame_mask (B, F): True for frames of the video clip, False for independent images.
    M[i, j] = True iff both i and j are video frames, or i == j.
    """
    video = frame_mask.bool()
    eye = torch.eye(frame_mask.shape[1], dtype=torch.bool, device=frame_mask.device)
    return (video[:, :, None] & video[:, None, :]) | eye[None]


def frame_attention_mask(frame_mask: Optional[Tensor], batch: int, frames: int) -> Optional[Tensor]:
    """Check a network's `frame_mask` (B, F) and turn it into the (B, F, F) mask of
    `temporal_attention_mask`, or None when every frame belongs to the clip (no masking needed)."""
    if frame_mask is None:
        return None
    if frame_mask.shape != (batch, frames):
        raise ValueError(f"frame_mask must have shape ({batch}, {frames}); got {tuple(frame_mask.shape)}")
    return None if bool(frame_mask.all()) else temporal_attention_mask(frame_mask)


class TemporalAttention(nn.Module):
    """Pre-norm multi-head self-attention over frames at each spatial position, with a residual."""

    def __init__(self, channels: int, head_dim: int, max_distance: int = 32):
        super().__init__()
        self.heads = _heads(channels, head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.position_bias = RelativePositionBias(self.heads, max_distance)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, frames: int, allowed: Optional[Tensor] = None) -> Tensor:
        """x: (B·F, C, H, W); allowed: optional (B, F, F) boolean mask from `temporal_attention_mask`."""
        _, _, h, w = x.shape
        tokens = rearrange(self.norm(x), "(b f) c h w -> b (h w) f c", f=frames)
        q, k, v = rearrange(self.qkv(tokens), "b hw f (three heads d) -> three b hw heads f d",
                            three=3, heads=self.heads)
        mask = self.position_bias(frames, x.device).to(q.dtype)  # (heads, F, F)
        if allowed is not None:
            blocked = torch.zeros(allowed.shape, dtype=q.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
            mask = (mask[None] + blocked[:, None])[:, None]  # (B, 1, heads, F, F)
        # q is (B, H·W, heads, F, d): the mask broadcasts over positions instead of being copied per position.
        y = rearrange(attention(q, k, v, mask), "b hw heads f d -> b hw f (heads d)")
        return x + rearrange(self.out(y), "b (h w) f c -> (b f) c h w", h=h, w=w)
