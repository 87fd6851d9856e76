"""A convolutional video autoencoder with a KL-regularised latent, for latent video diffusion (issue 22).

Layout (Stable Diffusion's VAE, made causal in time as in CogVideoX, Wan and LTX-Video):
- The encoder has one level per `channel_mults` entry; every level after the first halves height and width (a
  stride-2 1×3×3 conv), so the spatial factor is 2^(levels − 1). Levels listed in `temporal_levels` also halve
  time, causally: the first frame is encoded on its own and each later latent frame covers two input frames.
- Every convolution is causal in time (3×3×3 with the time axis padded on the left by repeating the first frame),
  and normalisation is per frame (GroupNorm over each frame's channels and pixels), so a latent frame depends on
  input frames at or before its own and never after: an image is a 1-frame video, and the first latent frame is
  the first frame's alone.
- The latent is a diagonal Gaussian (mean, log-variance: `latent_channels` each); the decoder mirrors the encoder
  and sees a draw during training, the mean when encoding for diffusion (`encode`).

Frames. With a temporal factor r = 2^len(temporal_levels), F frames give 1 + ⌈(F − 1) / r⌉ latent frames: the
clip is padded at its end by repeating its last frame to 1 + r·k frames (the padding comes after every real frame,
so by causality only the last latent frame sees it), latent frame 0 is frame 0, and latent frame j ≥ 1 covers frames
r(j − 1) + 1 … rj (`latent_frames`, `frames_of_latent`). `decode(latent, frames=F)` drops the padding again.

Networks know nothing of noise schedules; this one does not even take a noise level. Its loss (reconstruction
plus the KL term) is `kinema.diffusion.losses.autoencoder_loss`; training is `kinema train` with an autoencoder
model section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import group_norm

__all__ = ["AutoencoderConfig", "VideoAutoencoder", "AUTOENCODER_PRESETS", "Posterior", "latent_frames",
           "latent_shape", "frames_of_latent", "known_latents"]

LOGVAR_RANGE = (-30.0, 20.0)  # the clamp of the encoder's log-variance (Stable Diffusion's), against exp overflow


@dataclass
class AutoencoderConfig:
    """Architecture of the video autoencoder. Levels are counted from full resolution (level 0)."""

    backbone: str = "autoencoder"  # tells a RunConfig's model section which config class it holds
    in_channels: int = 3
    base_channels: int = 32
    channel_mults: Tuple[int, ...] = (1, 2, 4)  # one level each; every level after the first halves H and W
    temporal_levels: Tuple[int, ...] = ()  # levels (≥ 1) that also halve time, causally; () keeps every frame
    blocks_per_level: int = 1
    latent_channels: int = 4

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.temporal_levels = tuple(sorted(int(level) for level in self.temporal_levels))
        if self.backbone != "autoencoder":
            raise ValueError(f"an AutoencoderConfig has backbone 'autoencoder'; got {self.backbone!r}")
        if not self.channel_mults or min(self.channel_mults) < 1 or len(self.channel_mults) > 8:
            raise ValueError(f"channel_mults must be 1 to 8 positive integers; got {self.channel_mults}")
        for level in self.temporal_levels:
            if not 1 <= level < len(self.channel_mults):
                raise ValueError(f"temporal_levels entry {level} is not a down-sampling level of channel_mults "
                                 f"{self.channel_mults} (levels 1 to {len(self.channel_mults) - 1})")
        if len(set(self.temporal_levels)) != len(self.temporal_levels):
            raise ValueError(f"temporal_levels has a level twice: {self.temporal_levels}")
        for name in ("in_channels", "base_channels", "blocks_per_level", "latent_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.blocks_per_level > 16:
            raise ValueError(f"blocks_per_level must be at most 16; got {self.blocks_per_level}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** len(self.temporal_levels)

    def summary(self) -> str:
        time = f" t/{self.temporal_factor}" if self.temporal_levels else ""
        return (f"autoencoder {self.base_channels}x{list(self.channel_mults)} ×{self.spatial_factor}{time} "
                f"→ {self.latent_channels} ch")


AUTOENCODER_PRESETS = {
    # 4× spatial, no temporal compression: 16×16 Moving Digits → 4×4 latents, 64×64 → 16×16
    "ae-tiny": AutoencoderConfig(base_channels=16, channel_mults=(1, 2, 4), latent_channels=4),
    # 8× spatial, 2× temporal (the first frame alone): 9 frames of 64×64 → 5 latent frames of 8×8
    "ae-tiny-t2": AutoencoderConfig(base_channels=32, channel_mults=(1, 2, 2, 4), temporal_levels=(3,),
                                    latent_channels=8),
}


def latent_frames(frames: int, factor: int) -> int:
    """Latent frames of a clip of `frames` frames at temporal factor `factor`: 1 + ⌈(frames − 1) / factor⌉."""
    if frames < 1:
        raise ValueError(f"a clip has at least one frame; got {frames}")
    return 1 + -(-(frames - 1) // factor)


def latent_shape(cfg: AutoencoderConfig, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The latent's shape for an input of `shape` (B, C, F, H, W); an error naming the size at fault."""
    b, c, frames, h, w = shape
    s = cfg.spatial_factor
    if c != cfg.in_channels:
        raise ValueError(f"the autoencoder takes {cfg.in_channels} channels; got a video of {c}")
    if h % s or w % s:
        raise ValueError(f"frames of {h}×{w} are not a multiple of the autoencoder's spatial factor {s}")
    return b, cfg.latent_channels, latent_frames(frames, cfg.temporal_factor), h // s, w // s


def frames_of_latent(index: int, factor: int) -> range:
    """The input frames latent frame `index` covers: frame 0 alone for index 0, else frames factor·(index − 1) + 1
    to factor·index."""
    return range(0, 1) if index == 0 else range(factor * (index - 1) + 1, factor * index + 1)


def known_latents(known: Tensor, factor: int) -> Tensor:
    """(F',) which latent frames a clip's known frames (F,) determine: latent frame j when every frame up to the
    last it covers is known (the encoder is causal, so latent j depends on frames 0 … factor·j and no later)."""
    known = torch.as_tensor(known, dtype=torch.bool)
    count = latent_frames(len(known), factor)
    prefix = int(known.long().cumprod(0).sum())  # frames 0 … prefix − 1 are known
    return torch.tensor([frames_of_latent(j, factor)[-1] < prefix for j in range(count)])


class Posterior(NamedTuple):
    """The encoder's diagonal Gaussian over latents, (B, latent_channels, F', H', W') each."""

    mean: Tensor
    logvar: Tensor

    def sample(self, noise: Tensor) -> Tensor:
        return self.mean + torch.exp(0.5 * self.logvar) * noise

class CausalConv3d(nn.Module):
    """A k×3×3 convolution whose output frame f sees input frames f − k + 1 … f: time is padded on the left by
    repeating the first frame (so frame 0's output depends on frame 0 alone), space by zeros."""

    def __init__(self, in_ch: int, out_ch: int, time_kernel: int = 3):
        super().__init__()
        self.pad = time_kernel - 1
        self.conv = nn.Conv3d(in_ch, out_ch, (time_kernel, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.pad, -1, -1), x], dim=2)
        return self.conv(x)


class FrameNorm(nn.Module):
    """GroupNorm of each frame on its own: statistics across frames would leak later frames into earlier ones."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        y = self.norm(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", f=frames)


class ResBlock(nn.Module):
    """FrameNorm → SiLU → causal conv → FrameNorm → SiLU → causal conv, + skip (1×1×1 when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(in_ch), CausalConv3d(in_ch, out_ch)
        self.norm2, self.conv2 = FrameNorm(out_ch), CausalConv3d(out_ch, out_ch)
        nn.init.zeros_(self.conv2.conv.weight)  # each block starts as the identity (its skip)
        nn.init.zeros_(self.conv2.conv.bias)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Downsample(nn.Module):
    """Halve H and W (stride-2 1×3×3 conv), and with `temporal` time: frames [f0, f1, …, f_2m] → [g0, g1, …, g_m],
    g0 from f0 (twice) and g_j from (f_2j−1, f_2j), by a 2×1×1 conv of stride 2 after repeating f0 once."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.spatial = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(channels, channels, (2, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.spatial(x)
        if self.temporal is not None:
            x = self.temporal(torch.cat([x[:, :, :1], x], dim=2))
        return x


class Upsample(nn.Module):
    """Double H and W (nearest, then a 1×3×3 conv), and with `temporal` time, the inverse of `Downsample`'s frame
    map: [g0, g1, …, g_m] → [g0, g1, g1, …, g_m, g_m] (1 + 2m frames), then a causal conv over frames."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.spatial = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = CausalConv3d(channels, channels) if temporal else None

    def forward(self, x: Tensor) -> Tensor:
        if self.temporal is not None:
            x = torch.repeat_interleave(x, 2, dim=2)[:, :, 1:]
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        x = self.spatial(x)
        return x if self.temporal is None else self.temporal(x)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.stem = CausalConv3d(cfg.in_channels, widths[0])
        self.levels = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = [Downsample(widths[level - 1], level in cfg.temporal_levels)] if level else []
            blocks += [ResBlock(widths[max(level - 1, 0)] if i == 0 else width, width)
                       for i in range(cfg.blocks_per_level)]
            self.levels.append(nn.Sequential(*blocks))
        self.mid = ResBlock(widths[-1], widths[-1])
        self.norm = FrameNorm(widths[-1])
        self.out = CausalConv3d(widths[-1], 2 * cfg.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for level in self.levels:
            h = level(h)
        return self.out(F.silu(self.norm(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.stem = CausalConv3d(cfg.latent_channels, widths[-1])
        self.mid = ResBlock(widths[-1], widths[-1])
        self.levels = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = [ResBlock(widths[level], widths[level]) for _ in range(cfg.blocks_per_level)]
            if level:
                blocks.append(Upsample(widths[level], level in cfg.temporal_levels))
                blocks.append(nn.Conv3d(widths[level], widths[level - 1], 1))
            self.levels.append(nn.Sequential(*blocks))
        self.norm = FrameNorm(widths[0])
        self.out = CausalConv3d(widths[0], cfg.in_channels)

    def forward(self, latent: Tensor) -> Tensor:
        h = self.mid(self.stem(latent))
        for level in self.levels:
            h = level(h)
        return self.out(F.silu(self.norm(h)))


class VideoAutoencoder(nn.Module):
    """x (B, C, F, H, W) ↔ latent (B, latent_channels, 1 + ⌈(F − 1)/r⌉, H/s, W/s); H and W multiples of s."""

    null_class = None  # it takes no class labels (the trainer asks every network)

    def __init__(self, config: Optional[AutoencoderConfig] = None, **overrides):
        super().__init__()
        self.config = config or AutoencoderConfig(**overrides)
        self.encoder, self.decoder = Encoder(self.config), Decoder(self.config)

    def latent_shape(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return latent_shape(self.config, shape)

    def posterior(self, x: Tensor) -> Posterior:
        """q(latent | x): the clip padded at its end to 1 + r·k frames by repeating its last frame, encoded."""
        _, _, frames, _, _ = self.latent_shape(tuple(x.shape))
        r = self.config.temporal_factor
        padded = 1 + r * (frames - 1)
        if padded > x.shape[2]:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, padded - x.shape[2], -1, -1)], dim=2)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean: the latent that diffusion models."""
        return self.posterior(x).mean

    def decode(self, latent: Tensor, frames: Optional[int] = None) -> Tensor:
        """x̂ (B, C, F, H, W): 1 + r·(F' − 1) frames, or the first `frames` of them (an encoded clip's own length)."""
        out = self.decoder(latent)
        if frames is not None:
            if not math.ceil((frames - 1) / self.config.temporal_factor) + 1 == latent.shape[2]:
                raise ValueError(f"{latent.shape[2]} latent frames decode to "
                                 f"{1 + self.config.temporal_factor * (latent.shape[2] - 1)} frames, not {frames}")
            out = out[:, :, :frames]
        return out

    def forward(self, x: Tensor, noise: Optional[Tensor] = None) -> tuple[Tensor, Posterior]:
        """(x̂, posterior): the reconstruction of a latent drawn with `noise` (standard normal, the latent's shape;
        None decodes the mean), cut to x's frame count."""
        posterior = self.posterior(x)
        latent = posterior.mean if noise is None else posterior.sample(noise)
        return self.decode(latent, x.shape[2]), posterior
