"""Log-SNR noise schedules in continuous time (spec A0, A3).

Every schedule is a strictly decreasing map t ∈ [0, 1] -> λ(t) = log(α_t² / σ_t²) with its inverse.
Time t = 0 is clean data, t = 1 (almost) pure noise.  The process is variance preserving, so
α_t² = sigmoid(λ_t) and σ_t² = sigmoid(-λ_t): everything a sampler or a loss needs follows from λ.

All maps are computed in float64 and returned in the dtype of the input time tensor, because the
endpoints of a [-20, 20] schedule (α ≈ 4.5e-5) lose digits in float32 arithmetic on t.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "CosineSchedule",
    "ShiftedCosineSchedule",
    "InterpolatedCosineSchedule",
    "DDPMLinearSchedule",
    "alpha_sigma_from_logsnr",
    "effective_resolution",
    "SCHEDULES",
]


def _as_time(t: Tensor | float, name: str = "t") -> Tensor:
    t = torch.as_tensor(t)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    lo, hi = float(t.min()) if t.numel() else 0.0, float(t.max()) if t.numel() else 0.0
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (t=0 clean, t=1 noise); got values in [{lo:g}, {hi:g}]")
    return t


def alpha_sigma_from_logsnr(logsnr: Tensor) -> Tuple[Tensor, Tensor]:
    """α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(-λ)) for a variance-preserving process."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


class Schedule:
    """A strictly decreasing log-SNR schedule λ(t) on t ∈ [0, 1].

    Subclasses implement `_logsnr` and `_time` on float64 tensors; this base class validates inputs
    and handles dtypes.
    """

    def logsnr(self, t: Tensor | float) -> Tensor:
        """λ(t). Raises ValueError if any t lies outside [0, 1]."""
        t = _as_time(t)
        return self._logsnr(t.double()).to(t.dtype)

    def alpha_sigma(self, t: Tensor | float) -> Tuple[Tensor, Tensor]:
        """(α_t, σ_t) with α² + σ² = 1."""
        t = _as_time(t)
        alpha, sigma = alpha_sigma_from_logsnr(self._logsnr(t.double()))
        return alpha.to(t.dtype), sigma.to(t.dtype)

    def t(self, logsnr: Tensor | float) -> Tensor:
        """Inverse map λ -> t. λ outside [λ(1), λ(0)] raises ValueError."""
        lam = torch.as_tensor(logsnr)
        if not torch.is_floating_point(lam):
            lam = lam.to(torch.get_default_dtype())
        lo, hi = self.logsnr_min, self.logsnr_max
        tol = 1e-9 * max(1.0, abs(lo), abs(hi))
        if lam.numel() and (float(lam.min()) < lo - tol or float(lam.max()) > hi + tol):
            raise ValueError(
                f"logsnr must lie in the schedule's range [{lo:g}, {hi:g}]; "
                f"got values in [{float(lam.min()):g}, {float(lam.max()):g}]"
            )
        return self._time(lam.double().clamp(lo, hi)).clamp(0.0, 1.0).to(lam.dtype)

    @property
    def logsnr_max(self) -> float:
        """λ(0): the least noisy level."""
        return float(self._logsnr(torch.zeros((), dtype=torch.float64)))

    @property
    def logsnr_min(self) -> float:
        """λ(1): the noisiest level."""
        return float(self._logsnr(torch.ones((), dtype=torch.float64)))

    def _logsnr(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _time(self, logsnr: Tensor) -> Tensor:
        """Generic inverse by bisection (λ is strictly decreasing); subclasses with a closed form override it."""
        lo = torch.zeros_like(logsnr)
        hi = torch.ones_like(logsnr)
        for _ in range(64):  # 2^-64 < float64 resolution on [0, 1]
            mid = 0.5 * (lo + hi)
            above = self._logsnr(mid) > logsnr  # still too clean: the answer is later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
    if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max)):
        raise ValueError(f"logsnr_min and logsnr_max must be finite; got {logsnr_min}, {logsnr_max}")
    if logsnr_min >= logsnr_max:
        raise ValueError(f"logsnr_min ({logsnr_min}) must be smaller than logsnr_max ({logsnr_max})")


class CosineSchedule(Schedule):
    """Cosine schedule clipped to [λ_min, λ_max] (spec A3.1), optionally shifted by a constant.

    λ(t) = -2 log tan(a t + b) + shift, with b = arctan(e^{-λ_max/2}), a = arctan(e^{-λ_min/2}) - b.
    The shift is added *after* clipping (spec A3.2 variant (i), as lucidrains does), so the endpoints
    become [λ_min + shift, λ_max + shift].
    """

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 0.0):
        _check_range(logsnr_min, logsnr_max)
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite; got {shift}")
        self.clip_min, self.clip_max, self.shift = float(logsnr_min), float(logsnr_max), float(shift)
        self._b = math.atan(math.exp(-0.5 * self.clip_max))
        self._a = math.atan(math.exp(-0.5 * self.clip_min)) - self._b

    def _logsnr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(self._a * t + self._b)) + self.shift

    def _time(self, logsnr: Tensor) -> Tensor:
        return (torch.atan(torch.exp(-0.5 * (logsnr - self.shift))) - self._b) / self._a

    def __repr__(self) -> str:
        return f"CosineSchedule(logsnr_min={self.clip_min}, logsnr_max={self.clip_max}, shift={self.shift})"


def effective_resolution(frames: int, height: int, width: int, reference_frames: int = 1) -> float:
    """Side length of a square image with as many pixels per reference clip as this video.

    Our own choice for video (spec A3.2 leaves it open): d_eff = sqrt(F·H·W / F_ref), so that a
    video of F_ref frames at d×d maps to d, and more frames mean more redundancy, hence more shift.
    """
    if min(frames, height, width, reference_frames) <= 0:
        raise ValueError("frames, height, width and reference_frames must be positive; "
                         f"got {frames}, {height}, {width}, {reference_frames}")
    return math.sqrt(frames * height * width / reference_frames)


class ShiftedCosineSchedule(CosineSchedule):
    """Resolution-shifted cosine ("simple diffusion", spec A3.2): λ_cos(t) + 2 log(d_ref / d)."""

    def __init__(self, resolution: float, reference_resolution: float = 64.0,
                 logsnr_min: float = -20.0, logsnr_max: float = 20.0):
        if resolution <= 0 or reference_resolution <= 0:
            raise ValueError("resolution and reference_resolution must be positive; "
                             f"got {resolution}, {reference_resolution}")
        self.resolution, self.reference_resolution = float(resolution), float(reference_resolution)
        super().__init__(logsnr_min, logsnr_max, shift=2.0 * math.log(reference_resolution / resolution))

    def __repr__(self) -> str:
        return (f"ShiftedCosineSchedule(resolution={self.resolution}, "
                f"reference_resolution={self.reference_resolution}, "
                f"logsnr_min={self.clip_min}, logsnr_max={self.clip_max})")


class InterpolatedCosineSchedule(Schedule):
    """Interpolated-shift cosine (spec A3.3): λ_cos(t) + s0 + t (s1 - s0).

    The endpoints are explicit: `shift_at_0` applies at t = 0 (detail), `shift_at_1` at t = 1
    (global structure). The two public implementations disagree on which end gets the larger
    shift; naming both avoids guessing. `from_resolutions(d_lo, d_hi)` gives the spec default
    s0 = 2 log(d_ref/d_lo), s1 = 2 log(d_ref/d_hi), i.e. noisier at t = 1 when d_hi > d_lo.
    """

    def __init__(self, shift_at_0: float, shift_at_1: float, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
        self.cosine = CosineSchedule(logsnr_min, logsnr_max)
        self.shift_at_0, self.shift_at_1 = float(shift_at_0), float(shift_at_1)
        # dλ_cos/dt = -4a / sin(2(at + b)) <= -4a, so the blend stays strictly decreasing iff s1 - s0 < 4a.
        slope_bound = 4.0 * self.cosine._a
        if self.shift_at_1 - self.shift_at_0 >= slope_bound:
            raise ValueError(
                f"shift_at_1 - shift_at_0 = {self.shift_at_1 - self.shift_at_0:g} must be below {slope_bound:g}, "
                "otherwise λ(t) is not strictly decreasing"
            )

    @classmethod
    def from_resolutions(cls, resolution_at_0: float, resolution_at_1: float, reference_resolution: float = 64.0,
                         logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> "InterpolatedCosineSchedule":
        return cls(2.0 * math.log(reference_resolution / resolution_at_0),
                   2.0 * math.log(reference_resolution / resolution_at_1), logsnr_min, logsnr_max)

    def _logsnr(self, t: Tensor) -> Tensor:
        return self.cosine._logsnr(t) + self.shift_at_0 + t * (self.shift_at_1 - self.shift_at_0)

    def __repr__(self) -> str:
        return (f"InterpolatedCosineSchedule(shift_at_0={self.shift_at_0}, shift_at_1={self.shift_at_1}, "
                f"logsnr_min={self.cosine.clip_min}, logsnr_max={self.cosine.clip_max})")


class DDPMLinearSchedule(Schedule):
    """The discrete linear-β DDPM schedule (Ho et al. 2020) in continuous time.

    Discrete step i ∈ {0, …, T-1} (diffusers' `timestep`) sits at t = (i + 1) / T with
    ᾱ_i = ∏_{j≤i} (1 - β_j); t = 0 is clean data. Between the knots λ is linear in t; below the
    first knot it is extrapolated linearly from the first two, so λ(0) stays finite.
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_timesteps: int = 1000):
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2; got {num_timesteps}")
        if not (0.0 < beta_start <= beta_end < 1.0):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1; got beta_start={beta_start}, beta_end={beta_end}")
        self.beta_start, self.beta_end, self.num_timesteps = float(beta_start), float(beta_end), int(num_timesteps)
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        knots_lam = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)
        first = 2 * knots_lam[0] - knots_lam[1]
        self._knots_t = torch.arange(0, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        self._knots_lam = torch.cat([first[None], knots_lam])
        self.alphas_cumprod = alphas_cumprod

    def timestep_to_t(self, timestep: Tensor | int) -> Tensor:
        """Continuous time of discrete DDPM step `timestep` (0-based, as diffusers counts)."""
        return (torch.as_tensor(timestep, dtype=torch.float64) + 1.0) / self.num_timesteps

    def _logsnr(self, t: Tensor) -> Tensor:
        return self._interp(t, self._knots_t, self._knots_lam)

    def _time(self, logsnr: Tensor) -> Tensor:
        return self._interp(-logsnr, -self._knots_lam, self._knots_t)  # increasing in -λ

    @staticmethod
    def _interp(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        xs, ys = xs.to(x.device), ys.to(x.device)
        idx = torch.searchsorted(xs, x.contiguous(), right=True).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def __repr__(self) -> str:
        return (f"DDPMLinearSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, "
                f"num_timesteps={self.num_timesteps})")


# The names of `diffusion.schedule`: config validation reads them, `kinema.build.build_schedule` builds from them.
SCHEDULES = {"cosine": CosineSchedule, "shifted-cosine": ShiftedCosineSchedule, "ddpm-linear": DDPMLinearSchedule}
