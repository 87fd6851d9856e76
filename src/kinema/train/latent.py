"""Training in latent space (issue 22): the frozen autoencoder that turns each batch of clips into the latents a
latent run's denoiser models, and the scale that gives those latents unit variance.

The scale is Stable Diffusion's `scale_factor` (Rombach et al. 2022, §4.3.2: 1 / the standard deviation of the
first batch's latents), measured here on `SCALE_CLIPS` clips spread over the training data with the posterior
mean, once, when a run starts; the run's config records it, so every checkpoint, resume and sample uses the same.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..build import build_dataset, load_autoencoder
from ..config import RunConfig
from .objective import Objective

__all__ = ["LatentEncoder", "InLatentSpace", "measure_scale", "with_latent_scale", "SCALE_CLIPS"]

SCALE_CLIPS = 64


class LatentEncoder(nn.Module):
    """x (B, C, F, H, W) in [-1, 1] → scale · E(x), the posterior mean, without gradients."""

    def __init__(self, autoencoder: nn.Module, scale: float):
        super().__init__()
        self.autoencoder, self.scale = autoencoder, scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x) * self.scale


def measure_scale(cfg: RunConfig, autoencoder: nn.Module, clips: int = SCALE_CLIPS, batch: int = 8) -> float:
    """1 / std of the latents of `clips` training clips spread over the data."""
    items = build_dataset(cfg.data, "train", progress=False).spread(clips)
    device = next(autoencoder.parameters()).device
    with torch.no_grad():
        latents = torch.cat([autoencoder.encode(torch.stack([it["video"] for it in items[i:i + batch]]).to(device))
                             for i in range(0, len(items), batch)])
    std = float(latents.float().std())
    if not std > 0:
        raise ValueError(f"latent.autoencoder {cfg.latent.autoencoder} encodes the training clips to constant "
                         "latents (std 0): it is untrained or broken")
    return 1.0 / std


def with_latent_scale(cfg: RunConfig, device: torch.device) -> tuple[RunConfig, LatentEncoder]:
    """`cfg` with latent.scale measured when it is 0, and the encoder of its batches."""
    _, autoencoder = load_autoencoder(cfg, device)
    scale = cfg.latent.scale or measure_scale(cfg, autoencoder)
    cfg = dataclasses.replace(cfg, latent=dataclasses.replace(cfg.latent, scale=scale))
    return cfg, LatentEncoder(autoencoder, scale)


class InLatentSpace(Objective):
    """An objective fitted to the latents of the clips: each batch is encoded (`LatentEncoder`), then handed to the
    wrapped objective; everything else is the wrapped objective's (its preview samples decode: `generate`)."""

    def __init__(self, inner: Objective, encoder: LatentEncoder):
        self.inner, self.encoder, self.verb = inner, encoder, inner.verb

    def config(self, step: int) -> RunConfig:
        return self.inner.config(step)

    def learning_rate(self, step: int) -> float:
        return self.inner.learning_rate(step)

    def before_step(self, state) -> None:
        self.inner.before_step(state)

    def loss(self, forward, x: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
        return self.inner.loss(forward, self.encoder(x), cond, generator)

    def record(self, step: int) -> dict:
        return self.inner.record(step)

    def preview(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.Tensor:
        return self.inner.preview(model, cfg, device)
