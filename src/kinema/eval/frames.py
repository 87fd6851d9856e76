"""Frame metrics for video prediction and reconstruction: PSNR, SSIM, best-of-N (spec F3).

Both metrics take videos (..., C, F, H, W) and return one value per frame, shape (..., F); average over the last
axis for a per-video value. A single image (C, H, W) is a one-frame video: `x.unsqueeze(-3)`. Leading axes
broadcast, so scoring N samples per ground-truth video is one call:

    scores = ssim(samples, target)        # samples (N, B, C, F, H, W), target (B, C, F, H, W) -> (N, B, F)
    best, index = best_of_n(scores)       # (B, F) per-frame scores of each video's best sample, (B,) its index

`data_range` is max − min of the value range: 2.0 for kinema's [-1, 1] tensors, 1.0 for [0, 1], 255 for uint8.
Best-of-N rewards diversity as well as accuracy; always state N (`scores.shape[0]`) next to the number.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "best_of_n", "BestOfN", "gaussian_window"]


def _check(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = torch.broadcast_tensors(torch.as_tensor(pred), torch.as_tensor(target))
    if pred.ndim < 4:
        raise ValueError(f"expected videos (..., C, F, H, W); got shape {tuple(pred.shape)}")
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return pred.to(dtype), target.to(dtype)


def psnr(pred: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per frame: 10 log10(data_range² / MSE), the MSE over (C, H, W).

    pred, target: (..., C, F, H, W) (broadcastable). Returns (..., F); +inf where a frame is reproduced exactly.
    """
    pred, target = _check(pred, target)
    mse = (pred - target).pow(2).mean(dim=(-4, -2, -1))
    return 10 * torch.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> Tensor:
    """A normalised 1-D Gaussian (size,); its outer product is MATLAB's fspecial('gaussian', size, sigma)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (w / w.sum()).to(dtype)


def ssim(pred: Tensor, target: Tensor, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity per frame (Wang, Bovik, Sheikh & Simoncelli 2004), shape (..., F).

    The reference implementation's choices: an 11×11 Gaussian window with σ = 1.5, local statistics weighted by
    it (population, not sample, covariances), C₁ = (k₁ L)², C₂ = (k₂ L)² with L = `data_range`, the SSIM map
    over the positions where the window fits inside the frame ('valid'), averaged; channels are averaged.
    This equals scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L)`. Frames must be at least `window_size` pixels on each side.
    """
    pred, target = _check(pred, target)
    *lead, c, f, h, w = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"SSIM needs frames of at least {window_size}×{window_size} pixels; got {h}×{w} "
                         f"(pass a smaller window_size)")
    # fold everything but the frame's pixels into the batch: (M, 1, H, W)
    x = pred.movedim(-3, -4).reshape(-1, 1, h, w)
    y = target.movedim(-3, -4).reshape(-1, 1, h, w)
    g = gaussian_window(window_size, sigma, x.dtype).to(x.device)
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (M, 5, H, W): every local moment in one filter pass
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mu_x, mu_y, xx, yy, xy = maps.unbind(1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_frame_channel = s.mean(dim=(-2, -1)).reshape(*lead, f, c)
    return per_frame_channel.mean(-1)


class BestOfN(NamedTuple):
    values: Tensor  # (B, F) per-frame scores of each video's best sample
    index: Tensor  # (B,) which of the N samples it was


def best_of_n(scores: Tensor, higher_is_better: bool = True) -> BestOfN:
    """Pick, for every video, the sample whose frame-averaged score is best (SVG/SRVP protocol).

    scores: (N, B, F) per-frame scores of N samples for each of B videos, e.g. `psnr(samples, target)`.
    Returns the per-frame scores of the chosen sample (B, F) and its index (B,). N = scores.shape[0].
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must have shape (N, B, F); got {tuple(scores.shape)}")
    per_video = scores.mean(-1)
    index = per_video.argmax(0) if higher_is_better else per_video.argmin(0)
    values = scores.gather(0, index.view(1, -1, 1).expand(1, -1, scores.shape[-1]))[0]
    return BestOfN(values, index)
