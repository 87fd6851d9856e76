"""Training latent diffusion's first stage: the trainer's objective for a video autoencoder (issue 22).

`kinema train` with an autoencoder model section (`--preset ae-digits64`, or `model.backbone=autoencoder`) runs
the same loop as a diffusion model — EMA, checkpoints, exact resume, DDP, time limits — with this objective in
place of the diffusion loss: reconstruct the clip from a latent drawn from the encoder's posterior, plus a light KL
term (`kinema.diffusion.losses.autoencoder_loss`; train.reconstruction_loss, train.kl_weight). The posterior's noise
is drawn from the trainer's generator, so resume stays bit-identical.
"""

from __future__ import annotations

import torch

from ..build import build_dataset
from ..config import RunConfig
from ..diffusion.losses import autoencoder_loss
from ..models.autoencoder import latent_shape
from .objective import Objective

__all__ = ["AutoencoderObjective"]


class AutoencoderObjective(Objective):
    """Reconstruction + KL of the run's autoencoder; its preview shows real clips above their reconstructions."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._preview_clips = None

    def loss(self, forward, x: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(latent_shape(self.cfg.model, tuple(x.shape)), generator=generator, device=x.device)
        x_hat, posterior = forward(x, noise)
        t = self.cfg.train
        return autoencoder_loss(x_hat, x, posterior.mean, posterior.logvar, reconstruction=t.reconstruction_loss,
                                kl_weight=t.kl_weight)

    def preview(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.Tensor:
        """(2n, C, F, H, W): n training clips spread over the data, then their reconstructions (the mean latent)."""
        if self._preview_clips is None:
            n = max(1, cfg.train.sample_count // 2)
            items = build_dataset(cfg.data, "train", progress=False).spread(n)
            self._preview_clips = torch.stack([item["video"] for item in items])
        clips = self._preview_clips.to(device)
        with torch.no_grad():
            return torch.cat([clips, model(clips)[0].clamp(-1, 1)]).cpu()
