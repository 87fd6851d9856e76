"""Networks: input (z, noise_level, conditioning, frame_mask), output of z's shape. No noise schedules here."""

from .attention import RelativePositionBias, SpatialAttention, TemporalAttention, temporal_attention_mask
from .dit import DIT_PRESETS, DiT, DiTConfig
from .unet3d import UNET_PRESETS, UNet3D, UNet3DConfig

__all__ = ["UNet3D", "UNet3DConfig", "UNET_PRESETS", "DiT", "DiTConfig", "DIT_PRESETS", "SpatialAttention",
           "TemporalAttention", "RelativePositionBias", "temporal_attention_mask"]
