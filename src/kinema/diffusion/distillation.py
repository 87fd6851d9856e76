"""Progressive distillation's target and loss (Salimans & Ho 2022, Algorithm 2; spec A9), over a teacher denoiser.

A student of N steps is trained on the grid t = i/N, i ∈ {1 … N}, to do in one DDIM step what the teacher does in
two: t → t' = t − ½/N → t'' = t − 1/N. Its target is the x̃ for which one DDIM step t → t'' lands exactly on the
teacher's z_{t''}; at t'' = 0 it is the teacher's second x̂, which is what kinema's samplers return on the step into
t = 0. The teacher is any `denoise(z, t) -> x̂` with per-example times (a guided denoiser distils the guided
sampler); like the samplers, nothing here knows a network's internals.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from .noise import NoiseSampler, randn_like
from .parameterization import (
    Prediction,
    Weighting,
    broadcast_like,
    eps_from_x,
    loss_weight,
    noise_level,
    v_from_x,
    x_from_output,
)
from .schedules import Schedule

__all__ = ["grid_times", "distillation_target", "distillation_loss", "DISTILL_WEIGHTINGS"]

Denoise = Callable[[Tensor, Tensor], Tensor]

# Weightings on x that stay at least 1 where α → 0 (t → 1), where a few-step student takes its first, largest step:
# v-MSE is (1 + SNR)·||Δx||², truncated SNR max(SNR, 1)·||Δx||² (PD §4); they differ by at most a factor 2.
# ε-MSE (SNR) and min-SNR weigh t = 1 by ≈ 0, so a student trained with them never learns its first step.
DISTILL_WEIGHTINGS = ("v-mse", "snr-trunc")


def grid_times(batch: int, steps: int, *, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """t = i/N with i ~ Uniform{1 … N} per example (float64, shape (B,)): the student's own sampling grid."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    i = torch.randint(1, steps + 1, (batch,), generator=generator, device=device)
    return i.double() / steps


def _coefficients(schedule: Schedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) at per-example times t (float64), shaped to broadcast against `like` and in its dtype."""
    alpha, sigma = schedule.alpha_sigma(t)
    return broadcast_like(alpha, like), broadcast_like(sigma, like)


def _ddim(z: Tensor, x_hat: Tensor, coef_t: tuple[Tensor, Tensor], coef_s: tuple[Tensor, Tensor]) -> Tensor:
    """DDIM (η = 0, spec A4) with per-example coefficients: z_s = α_s x̂ + σ_s (z_t − α_t x̂)/σ_t."""
    (a_t, s_t), (a_s, s_s) = coef_t, coef_s
    return a_s * x_hat + s_s * eps_from_x(x_hat, z, a_t, s_t)


@torch.no_grad()
def distillation_target(teacher: Denoise, z: Tensor, t: Tensor, steps: int, schedule: Schedule) -> Tensor:
    """x̃ (shape of z) for a student of `steps` steps at z = z_t, t = i/N of shape (B,) on the student's grid.

    The teacher takes two DDIM steps t → t' → t''; x̃ = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t)
    makes one student DDIM step t → t'' with x̂ = x̃ land on z_{t''} (the denominator is positive: SNR rises from t to
    t''). Where t'' = 0 (i = 1) x̃ is the teacher's second x̂, as in the reference code: a sampler's step into 0
    returns x̂ itself. The teacher sees times in the dtype the samplers give it (float32 unless z is float64).
    """
    index = torch.round(t.double() * steps)
    if bool((index < 1).any()) or bool((index > steps).any()) or not torch.allclose(index / steps, t.double()):
        raise ValueError(f"t must lie on the student's grid i/{steps}, i = 1 … {steps}; got {t.tolist()}")
    times = [index / steps, (index - 0.5) / steps, (index - 1) / steps]  # t, t', t''
    coef = [_coefficients(schedule, u, z) for u in times]
    time_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    x_hat = teacher(z, times[0].to(z.device, time_dtype))
    z_mid = _ddim(z, x_hat, coef[0], coef[1])
    x_hat_mid = teacher(z_mid, times[1].to(z.device, time_dtype))
    z_end = _ddim(z_mid, x_hat_mid, coef[1], coef[2])
    (a_t, s_t), (a_end, s_end) = coef[0], coef[2]
    ratio = s_end / s_t
    x_tilde = (z_end - ratio * z) / (a_end - ratio * a_t)
    last = broadcast_like((index == 1).to(z.device), z).bool()
    return torch.where(last, x_hat_mid, x_tilde)


def _native_target(prediction: Prediction, x_tilde: Tensor, z: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """The target in the student's own output space: ṽ = (α z − x̃)/σ = α ε̃ − σ x̃ for v, ε̃ for ε."""
    if prediction == "v":
        return v_from_x(x_tilde, z, a, s)
    if prediction == "eps":
        return eps_from_x(x_tilde, z, a, s)
    return x_tilde


def distillation_loss(
    network,
    teacher: Denoise,
    schedule: Schedule,
    x: Tensor,
    steps: int,
    *,
    prediction: Prediction = "v",
    weighting: Weighting = "v-mse",
    cond: Optional[Mapping[str, Any]] = None,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """Per-example distillation loss, shape (B,): w(λ_t)·||x̂_θ(z_t) − x̃||² at t = i/N (spec A9).

    `network(z, noise_level, **cond)` is the student, returning its `prediction` parameterization; `teacher` the
    frozen previous-round denoiser. As in `diffusion_loss` the error is measured in the student's native space (ṽ
    for v) and rescaled to `weighting` on x exactly (`loss_weight`): v-MSE against ṽ is (1 + SNR)·||Δx||².
    """
    if weighting not in DISTILL_WEIGHTINGS:
        raise ValueError(f"distillation weighting must be one of {', '.join(DISTILL_WEIGHTINGS)} (a weight of at "
                         f"least 1 at t = 1, where a few-step student takes its first step); got {weighting!r}")
    if t is None:
        t = grid_times(x.shape[0], steps, generator=generator, device=x.device)
    if noise is None:
        noise = (noise_sampler or randn_like)(x, generator)
    t = torch.as_tensor(t, device=x.device).double()
    a, s = _coefficients(schedule, t, x)
    z = a * x + s * noise
    x_tilde = distillation_target(teacher, z, t, steps, schedule)
    logsnr = schedule.logsnr(t)
    output = network(z, noise_level(logsnr).to(x.dtype), **dict(cond or {})).to(x.dtype)
    if prediction in ("x", "both"):
        output = x_from_output(prediction, output, z, a, s)
    squared_error = (output - _native_target(prediction, x_tilde, z, a, s)).pow(2).flatten(1).mean(dim=1)
    return squared_error * loss_weight(prediction, weighting, logsnr).to(x.dtype)
