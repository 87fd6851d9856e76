"""Positions of spacetime patches as functions of the patch grid (spec C2): factorised sin-cos and 3-D RoPE.

Neither is a learned table: both are computed for the grid of the input at hand, so a transformer
trained on one frame count or frame size can be run on another (Sora's variable size, spec C4).
A grid is (F', H', W'), the number of patches along time, height and width; tokens are laid out
(F', S) with S = H'·W' in row-major (h, w) order, the layout `dit.patchify` produces.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .embeddings import sinusoidal_embedding

__all__ = ["sincos_position_embedding", "rope_angles", "rope_tables", "apply_rope"]

Grid = Tuple[int, int, int]


def _coordinates(grid: Grid, device) -> tuple[Tensor, Tensor, Tensor]:
    """Patch indices along t, h and w, each of shape (F', S)."""
    frames, height, width = grid
    t, h, w = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                             torch.arange(width, device=device), indexing="ij")
    return t.reshape(frames, -1), h.reshape(frames, -1), w.reshape(frames, -1)


def sincos_position_embedding(grid: Grid, dim: int, device=None) -> Tensor:
    """Factorised absolute positions, shape (F', S, dim): a 2-D spatial sin-cos (half the channels
    for h, half for w, as DiT's fixed embedding) plus a 1-D temporal sin-cos over all channels
    (the DiT/Latte form). `dim` must be a multiple of 4."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need hidden_dim divisible by 4; got {dim}")
    t, h, w = _coordinates(grid, device)
    spatial = torch.cat([sinusoidal_embedding(h[0], dim // 2), sinusoidal_embedding(w[0], dim // 2)], dim=-1)
    temporal = sinusoidal_embedding(t[:, 0], dim)
    return spatial[None] + temporal[:, None]


def _axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs given to (t, h, w): h and w a third each, t the rest (it gets any remainder)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D RoPE needs an even head dimension of at least 6; got {head_dim}")
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_angles(grid: Grid, head_dim: int, device=None, base: float = 10000.0) -> Tensor:
    """Rotation angles of 3-D RoPE, shape (F', S, head_dim / 2).

    Each head's channels are split into three rotary sub-blocks for t, h and w (spec C2 (b)); in
    each, pair i turns by position × base^(-i / pairs). Query and key at positions p and p' then
    score q·R(p' - p)k: only relative position matters, at any grid size.
    """
    angles = []
    for coords, pairs in zip(_coordinates(grid, device), _axis_pairs(head_dim)):
        freqs = base ** (-torch.arange(pairs, device=device, dtype=torch.float32) / pairs)
        angles.append(coords[..., None].float() * freqs)
    return torch.cat(angles, dim=-1)


def rope_tables(grid: Grid, head_dim: int, device=None) -> tuple[Tensor, Tensor]:
    """(cos, sin) of `rope_angles`, each (F', S, 1, head_dim / 2): broadcastable over (B, F', S, heads, ·)."""
    angles = rope_angles(grid, head_dim, device)[:, :, None]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + d/2) of x (..., d) by the angles whose cos and sin are given (..., d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast q may be bf16; keep it so for the attention kernel
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
