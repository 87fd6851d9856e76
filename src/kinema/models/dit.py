"""A spacetime diffusion transformer (DiT, Peebles & Xie 2022) for video (spec C1–C5).

The video (B, C, F, H, W) is cut into p_t × p_h × p_w spacetime patches (p_t = 1: per-frame patches,
Latte's better "uniform" embedding; p_t > 1: ViViT/Sora tubelets), each linearly embedded to a token.
Tokens travel as (B, F', S, D), F' = F / p_t, S = (H / p_h)(W / p_w), through DiT blocks with
adaLN-Zero conditioning, then a final adaLN + linear layer maps each token back to its patch.

Attention layouts (config `attention`):
- "interleaved": spatial blocks (the S tokens of one frame) alternate with temporal blocks (the F'
  tokens at one position): Latte's variant 1, best in its ablations (spec C3), and the default.
- "full": every block attends over all F'·S tokens (Sora-style, spec C4).
Positions (config `position`) are functions of the grid, never a learned table (spec C2):
- "sincos": factorised 2-D spatial + 1-D temporal sin-cos added to the tokens (DiT/Latte);
- "rope": 3-D rotary embedding of queries and keys (relative positions only).

The joint image+video `frame_mask` (spec A10) acts wherever attention crosses frames: in temporal
blocks and in full attention an image frame attends only to itself. Spatial blocks and the
per-token layers never mix frames. An image frame's sin-cos position is that of time 0 whatever
slot it occupies (RoPE, being relative, needs nothing), so it is denoised exactly as a one-frame clip.

Like the U-Net, the network knows nothing of noise schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import attention, frame_attention_mask
from .embeddings import ClassEmbedding, NoiseLevelEmbedding, TextPooling, conditioning_embedding
from .known_frames import input_channels, with_known_frames
from .positions import apply_rope, rope_tables, sincos_position_embedding

__all__ = ["DiTConfig", "DiT", "DIT_PRESETS", "patchify", "unpatchify", "patch_grid"]

NOISE_FEATURES = 256  # sinusoidal features of the noise level before its MLP (DiT's frequency_embedding_size)


@dataclass
class DiTConfig:
    """Architecture of the spacetime DiT. `depth` counts blocks; interleaved layouts use it in (spatial, temporal)
    pairs."""

    backbone: str = "dit"  # tells a RunConfig's model section which config class it holds
    in_channels: int = 3
    out_channels: Optional[int] = None  # default: in_channels (2 × for the "both" parameterization)
    hidden_dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: Tuple[int, int, int] = (1, 2, 2)  # (p_t, p_h, p_w)
    attention: str = "interleaved"  # interleaved | full
    position: str = "sincos"  # sincos | rope
    num_classes: int = 0  # 0: no class conditioning
    text_dim: int = 0  # 0: no text conditioning
    frame_conditioning: bool = False  # known frames and their mask as extra input channels (models/known_frames.py)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.backbone != "dit":
            raise ValueError(f"a DiTConfig has backbone 'dit'; got {self.backbone!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers (p_t, p_h, p_w); got {self.patch_size}")
        for name in ("in_channels", "hidden_dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("num_classes", "text_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more; got {getattr(self, name)}")
        if self.depth > 1024:  # a bound against typos: the module count grows with it
            raise ValueError(f"depth must be at most 1024; got {self.depth}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive; got {self.mlp_ratio}")
        if self.attention not in ("interleaved", "full"):
            raise ValueError(f"attention must be 'interleaved' or 'full'; got {self.attention!r}")
        if self.position not in ("sincos", "rope"):
            raise ValueError(f"position must be 'sincos' or 'rope'; got {self.position!r}")
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be a multiple of heads ({self.heads})")
        if self.attention == "interleaved" and self.depth % 2:
            raise ValueError(f"interleaved attention needs an even depth (spatial, temporal pairs); got {self.depth}")
        if self.position == "sincos" and self.hidden_dim % 4:
            raise ValueError(f"sin-cos positions need hidden_dim divisible by 4; got {self.hidden_dim}")
        if self.position == "rope" and (self.head_dim % 2 or self.head_dim < 6):
            raise ValueError(f"3-D RoPE needs an even head dimension (hidden_dim / heads) ≥ 6; got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.heads

    def summary(self) -> str:
        p_t, p_h, p_w = self.patch_size
        return (f"dit width {self.hidden_dim} depth {self.depth} {self.attention} {self.position} "
                f"patch {p_t}x{p_h}x{p_w}")


def _size(hidden_dim: int, depth: int, heads: int, patch: int) -> DiTConfig:
    return DiTConfig(hidden_dim=hidden_dim, depth=depth, heads=heads, patch_size=(1, patch, patch))


DIT_PRESETS = {
    # Trains on 2 CPU cores like the U-Net `tiny`: 8 frames of 32×32 Moving Digits, 2×2 per-frame patches.
    "dit-tiny": DiTConfig(hidden_dim=128, depth=8, heads=4, patch_size=(1, 2, 2)),
    # The DiT paper's sizes (layers / hidden / heads, spec C1), with per-frame 2×2 patches. Interleaved
    # layouts split the layers into spatial/temporal pairs, as Latte-XL does with DiT-XL's 28.
    "dit-s-2": _size(384, 12, 6, 2),
    "dit-b-2": _size(768, 12, 12, 2),
    "dit-l-2": _size(1024, 24, 16, 2),
    "dit-xl-2": _size(1152, 28, 16, 2),
}


def patch_grid(shape: Tuple[int, ...], patch_size: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """(F', H', W') for a video of shape (B, C, F, H, W); an error names any dimension that does not divide."""
    grid = []
    for name, size, patch in zip(("frames F", "height H", "width W"), shape[2:], patch_size):
        if size % patch:
            raise ValueError(f"{name} = {size} is not a multiple of the patch size {patch} along it "
                             f"(patch_size = {tuple(patch_size)} as (p_t, p_h, p_w))")
        grid.append(size // patch)
    return tuple(grid)


def patchify(x: Tensor, patch_size: Tuple[int, int, int]) -> Tensor:
    """(B, C, F, H, W) -> (B, F', S, p_t·p_h·p_w·C) flattened spacetime patches, S = H'·W' in row-major order."""
    patch_grid(x.shape, patch_size)
    p_t, p_h, p_w = patch_size
    return rearrange(x, "b c (f pt) (h ph) (w pw) -> b f (h w) (pt ph pw c)", pt=p_t, ph=p_h, pw=p_w)


def unpatchify(tokens: Tensor, patch_size: Tuple[int, int, int], grid: Tuple[int, int, int]) -> Tensor:
    """Inverse of `patchify`: (B, F', S, p_t·p_h·p_w·C) on the patch grid (F', H', W') -> (B, C, F, H, W)."""
    p_t, p_h, p_w = patch_size
    return rearrange(tokens, "b f (h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)",
                     h=grid[1], w=grid[2], pt=p_t, ph=p_h, pw=p_w)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


# Token groups each attention layout attends within, as einops patterns over (B, F', S, heads, d).
_LAYOUTS = {"spatial": "(b f) h s d", "temporal": "b s h f d", "full": "b h (f s) d"}


class Attention(nn.Module):
    """Multi-head self-attention over one layout's token groups (`attention` picks the kernel)."""

    def __init__(self, dim: int, heads: int, layout: str):
        super().__init__()
        self.heads, self.layout = heads, layout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _mask(self, allowed: Optional[Tensor], spatial: int) -> Optional[Tensor]:
        """The frame mask (B, F', F') in this layout's shape; spatial attention never crosses frames."""
        if allowed is None or self.layout == "spatial":
            return None
        if self.layout == "temporal":
            return allowed[:, None, None]  # (B, 1, 1, F', F'): broadcast over positions and heads
        return repeat(allowed, "b f g -> b 1 (f s) (g t)", s=spatial, t=spatial)

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]], allowed: Optional[Tensor]) -> Tensor:
        """x: (B, F', S, D); rope: (cos, sin) from `rope_tables` or None; allowed: (B, F', F') bool or None."""
        batch, frames, spatial, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b f s (three h d) -> three b f s h d", three=3, h=self.heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        layout = _LAYOUTS[self.layout]
        q, k, v = (rearrange(t, f"b f s h d -> {layout}") for t in (q, k, v))
        y = attention(q, k, v, self._mask(allowed, spatial))
        return self.proj(rearrange(y, f"{layout} -> b f s (h d)", b=batch, f=frames, s=spatial))


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each shifted, scaled and gated by adaLN-Zero (spec C1).

    The modulation is zero-initialised, so the gates start at 0 and the block is the identity.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layout: str):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, layout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor, rope: Optional[Tuple[Tensor, Tensor]], allowed: Optional[Tensor]) -> Tensor:
        """x: (B, F', S, D); c: (B, D), SiLU already applied."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(_modulate(self.norm1(x), shift1, scale1), rope, allowed)
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its patch's output values; both zero-initialised."""

    def __init__(self, dim: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_values)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)[:, None, None].chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Spacetime diffusion transformer. Input and output (B, C, F, H, W); F, H, W multiples of the patch size."""

    def __init__(self, config: Optional[DiTConfig] = None, **overrides):
        super().__init__()
        cfg = replace(config if config is not None else DiTConfig(), **overrides)
        self.config = cfg
        dim, volume = cfg.hidden_dim, cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
        in_channels = input_channels(cfg.in_channels, cfg.frame_conditioning)
        self.patch_embedding = nn.Linear(volume * in_channels, dim)  # = Conv3d(kernel = stride = patch)
        self.noise_embedding = NoiseLevelEmbedding(NOISE_FEATURES, dim, mlp_layers=2)
        self.class_embedding = ClassEmbedding(cfg.num_classes, dim) if cfg.num_classes > 0 else None
        self.text_pooling = TextPooling(cfg.text_dim, dim) if cfg.text_dim > 0 else None
        layouts = ["spatial", "temporal"] * (cfg.depth // 2) if cfg.attention == "interleaved" else ["full"] * cfg.depth
        self.blocks = nn.ModuleList([DiTBlock(dim, cfg.heads, cfg.mlp_ratio, layout) for layout in layouts])
        self.final = FinalLayer(dim, volume * (cfg.out_channels or cfg.in_channels))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, N(0, 0.02) noise MLP and class table, and the
        adaLN modulations and output layer zeroed, so that every block starts as the identity and
        the untrained network outputs zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.noise_embedding.mlp:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        if self.class_embedding is not None:
            nn.init.normal_(self.class_embedding.table.weight, std=0.02)
        for layer in [block.modulation for block in self.blocks] + [self.final.modulation, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.config.frame_conditioning:  # known-frame channels start silent, as in the U-Net
            channels = input_channels(self.config.in_channels, True)
            extra = torch.arange(self.patch_embedding.in_features) % channels >= self.config.in_channels
            with torch.no_grad():  # patchify flattens (p_t p_h p_w c): the channel is the fastest index
                self.patch_embedding.weight[:, extra] = 0

    @property
    def null_class(self) -> Optional[int]:
        """Label of the learned "no class" embedding (classifier-free guidance), or None."""
        return self.class_embedding.null_class if self.class_embedding is not None else None

    def _run(self, block: DiTBlock, x: Tensor, c: Tensor, rope: Optional[Tuple[Tensor, Tensor]],
             allowed: Optional[Tensor]) -> Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, rope, allowed, use_reentrant=False)
        return block(x, c, rope, allowed)

    def forward(self, z: Tensor, noise_level: Tensor, *, labels: Optional[Tensor] = None,
                text: Optional[Tensor] = None, text_mask: Optional[Tensor] = None,
                frame_mask: Optional[Tensor] = None, known_frames: Optional[Tensor] = None,
                known_mask: Optional[Tensor] = None) -> Tensor:
        """z: (B, C, F, H, W); noise_level: (B,) in [0, 1]; labels: (B,) int; text: (B, D) or (B, L, D);
        frame_mask: (B, F) bool, True = frame of the video clip, False = independent image (spec A10);
        known_frames (B, C, F, H, W) and known_mask (B, F) bool: frame conditioning (models/known_frames.py)."""
        cfg = self.config
        if z.ndim != 5:
            raise ValueError(f"z must have shape (B, C, F, H, W); got {tuple(z.shape)}")
        batch, channels, frames = z.shape[:3]
        if channels != cfg.in_channels:
            raise ValueError(f"z has {channels} channels but the model expects in_channels={cfg.in_channels}")
        grid = patch_grid(z.shape, cfg.patch_size)
        allowed = frame_attention_mask(frame_mask, batch, frames)
        if allowed is not None and cfg.patch_size[0] > 1:
            raise ValueError(f"frame_mask with image frames needs per-frame patches (p_t = 1): a tubelet of "
                             f"{cfg.patch_size[0]} frames would mix an image with its neighbours")

        c = F.silu(conditioning_embedding(noise_level, batch, z.device, self.noise_embedding, self.class_embedding,
                                          self.text_pooling, labels, text, text_mask))
        z_in = with_known_frames(z, cfg.frame_conditioning, known_frames, known_mask)
        x = self.patch_embedding(patchify(z_in, cfg.patch_size))  # (B, F', S, D)
        rope = None
        if cfg.position == "sincos":
            positions = sincos_position_embedding(grid, cfg.hidden_dim, z.device)  # (F', S, D)
            if allowed is not None:  # an image frame sits at time 0, as in a one-frame clip, whatever its slot
                positions = torch.where(frame_mask[:, :, None, None].to(z.device), positions, positions[:1])
            x = x + positions.to(x.dtype)
        else:
            rope = rope_tables(grid, cfg.head_dim, z.device)
        for block in self.blocks:
            x = self._run(block, x, c, rope, allowed)
        return unpatchify(self.final(x, c), cfg.patch_size, grid)
