"""Importing the public peer `video-diffusion-pytorch` 0.7.0 without torchvision.

    pip install --no-deps video-diffusion-pytorch==0.7.0 rotary-embedding-torch einops-exts

The peer imports torchvision at module level (for its GIF dataset and image utilities) and there is no CPU
torchvision build here, so a minimal stand-in module is placed in sys.modules first. Nothing the benchmarks use
touches it: `transforms.ToTensor` is only evaluated as a default argument at import time.
"""

from __future__ import annotations

import sys
import types

__all__ = ["import_peer", "peer_available", "PEER_INSTALL"]

PEER_INSTALL = "pip install --no-deps video-diffusion-pytorch==0.7.0 rotary-embedding-torch einops-exts"


def _stub_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.ToTensor = lambda: None
    tv.utils = types.ModuleType("torchvision.utils")
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils})


def import_peer():
    """The `video_diffusion_pytorch.video_diffusion_pytorch` module (Unet3D, GaussianDiffusion, EMA, ...)."""
    _stub_torchvision()
    import video_diffusion_pytorch.video_diffusion_pytorch as peer

    return peer


def peer_available() -> bool:
    try:
        import_peer()
    except Exception:
        return False
    return True
