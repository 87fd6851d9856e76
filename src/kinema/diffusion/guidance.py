"""Guidance: wrappers that turn a denoiser into another denoiser (spec A7).

A conditional denoiser has the signature `denoise(z, t, cond) -> x̂`, where `cond` is a mapping of
keyword inputs for the network (e.g. {"labels": ...}). The wrappers here bind the conditioning and
return the plain sampler contract `denoise(z, t) -> x̂`, so samplers never see conditioning.

Convention (VDM, fixed for all of kinema): x̃ = (1 + w) x̂(z, c) - w x̂(z, ∅); w = 0 is unguided.
Because x̂, ε̂ and v̂ are affine images of each other with the same coefficients for both branches,
applying it to x̂ is the same as applying it to ε̂ or v̂.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["ClassifierFreeGuidance", "Conditioned", "static_threshold", "dynamic_threshold", "Thresholded"]

CondDenoise = Callable[..., Tensor]


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
