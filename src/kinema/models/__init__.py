"""Networks: input (z, noise_level, conditioning, frame_mask), output of z's shape. No noise schedules here.

`BACKBONES` is the table of `model.backbone` names: config loading and `build_model` read it. A row's `kind` says
what the network is for: a "denoiser" (the diffusion backbones) or an "autoencoder" (latent diffusion's first stage,
`models/autoencoder.py`, which takes clips and no noise level); the trainer picks its objective by it.
"""

from typing import Any, NamedTuple

from .attention import RelativePositionBias, SpatialAttention, TemporalAttention, temporal_attention_mask
from .autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, VideoAutoencoder
from .dit import DIT_PRESETS, DiT, DiTConfig
from .unet3d import UNET_PRESETS, UNet3D, UNet3DConfig

__all__ = ["BACKBONES", "Backbone", "DENOISER", "AUTOENCODER", "AutoencoderConfig", "VideoAutoencoder",
           "AUTOENCODER_PRESETS", "UNet3D", "UNet3DConfig", "UNET_PRESETS", "DiT", "DiTConfig", "DIT_PRESETS",
           "SpatialAttention", "TemporalAttention", "RelativePositionBias", "temporal_attention_mask"]

DENOISER, AUTOENCODER = "denoiser", "autoencoder"  # the kinds of `Backbone.kind`


class Backbone(NamedTuple):
    """A `BACKBONES` row: the config dataclass (its `backbone` field is the row's name), the network built from
    it, and its named size presets."""

    config: type
    network: type
    presets: dict[str, Any]
    kind: str = DENOISER  # or AUTOENCODER


BACKBONES = {
    "unet3d": Backbone(UNet3DConfig, UNet3D, UNET_PRESETS),
    "dit": Backbone(DiTConfig, DiT, DIT_PRESETS),
    "autoencoder": Backbone(AutoencoderConfig, VideoAutoencoder, AUTOENCODER_PRESETS, AUTOENCODER),
}
