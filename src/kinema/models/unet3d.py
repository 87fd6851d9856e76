"""The VDM 3D U-Net, factorized over space and time (Ho et al. 2022; spec B1).

Per level: [ResBlock(1×3×3 convs, + embedding) → (TemporalConv) → (SpatialAttention → TemporalAttention)] × blocks,
then a spatial-only 2× downsample; the middle is ResBlock → attention pair → ResBlock; the up path
mirrors it with skip concatenations (blocks + 1 per level, as in DDPM). The frame count never changes.

Implementation choices the paper leaves open (spec B1), flagged here:
- GroupNorm per frame and SiLU; the embedding enters each ResBlock as a scale and shift (FiLM).
- Relative positions in temporal attention: a learned per-head bias over clipped frame offsets.
- Text conditioning: attention pooling added to the embedding (see `TextPooling`).
- Optional (`temporal_conv` > 0): a residual convolution over frames after every ResBlock, at every
  level including full resolution where there is no attention (Make-A-Video's pseudo-3D convolution,
  Imagen Video's super-resolution models); see `TemporalConv`.

The network knows nothing of noise schedules: it maps (z, noise_level, conditioning, frame_mask)
to an output of z's shape (twice the channels for the "both" parameterization).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialAttention, TemporalAttention, frame_attention_mask, group_norm
from .embeddings import ClassEmbedding, NoiseLevelEmbedding, TextPooling, conditioning_embedding
from .known_frames import input_channels, with_known_frames

__all__ = ["UNet3DConfig", "UNet3D", "UNET_PRESETS"]


@dataclass
class UNet3DConfig:
    """Architecture of the 3D U-Net. Levels are counted from full resolution (level 0)."""

    backbone: str = "unet3d"  # tells a RunConfig's model section which config class it holds
    in_channels: int = 3
    out_channels: Optional[int] = None  # default: in_channels (2 × for the "both" parameterization)
    base_channels: int = 64
    channel_mults: Tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 2
    attention_levels: Tuple[int, ...] = (1, 2)  # levels with spatial + temporal attention; the middle always has it
    head_dim: int = 32
    dropout: float = 0.0
    emb_dim: Optional[int] = None  # default: 4 × base_channels
    emb_mlp_layers: int = 2
    temporal_attention: bool = True  # False: a per-frame image model (for ablations and tests)
    temporal_conv: int = 0  # kernel size (odd) of a residual conv over frames after every ResBlock; 0: none
    max_relative_distance: int = 32
    num_classes: int = 0  # 0: no class conditioning
    text_dim: int = 0  # 0: no text conditioning
    frame_conditioning: bool = False  # known frames and their mask as extra input channels (models/known_frames.py)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_levels = tuple(int(level) for level in self.attention_levels)
        if self.backbone != "unet3d":
            raise ValueError(f"a UNet3DConfig has backbone 'unet3d'; got {self.backbone!r}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be non-empty positive integers; got {self.channel_mults}")
        for level in self.attention_levels:
            if not 0 <= level < len(self.channel_mults):
                raise ValueError(f"attention_levels entry {level} is not a level of channel_mults {self.channel_mults}")
        if self.temporal_conv < 0 or (self.temporal_conv and self.temporal_conv % 2 == 0):
            raise ValueError(f"temporal_conv must be 0 (none) or an odd kernel size; got {self.temporal_conv}")
        for name in ("in_channels", "base_channels", "blocks_per_level", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("max_relative_distance", "num_classes", "text_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more; got {getattr(self, name)}")
        if self.emb_dim is not None and self.emb_dim < 1:
            raise ValueError(f"emb_dim must be positive (or unset: 4 × base_channels); got {self.emb_dim}")
        # bounds against typos: the module count grows with these, before any parameter is allocated
        if self.blocks_per_level > 64 or len(self.channel_mults) > 16:
            raise ValueError(f"blocks_per_level must be at most 64 and channel_mults at most 16 levels; got "
                             f"{self.blocks_per_level} and {len(self.channel_mults)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {self.dropout}")
        for level, mult in enumerate(self.channel_mults):
            attends = level in self.attention_levels or level == len(self.channel_mults) - 1
            if attends and (self.base_channels * mult) % self.head_dim:
                raise ValueError(f"channels at level {level} ({self.base_channels * mult}) "
                                 f"must be a multiple of head_dim ({self.head_dim})")

    def summary(self) -> str:
        conv = f" temporal_conv={self.temporal_conv}" if self.temporal_conv else ""
        return f"unet3d {self.base_channels}x{list(self.channel_mults)}{conv}"


UNET_PRESETS = {
    # Trains on 2 CPU cores: 8 frames of 32×32 Moving Digits in minutes.
    "tiny": UNet3DConfig(base_channels=32, channel_mults=(1, 2, 4), blocks_per_level=1, attention_levels=(1, 2),
                         head_dim=32),
    "small": UNet3DConfig(base_channels=64, channel_mults=(1, 2, 4), blocks_per_level=2, attention_levels=(1, 2),
                          head_dim=32),
    # VDM appendix A (spec B2), 16×64×64 inputs: attention at 32, 16, 8 = levels 1, 2, 3.
    "vdm-ucf101": UNet3DConfig(base_channels=256, channel_mults=(1, 2, 4, 8), blocks_per_level=2,
                               attention_levels=(1, 2, 3), head_dim=64, dropout=0.1, emb_dim=1024, emb_mlp_layers=4),
    "vdm-bair": UNet3DConfig(base_channels=128, channel_mults=(1, 2, 3, 4), blocks_per_level=3,
                             attention_levels=(1, 2, 3), head_dim=64, dropout=0.1, emb_dim=1024, emb_mlp_layers=2),
    "vdm-kinetics": UNet3DConfig(base_channels=256, channel_mults=(1, 2, 4, 8), blocks_per_level=2,
                                 attention_levels=(1, 2, 3), head_dim=64, dropout=0.1, emb_dim=1024, emb_mlp_layers=2),
    # 9×128×128 text-to-video model: attention at 32, 16, 8 = levels 2, 3, 4.
    "vdm-t2v-128": UNet3DConfig(base_channels=128, channel_mults=(1, 2, 4, 8, 16), blocks_per_level=2,
                                attention_levels=(2, 3, 4), head_dim=128, emb_dim=1024, emb_mlp_layers=4),
}


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 1×3×3 conv → FiLM(embedding) → GroupNorm → SiLU → dropout → 1×3×3 conv, + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # every block starts as (a projection of) the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B·F, C, H, W); emb: (B·F, E) (SiLU already applied)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class TemporalConv(nn.Module):
    """x + Conv1d_over_frames(SiLU(GroupNorm(x))) at every pixel, zero-initialised (starts as the identity).

    Attention mixes frames only where the U-Net attends (the coarse levels); this mixes neighbouring
    frames at every level, so fine detail such as a digit's strokes is shared between frames. Frames
    marked as independent images (`frame_mask` False, joint training) neither see nor are seen by
    other frames: their inputs are zeroed for the others and they keep only the kernel's centre tap.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, frames: int, frame_mask: Optional[Tensor] = None) -> Tensor:
        """x: (B·F, C, H, W); frame_mask: optional (B, F) bool, False = independent image."""
        _, _, height, width = x.shape
        h = rearrange(F.silu(self.norm(x)), "(b f) c h w -> (b h w) c f", f=frames)
        if frame_mask is None:
            h = self.conv(h)
        else:
            keep = frame_mask.repeat_interleave(height * width, dim=0)[:, None, :]  # (B·H·W, 1, F)
            centre = self.conv.kernel_size[0] // 2
            alone = F.conv1d(h, self.conv.weight[:, :, centre:centre + 1], self.conv.bias)
            h = torch.where(keep, self.conv(h * keep.to(h.dtype)), alone)
        return x + rearrange(h, "(b h w) c f -> (b f) c h w", h=height, w=width)


class AttentionPair(nn.Module):
    """Spatial attention followed by temporal attention (VDM: one after every spatial block)."""

    def __init__(self, channels: int, head_dim: int, temporal: bool, max_distance: int):
        super().__init__()
        self.spatial = SpatialAttention(channels, head_dim)
        self.temporal = TemporalAttention(channels, head_dim, max_distance) if temporal else None

    def forward(self, x: Tensor, frames: int, allowed: Optional[Tensor]) -> Tensor:
        x = self.spatial(x)
        return self.temporal(x, frames, allowed) if self.temporal is not None else x


class Level(nn.Module):
    """A ResBlock with its optional temporal conv and attention pair: the unit of gradient checkpointing."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNet3DConfig, emb_dim: int, attend: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout)
        self.temporal_conv = TemporalConv(out_ch, cfg.temporal_conv) if cfg.temporal_conv else None
        self.attn = (AttentionPair(out_ch, cfg.head_dim, cfg.temporal_attention, cfg.max_relative_distance)
                     if attend else None)

    def forward(self, x: Tensor, emb: Tensor, frames: int, allowed: Optional[Tensor],
                frame_mask: Optional[Tensor] = None) -> Tensor:
        x = self.res(x, emb)
        if self.temporal_conv is not None:
            x = self.temporal_conv(x, frames, frame_mask)
        return self.attn(x, frames, allowed) if self.attn is not None else x


class UNet3D(nn.Module):
    """Factorized space-time U-Net. Input and output (B, C, F, H, W); H and W divisible by 2^(levels-1)."""

    def __init__(self, config: Optional[UNet3DConfig] = None, **overrides):
        super().__init__()
        cfg = replace(config if config is not None else UNet3DConfig(), **overrides)
        self.config = cfg
        ch = [cfg.base_channels * m for m in cfg.channel_mults]
        emb_dim = cfg.emb_dim or 4 * cfg.base_channels
        last = len(ch) - 1

        self.noise_embedding = NoiseLevelEmbedding(cfg.base_channels, emb_dim, cfg.emb_mlp_layers)
        self.class_embedding = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self.text_pooling = TextPooling(cfg.text_dim, emb_dim) if cfg.text_dim > 0 else None
        self.input_conv = nn.Conv2d(input_channels(cfg.in_channels, cfg.frame_conditioning), ch[0], 3, padding=1)
        with torch.no_grad():  # known-frame channels start silent: at initialisation the condition changes nothing
            self.input_conv.weight[:, cfg.in_channels:] = 0

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_ch, cur = [ch[0]], ch[0]
        for level, out in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                self.down.append(Level(cur, out, cfg, emb_dim, level in cfg.attention_levels))
                cur = out
                skip_ch.append(cur)
            if level != last:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skip_ch.append(cur)

        self.middle = nn.ModuleList([Level(cur, cur, cfg, emb_dim, True), Level(cur, cur, cfg, emb_dim, False)])

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(Level(cur + skip_ch.pop(), ch[level], cfg, emb_dim, level in cfg.attention_levels))
                cur = ch[level]
            if level != 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))

        self.output_norm = group_norm(cur)
        self.output_conv = nn.Conv2d(cur, cfg.out_channels or cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    @property
    def null_class(self) -> Optional[int]:
        """Label of the learned "no class" embedding (classifier-free guidance), or None."""
        return self.class_embedding.null_class if self.class_embedding is not None else None

    def _run(self, block: Level, x: Tensor, emb: Tensor, frames: int, allowed: Optional[Tensor],
             frame_mask: Optional[Tensor]) -> Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, emb, frames, allowed, frame_mask, use_reentrant=False)
        return block(x, emb, frames, allowed, frame_mask)

    def forward(self, z: Tensor, noise_level: Tensor, *, labels: Optional[Tensor] = None,
                text: Optional[Tensor] = None, text_mask: Optional[Tensor] = None,
                frame_mask: Optional[Tensor] = None, known_frames: Optional[Tensor] = None,
                known_mask: Optional[Tensor] = None) -> Tensor:
        """z: (B, C, F, H, W); noise_level: (B,) in [0, 1]; labels: (B,) int; text: (B, D) or (B, L, D);
        frame_mask: (B, F) bool, True = frame of the video clip, False = independent image (spec A10);
        known_frames (B, C, F, H, W) and known_mask (B, F) bool: frame conditioning (models/known_frames.py)."""
        if z.ndim != 5:
            raise ValueError(f"z must have shape (B, C, F, H, W); got {tuple(z.shape)}")
        batch, channels, frames, height, width = z.shape
        if channels != self.config.in_channels:
            raise ValueError(f"z has {channels} channels but the model expects in_channels={self.config.in_channels}")
        factor = 2 ** (len(self.config.channel_mults) - 1)
        if height % factor or width % factor:
            raise ValueError(f"frame size {height}×{width} must be divisible by {factor} "
                             f"for {len(self.config.channel_mults)} levels")
        allowed = frame_attention_mask(frame_mask, batch, frames)
        images = frame_mask if allowed is not None else None  # some frames are independent images

        emb = conditioning_embedding(noise_level, batch, z.device, self.noise_embedding, self.class_embedding,
                                     self.text_pooling, labels, text, text_mask)
        emb = F.silu(emb).repeat_interleave(frames, dim=0)  # one row per frame: (B·F, E)

        z_in = with_known_frames(z, self.config.frame_conditioning, known_frames, known_mask)
        h = self.input_conv(rearrange(z_in, "b c f h w -> (b f) c h w"))
        skips = [h]
        blocks = iter(self.down)
        for level in range(len(self.config.channel_mults)):
            for _ in range(self.config.blocks_per_level):
                h = self._run(next(blocks), h, emb, frames, allowed, images)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for block in self.middle:
            h = self._run(block, h, emb, frames, allowed, images)
        blocks = iter(self.up)
        for i, level in enumerate(reversed(range(len(self.config.channel_mults)))):
            for _ in range(self.config.blocks_per_level + 1):
                h = self._run(next(blocks), torch.cat([h, skips.pop()], dim=1), emb, frames, allowed, images)
            if level != 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.output_conv(F.silu(self.output_norm(h)))
        return rearrange(out, "(b f) c h w -> b c f h w", b=batch)
