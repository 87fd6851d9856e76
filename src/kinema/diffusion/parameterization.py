"""What the network predicts (ε, x, v or the x/ε blend), exact conversions, and loss weightings.

Conversions follow spec A5 for a variance-preserving process (α² + σ² = 1):

    x̂ = (z - σ ε̂)/α = α z - σ v̂        ε̂ = (z - α x̂)/σ = σ z + α v̂        v̂ = (α z - x̂)/σ = (ε̂ - σ z)/α

`Denoiser` wraps any network into the sampler contract `denoise(z, t, cond) -> x̂`; the network
itself only sees a noise level derived from λ (spec A3.4), never the schedule.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedules import Schedule

__all__ = [
    "PREDICTIONS",
    "WEIGHTINGS",
    "x_from_eps",
    "x_from_v",
    "eps_from_x",
    "eps_from_v",
    "v_from_x",
    "v_from_eps",
    "x_from_both",
    "x_from_output",
    "natural_weighting",
    "loss_weight",
    "noise_level",
    "broadcast_like",
    "Denoiser",
]

Prediction = Literal["eps", "x", "v", "both"]
Weighting = Literal["auto", "v-mse", "eps-mse", "x-mse", "snr-trunc", "min-snr"]
PREDICTIONS = ("eps", "x", "v", "both")
WEIGHTINGS = ("auto", "v-mse", "eps-mse", "x-mse", "snr-trunc", "min-snr")  # "auto": natural_weighting(prediction)


def broadcast_like(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example coefficients (B,) or a scalar to broadcast against `like` (B, ...)."""
    coef = torch.as_tensor(coef, device=like.device)
    if coef.ndim == 0:
        return coef.to(like.dtype)
    if coef.ndim != 1 or coef.shape[0] != like.shape[0]:
        raise ValueError(f"per-example coefficient of shape {tuple(coef.shape)} "
                         f"does not match batch of shape {tuple(like.shape)}")
    return coef.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x_from_eps(eps: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - sigma * eps) / alpha


def x_from_v(v: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * z - sigma * v


def eps_from_x(x: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - alpha * x) / sigma


def eps_from_v(v: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return sigma * z + alpha * v


def v_from_x(x: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (alpha * z - x) / sigma


def v_from_eps(eps: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (eps - sigma * z) / alpha


def x_from_both(x_tilde: Tensor, eps_tilde: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Progressive distillation's "both" output (spec A5): x̂ = σ² x̃ + α (z - σ ε̃).

    The weight σ² = sigmoid(-λ) moves smoothly from x-prediction (noisy) to ε-prediction (clean).
    """
    return sigma**2 * x_tilde + alpha * (z - sigma * eps_tilde)


def x_from_output(prediction: Prediction, output: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x̂ from a network output in the given parameterization; α, σ broadcast against z.

    For "both" the output has twice z's channels (dim 1): x̃ first, then ε̃.
    """
    if prediction == "v":
        return x_from_v(output, z, alpha, sigma)
    if prediction == "eps":
        return x_from_eps(output, z, alpha, sigma)
    if prediction == "x":
        return output
    if prediction == "both":
        x_tilde, eps_tilde = output.chunk(2, dim=1)
        return x_from_both(x_tilde, eps_tilde, z, alpha, sigma)
    raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")


def output_channels(prediction: Prediction, channels: int) -> int:
    """How many output channels a network needs for this parameterization."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")
    return 2 * channels if prediction == "both" else channels


def natural_weighting(prediction: Prediction) -> Weighting:
    """The weighting "auto" stands for: the one that is plain MSE on the network's own output.

    v -> v-MSE, ε -> ε-MSE, x -> x-MSE (each a unit factor on the native error), and "both" -> v-MSE:
    "both" is measured on x̂ = σ² x̃ + α(z - σ ε̃), whose error is ≈ the x̃ error when noisy and ≈ σ·(ε̃
    error) when clean, so the 1 + SNR = 1/σ² of v-MSE keeps both heads' weights near 1 at either end.
    Pairing ε-prediction with v-MSE instead would weigh the noisiest examples by (1 + SNR)/SNR → ∞.
    """
    if prediction in ("v", "both"):
        return "v-mse"
    if prediction == "eps":
        return "eps-mse"
    if prediction == "x":
        return "x-mse"
    raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")


def _log_weight_on_x(weighting: Weighting, logsnr: Tensor, min_snr_gamma: float) -> Tensor:
    """log w(λ) of the loss w(λ)·||x̂ - x||² (spec A6)."""
    if weighting == "v-mse":
        return F.softplus(logsnr)  # 1 + SNR
    if weighting == "eps-mse":
        return logsnr  # SNR
    if weighting == "x-mse":
        return torch.zeros_like(logsnr)
    if weighting == "snr-trunc":
        return logsnr.clamp(min=0.0)  # max(SNR, 1)
    if weighting == "min-snr":
        return logsnr.clamp(max=math.log(min_snr_gamma))  # min(SNR, γ): Hang et al. 2023
    raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}")


def _log_native_to_x(prediction: Prediction, logsnr: Tensor) -> Tensor:
    """log c with ||Δx||² = c·||Δnative||² for the network's own output space (spec A6)."""
    if prediction == "v":
        return -F.softplus(logsnr)  # σ² = 1 / (1 + SNR)
    if prediction == "eps":
        return -logsnr  # 1 / SNR
    if prediction in ("x", "both"):
        return torch.zeros_like(logsnr)
    raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")


def loss_weight(prediction: Prediction, weighting: Weighting, logsnr: Tensor, min_snr_gamma: float = 5.0) -> Tensor:
    """Factor k(λ) such that k·||Δnative||² = w(λ)·||x̂ - x||².

    The loss is computed in the network's native space and rescaled, because forming x̂ - x first
    cancels catastrophically at high SNR. For the matching pairs (v with v-MSE, ε with ε-MSE) the
    factor is exactly 1. weighting "auto" is `natural_weighting(prediction)`.
    """
    if weighting == "auto":
        weighting = natural_weighting(prediction)
    return torch.exp(_log_weight_on_x(weighting, logsnr, min_snr_gamma) + _log_native_to_x(prediction, logsnr))


def noise_level(logsnr: Tensor) -> Tensor:
    """The network's view of the noise: the normalised angle φ/(π/2) ∈ [0, 1] (spec A3.4, "inv_cos").

    arctan(e^{-λ/2}) is the angle φ with α = cos φ, σ = sin φ; 0 is clean, 1 is pure noise. Shifted
    schedules stay meaningful because the network sees a noise level, not a step index.
    """
    return torch.atan(torch.exp(-0.5 * logsnr.clamp(-20.0, 20.0))) / (math.pi / 2)


class Denoiser(nn.Module):
    """Turns a network into the sampler contract `denoise(z, t, cond=None) -> x̂`.

    The network is called as `network(z, noise_level, **cond)` and returns an output in the
    `prediction` parameterization, with z's shape (twice the channels for "both").
    """

    def __init__(self, network: nn.Module | Callable[..., Tensor], schedule: Schedule, prediction: Prediction = "v"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")
        self.network, self.schedule, self.prediction = network, schedule, prediction

    def network_output(self, z: Tensor, t: Tensor, cond: Optional[Mapping[str, Any]] = None) -> Tensor:
        t = _per_example_time(t, z)
        output = self.network(z, noise_level(self.schedule.logsnr(t)).to(z.dtype), **dict(cond or {}))
        expected = output_channels(self.prediction, z.shape[1])
        if output.shape[0] != z.shape[0] or output.shape[1] != expected or output.shape[2:] != z.shape[2:]:
            raise ValueError(
                f"network output has shape {tuple(output.shape)}, expected {(z.shape[0], expected, *z.shape[2:])} "
                f"for prediction={self.prediction!r} and z of shape {tuple(z.shape)}"
            )
        return output

    def forward(self, z: Tensor, t: Tensor | float, cond: Optional[Mapping[str, Any]] = None) -> Tensor:
        t = _per_example_time(t, z)
        alpha, sigma = self.schedule.alpha_sigma(t)
        output = self.network_output(z, t, cond)
        # Mixed precision: the conversion runs in z's dtype, never in the autocast dtype.
        return x_from_output(self.prediction, output.to(z.dtype), z, broadcast_like(alpha, z), broadcast_like(sigma, z))


def _per_example_time(t: Tensor | float, z: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=z.device)
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if t.ndim == 0:
        t = t.expand(z.shape[0])
    if t.shape != (z.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({z.shape[0]},) to match z of shape {tuple(z.shape)}; "
                         f"got {tuple(t.shape)}")
    return t
