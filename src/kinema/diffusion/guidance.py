"""Guidance: wrappers that turn a denoiser into another denoiser (spec A7).

A conditional denoiser has the signature `denoise(z, t, cond) -> x̂`, where `cond` is a mapping of
keyword inputs for the network (e.g. {"labels": ...}). The wrappers here bind the conditioning and
return the plain sampler contract `denoise(z, t) -> x̂`, so samplers never see conditioning.

Conditioning on *known data* rather than a label (spec A8) is also a wrapper here: replacement
(imputation), reconstruction guidance for known frames, and super-resolution guidance for a known
low-resolution video. They need the schedule (α_t) and, for replacement, a noise generator.

Convention (VDM, fixed for all of kinema): x̃ = (1 + w) x̂(z, c) - w x̂(z, ∅); w = 0 is unguided.
Because x̂, ε̂ and v̂ are affine images of each other with the same coefficients for both branches,
applying it to x̂ is the same as applying it to ε̂ or v̂.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .noise import NoiseSampler, randn_like
from .parameterization import broadcast_like
from .schedules import Schedule

__all__ = ["ClassifierFreeGuidance", "Conditioned", "FrameConditioned", "static_threshold",
           "dynamic_threshold", "Thresholded",
           "Replacement", "ReconstructionGuidance", "MeasurementGuidance", "SuperResolutionGuidance", "area_downsample"]

CondDenoise = Callable[..., Tensor]
Denoise = Callable[[Tensor, Tensor], Tensor]


def _concat_cond(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict:
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys; got {sorted(cond)} and {sorted(uncond)}")
    merged = {}
    for key in cond:
        a, b = cond[key], uncond[key]
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            if a.shape != b.shape:
                raise ValueError(f"cond[{key!r}] has shape {tuple(a.shape)} but uncond[{key!r}] has {tuple(b.shape)}")
            merged[key] = torch.cat([a, b])
        elif a is b or a == b:  # shared non-tensor inputs (flags, None)
            merged[key] = a
        else:
            raise ValueError(f"cond[{key!r}] and uncond[{key!r}] must be tensors or identical values")
    return merged


class Conditioned:
    """Binds a fixed conditioning: `Conditioned(denoise, cond)(z, t) == denoise(z, t, cond)`."""

    def __init__(self, denoise: CondDenoise, cond: Optional[Mapping[str, Any]] = None):
        self.denoise, self.cond = denoise, dict(cond or {})

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self.denoise(z, t, self.cond)


class ClassifierFreeGuidance:
    """x̃ = (1 + w) x̂(z, c) - w x̂(z, ∅), computed in one batched network pass.

    `cond` and `uncond` hold per-example tensors of batch size B (or identical shared values);
    the pass runs on a batch of 2B. With w = 0 only the conditional branch is evaluated.
    """

    def __init__(self, denoise: CondDenoise, cond: Mapping[str, Any], uncond: Mapping[str, Any], weight: float):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"guidance weight must be a finite number >= 0 (0 = unguided); got {weight}")
        self.denoise, self.weight = denoise, float(weight)
        self.cond, self.uncond = dict(cond), dict(uncond)
        self._both = _concat_cond(self.cond, self.uncond)

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        if self.weight == 0.0:
            return self.denoise(z, t, self.cond)
        x_both = self.denoise(torch.cat([z, z]), torch.cat([t, t]), self._both)
        x_cond, x_uncond = x_both.chunk(2)
        return x_cond + self.weight * (x_cond - x_uncond)


class FrameConditioned:
    """Trained frame conditioning: a conditional denoiser that also passes known frames to a frame-conditioned
    network, `FrameConditioned(denoise, known, positions)(z, t, cond) == denoise(z, t, cond + known frames)`.

    `known` (B, C, K, H, W) holds the frames at frame positions `positions` of z; the network receives them as
    `known_frames` (B, C, F, H, W), zero elsewhere, and `known_mask` (B, F). It returns a conditional denoiser, so
    label/text guidance (`ClassifierFreeGuidance`, whose doubled batch gets the frames twice) and the known-data
    wrappers (`Replacement`, `ReconstructionGuidance`) compose around it. With `weight` w > 0 it is also
    classifier-free guidance over the frames, x̃ = (1 + w) x̂(z, frames) − w x̂(z, no frames), in one doubled pass;
    "no frames" is the all-False mask the model was trained on for the dropped condition.
    """

    def __init__(self, denoise: CondDenoise, known: Tensor, positions: Sequence[int], weight: float = 0.0):
        positions = [int(p) for p in positions]
        if known.ndim != 5 or known.shape[2] != len(positions):
            raise ValueError(f"known frames must have shape (B, C, K, H, W) with K = {len(positions)} positions; "
                             f"got {tuple(known.shape)}")
        if len(set(positions)) != len(positions) or min(positions, default=0) < 0:
            raise ValueError(f"positions must be distinct non-negative frame indices; got {positions}")
        self.denoise, self.known, self.positions = denoise, known, positions
        self.weight = _check_weight(weight, "frame guidance weight")

    def inputs(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(known_frames (N, C, F, H, W), known_mask (N, F)) for z of batch N, a multiple of the known batch."""
        batch, frames = z.shape[0], z.shape[2]
        if batch % self.known.shape[0] or max(self.positions, default=-1) >= frames:
            raise ValueError(f"known frames of shape {tuple(self.known.shape)} at {self.positions} do not fit z of "
                             f"shape {tuple(z.shape)}")
        known_frames = z.new_zeros(z.shape)
        tiles = batch // self.known.shape[0]  # tiled, as CFG's torch.cat([z, z]) lays out its doubled batch
        known_frames[:, :, self.positions] = self.known.to(z).repeat(tiles, 1, 1, 1, 1)
        known_mask = torch.zeros(batch, frames, dtype=torch.bool, device=z.device)
        known_mask[:, self.positions] = True
        return known_frames, known_mask

    def __call__(self, z: Tensor, t: Tensor, cond: Optional[Mapping[str, Any]] = None) -> Tensor:
        cond = dict(cond or {})
        known_frames, known_mask = self.inputs(z)
        given = {**cond, "known_frames": known_frames, "known_mask": known_mask}
        if self.weight == 0.0:
            return self.denoise(z, t, given)
        t = torch.as_tensor(t, device=z.device).expand(z.shape[0]) if torch.as_tensor(t).ndim == 0 else t
        dropped = {**cond, "known_frames": known_frames, "known_mask": torch.zeros_like(known_mask)}
        x_both = self.denoise(torch.cat([z, z]), torch.cat([t, t]), _concat_cond(given, dropped))
        x_given, x_dropped = x_both.chunk(2)
        return x_given + self.weight * (x_given - x_dropped)


def static_threshold(x_hat: Tensor) -> Tensor:
    """Clip x̂ to the data range [-1, 1]."""
    return x_hat.clamp(-1.0, 1.0)


def dynamic_threshold(x_hat: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding, per example: s = max(1, quantile_p |x̂|), x̂ ← clip(x̂, -s, s)/s.

    Values inside [-1, 1] are untouched when s = 1; saturated samples are pulled back into range
    instead of being clipped flat, which is what makes large guidance weights usable.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1]; got {percentile}")
    flat = x_hat.detach().abs().flatten(1).float()
    k = max(1, math.ceil(percentile * flat.shape[1]))
    s = flat.kthvalue(k, dim=1).values.clamp(min=1.0).to(x_hat.dtype)
    s = s.view(-1, *([1] * (x_hat.ndim - 1)))
    return torch.maximum(torch.minimum(x_hat, s), -s) / s


class Thresholded:
    """Applies static or dynamic thresholding to every x̂ a denoiser returns.

    The sampler recomputes ε̂ from the thresholded x̂, as the reference code does (spec A5).
    """

    def __init__(self, denoise: Callable[[Tensor, Tensor], Tensor], mode: str = "dynamic", percentile: float = 0.995):
        if mode not in ("static", "dynamic"):
            raise ValueError(f"threshold mode must be 'static' or 'dynamic'; got {mode!r}")
        if mode == "dynamic" and not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile must lie in (0, 1]; got {percentile}")
        self.denoise, self.mode, self.percentile = denoise, mode, percentile

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        x_hat = self.denoise(z, t)
        return static_threshold(x_hat) if self.mode == "static" else dynamic_threshold(x_hat, self.percentile)


def _check_weight(weight: float, name: str) -> float:
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {weight}")
    return float(weight)


class Replacement:
    """Imputation of known frames (spec A8, Song et al. 2021): the "replacement" baseline.

    `known` (B, C, K, H, W) holds the frames x^a at frame positions `positions` (K distinct indices
    into the F frames of z; any subset, in any order). At every call the a-part of z_t is replaced
    by a fresh draw from the forward process q(z^a_t | x^a) = N(α_t x^a, σ_t² I), the denoiser runs
    on the result, and x̂^a is set to x^a. The sampler then updates the b-part as usual; the a-part
    it tracks is never read, since it is replaced at the next call, and the last step returns x^a.

    The replacement writes into a copy of z, so gradients flow to z^b through it: an outer
    wrapper (e.g. `SuperResolutionGuidance`) can differentiate through a `Replacement`.

    `noise_sampler(like, generator)` draws the fresh noise (default standard normal). For a model
    trained with frame-correlated noise pass `FrameNoise(ρ).like`: the known frames then share a
    component among themselves, though not with the unknown frames' noise (which z_t does not reveal),
    so the draw is right per frame and only approximately right jointly.
    """

    def __init__(self, denoise: Denoise, schedule: Schedule, known: Tensor, positions: Sequence[int],
                 generator: Optional[torch.Generator] = None, noise_sampler: Optional[NoiseSampler] = None):
        positions = [int(p) for p in positions]
        if known.ndim != 5:
            raise ValueError(f"known frames must have shape (B, C, K, H, W); got {tuple(known.shape)}")
        if len(positions) != known.shape[2]:
            raise ValueError(f"{len(positions)} positions given for {known.shape[2]} known frames")
        if len(set(positions)) != len(positions) or min(positions, default=0) < 0:
            raise ValueError(f"positions must be distinct non-negative frame indices; got {positions}")
        self.denoise, self.schedule, self.generator = denoise, schedule, generator
        self.known, self.positions, self.noise_sampler = known, positions, noise_sampler or randn_like

    def _check(self, z: Tensor) -> None:
        B, C, F_, H, W = z.shape
        k = self.known
        if (k.shape[0], k.shape[1], k.shape[3], k.shape[4]) != (B, C, H, W):
            raise ValueError(f"known frames of shape {tuple(k.shape)} do not fit z of shape {tuple(z.shape)}: "
                             "batch, channels, height and width must match")
        if max(self.positions, default=-1) >= F_:
            raise ValueError(f"known frame position {max(self.positions)} is outside the {F_} frames of z")

    def replace(self, z: Tensor, t: Tensor) -> Tensor:
        """z with its known frames replaced by a draw from q(z^a_t | x^a)."""
        self._check(z)
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha, sigma = broadcast_like(alpha, z).to(z.dtype), broadcast_like(sigma, z).to(z.dtype)
        like = self.known.to(device=z.device, dtype=z.dtype)
        noise = self.noise_sampler(like, self.generator)
        replaced = z.clone()  # indexing a clone keeps z^b differentiable; z^a gets no gradient
        replaced[:, :, self.positions] = alpha * like + sigma * noise
        return replaced

    def paste(self, x_hat: Tensor) -> Tensor:
        """x̂ with its known frames set to x^a."""
        pasted = x_hat.clone()
        pasted[:, :, self.positions] = self.known.to(device=x_hat.device, dtype=x_hat.dtype)
        return pasted

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self.paste(self.denoise(self.replace(z, t), t))


class ReconstructionGuidance(Replacement):
    """Reconstruction guidance (VDM eq. 7, spec A8) for known frames at any positions:

        x̃^b = x̂^b − (w_r α_t / 2) ∇_{z^b_t} ‖x^a − x̂^a_θ(z_t)‖²,   x̃^a = x^a,

    with z_t = [z^a_t, z^b_t] built by replacement. The gradient costs one extra backward pass
    through the denoiser per call. `weight` = w_r; w_r = 0 is exactly `Replacement` (no backward).
    VDM used w_r = 50 (BAIR) and 9 (Kinetics); larger w_r means more coherence with x^a.
    """

    def __init__(self, denoise: Denoise, schedule: Schedule, known: Tensor, positions: Sequence[int],
                 weight: float, generator: Optional[torch.Generator] = None,
                 noise_sampler: Optional[NoiseSampler] = None):
        super().__init__(denoise, schedule, known, positions, generator, noise_sampler)
        self.weight = _check_weight(weight, "reconstruction guidance weight")

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        if self.weight == 0.0:
            return super().__call__(z, t)
        z_in = self.replace(z, t).detach().requires_grad_(True)
        with torch.enable_grad():
            x_hat = self.denoise(z_in, t)
            error = (self.known.to(x_hat) - x_hat[:, :, self.positions]).square().sum()  # x^a on x̂'s device and dtype
            (grad,) = torch.autograd.grad(error, z_in)
        alpha, _ = self.schedule.alpha_sigma(t)
        step = (0.5 * self.weight) * broadcast_like(alpha, z).to(z.dtype) * grad
        # The gradient is taken with respect to z^b only: z^a is data, not a variable.
        return self.paste(x_hat.detach() - step)


def area_downsample(video: Tensor, size: Sequence[int]) -> Tensor:
    """Average-pool each frame of (B, C, F, H, W) to (h, w): the differentiable D of SR guidance."""
    B, C, F_, H, W = video.shape
    frames = video.transpose(1, 2).reshape(B * F_, C, H, W)
    small = F.adaptive_avg_pool2d(frames, tuple(size))
    return small.reshape(B, F_, C, *small.shape[-2:]).transpose(1, 2)


class MeasurementGuidance:
    """Guidance by a measurement y = A(x) of the sample through a differentiable operator A (VDM §3.1's
    reconstruction guidance, spec A8, with A in place of "take frames a"):

        x̃ = x̂ − (w_r α_t / 2) ∇_{z_t} ‖y − A(x̂_θ(z_t))‖²,

    the gradient taken with respect to the whole z_t. Super-resolution guidance is A = downsampling; a latent run's
    given pixel frames are A = decode, then take those frames (sample/conditional.py). The inner denoiser may be a
    `Replacement` or a classifier-free-guidance wrapper: anything differentiable in z.
    """

    weight_name = "measurement guidance weight"  # what an error about the weight calls it

    def __init__(self, denoise: Denoise, schedule: Schedule, measured: Tensor, weight: float,
                 operator: Callable[[Tensor], Tensor]):
        self.denoise, self.schedule, self.measured, self.operator = denoise, schedule, measured, operator
        self.weight = _check_weight(weight, self.weight_name)

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        if self.weight == 0.0:
            return self.denoise(z, t)
        z_in = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x_hat = self.denoise(z_in, t)
            predicted = self.operator(x_hat)
            measured = self.measured.to(predicted)  # on the prediction's device and dtype, wherever y was given
            if predicted.shape != measured.shape:
                raise ValueError(f"the operator maps x̂ of shape {tuple(x_hat.shape)} to {tuple(predicted.shape)}, "
                                 f"but the measurement has shape {tuple(measured.shape)}")
            (grad,) = torch.autograd.grad((measured - predicted).square().sum(), z_in)
        alpha, _ = self.schedule.alpha_sigma(t)
        return x_hat.detach() - (0.5 * self.weight) * broadcast_like(alpha, z).to(z.dtype) * grad


class SuperResolutionGuidance(MeasurementGuidance):
    """Spatial super-resolution guidance (VDM §3.1, spec A8) from a known low-resolution video:

        x̃ = x̂ − (w_r α_t / 2) ∇_{z_t} ‖x^a − D(x̂_θ(z_t))‖²,

    where D is a differentiable downsampler (default: area averaging to the size of `low_res`):
    `MeasurementGuidance` with A = D.
    """

    weight_name = "super-resolution guidance weight"

    def __init__(self, denoise: Denoise, schedule: Schedule, low_res: Tensor, weight: float,
                 downsample: Optional[Callable[[Tensor, Sequence[int]], Tensor]] = None):
        if low_res.ndim != 5:
            raise ValueError(f"low-resolution video must have shape (B, C, F, h, w); got {tuple(low_res.shape)}")
        self.low_res, self.downsample = low_res, downsample or area_downsample
        super().__init__(denoise, schedule, low_res, weight, lambda x: self.downsample(x, low_res.shape[-2:]))

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        if z.shape[:3] != self.low_res.shape[:3]:
            raise ValueError(f"low-resolution video of shape {tuple(self.low_res.shape)} does not fit z of shape "
                             f"{tuple(z.shape)}: batch, channels and frames must match")
        return super().__call__(z, t)
