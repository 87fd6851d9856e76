"""The training losses: the diffusion loss, one function from (network, schedule, batch) to a per-example loss,
and the loss of latent diffusion's autoencoder.

E_{t,ε}[ w(λ_t) ||x̂_θ(z_t) - x||² ] with z_t = α_t x + σ_t ε (spec A1, A6). Each returns one value per
example so that a trainer can weight, mask or all-reduce it as it likes.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .noise import NoiseSampler, randn_like
from .parameterization import (
    Prediction,
    Weighting,
    broadcast_like,
    loss_weight,
    noise_level,
    output_channels,
    x_from_output,
)
from .schedules import Schedule

__all__ = ["sample_times", "diffusion_loss", "autoencoder_loss", "RECONSTRUCTION_LOSSES"]


def sample_times(batch: int, *, generator: Optional[torch.Generator] = None, device=None,
                 stratified: bool = True) -> Tensor:
    """t ~ U[0, 1] per example.

    Stratified (VDM's low-discrepancy sampler): t_i = (u + i/B) mod 1 with one shared u, so every
    batch covers the noise levels evenly, which lowers the variance of the loss estimate.
    """
    if stratified:
        u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
        t = torch.remainder(u + torch.arange(batch, device=device, dtype=torch.float64) / batch, 1.0)
    else:
        t = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    return t.float()


def diffusion_loss(
    network,
    schedule: Schedule,
    x: Tensor,
    *,
    prediction: Prediction = "v",
    weighting: Weighting = "auto",
    cond: Optional[Mapping[str, Any]] = None,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    min_snr_gamma: float = 5.0,
    noise_sampler: Optional[NoiseSampler] = None,
    loss_frames: Optional[Tensor] = None,
) -> Tensor:
    """Per-example loss, shape (B,), for clean data x of shape (B, C, ...).

    `network(z, noise_level, **cond)` returns the prediction in the given parameterization. The error
    is measured in that native space and rescaled to the requested weighting on x (see
    `loss_weight`), which is exact and numerically stable at both ends of the schedule; weighting
    "auto" (the default) is the parameterization's own, `natural_weighting(prediction)`. ε is
    `noise` if given, else `noise_sampler(x, generator)` (the samplers' contract, e.g. `FrameNoise.like`
    for noise correlated across frames), else standard normal.

    `loss_frames` (B, F) bool, for video x (B, C, F, H, W), counts only the frames where it is True: the squared
    error is averaged over those frames alone (a masked mean), so a frame given to the network as known adds
    nothing to the loss or its gradient, and an example's loss is on the scale of the unmasked one whatever the
    number of frames it counts. Every example must count at least one frame.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, C, ...); got {tuple(x.shape)}")
    batch = x.shape[0]
    if t is None:
        t = sample_times(batch, generator=generator, device=x.device)
    if noise is None:
        noise = (noise_sampler or randn_like)(x, generator)
    if noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x has shape {tuple(x.shape)}")
    t = torch.as_tensor(t, device=x.device)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},); got {tuple(t.shape)}")

    logsnr = schedule.logsnr(t.double())
    alpha, sigma = schedule.alpha_sigma(t.double())
    a, s = broadcast_like(alpha, x), broadcast_like(sigma, x)
    z = a * x + s * noise
    output = network(z, noise_level(logsnr).to(x.dtype), **dict(cond or {})).to(x.dtype)
    expected = output_channels(prediction, x.shape[1])
    if output.shape != (batch, expected, *x.shape[2:]):
        raise ValueError(f"network output has shape {tuple(output.shape)}, expected {(batch, expected, *x.shape[2:])}")

    if prediction == "v":
        target = a * noise - s * x
    elif prediction == "eps":
        target = noise
    else:  # "x" and "both" are measured on x̂ directly
        output, target = x_from_output(prediction, output, z, a, s), x
    squared_error = _frame_mean((output - target).pow(2), loss_frames)
    return squared_error * loss_weight(prediction, weighting, logsnr, min_snr_gamma).to(x.dtype)


def _frame_mean(error: Tensor, loss_frames: Optional[Tensor]) -> Tensor:
    """Per-example mean of `error` (B, C, F, ...), over the frames `loss_frames` (B, F) counts (all if None)."""
    if loss_frames is None:
        return error.flatten(1).mean(dim=1)
    if error.ndim < 3 or loss_frames.shape != error.shape[:1] + error.shape[2:3]:
        raise ValueError(f"loss_frames must have shape (B, F) = {tuple(error.shape[:1] + error.shape[2:3])}; "
                         f"got {tuple(loss_frames.shape)}")
    counted = loss_frames.to(device=error.device, dtype=torch.bool)
    per_frame = error.transpose(1, 2).flatten(2).mean(dim=2)  # (B, F)
    if not bool(counted.any(dim=1).all()):
        raise ValueError("loss_frames leaves an example with no frame to count")
    return torch.where(counted, per_frame, 0.0).sum(dim=1) / counted.sum(dim=1)


# The reconstruction term of an autoencoder, per input element. L1 is Stable Diffusion's VAE choice (with LPIPS
# and a GAN, which need pretrained nets or a second model: left out here); L2 is the Gaussian likelihood's.
RECONSTRUCTION_LOSSES = {
    "l1": lambda x_hat, x: (x_hat - x).abs(),
    "l2": lambda x_hat, x: (x_hat - x).square(),
}


def autoencoder_loss(x_hat: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, *, reconstruction: str = "l2",
                     kl_weight: float = 1e-6) -> Tensor:
    """Per-example loss (B,) of latent diffusion's first stage: the mean reconstruction error over x's elements plus
    kl_weight × KL(N(mean, e^logvar) ‖ N(0, I)) summed over the latent and divided by x's element count.

    Dividing both terms by the same count keeps Stable Diffusion's balance (its VAE sums both per example, with a
    KL weight of 1e-6) while the loss stays on the scale of a per-pixel error whatever the clip size."""
    elements = x[0].numel()
    error = RECONSTRUCTION_LOSSES[reconstruction](x_hat.float(), x.float()).flatten(1).mean(1)
    kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1)
    return error + kl_weight * kl / elements
