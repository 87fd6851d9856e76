"""What the trainer fits: the `Objective` protocol and its default, the diffusion loss, with the learning-rate
schedule every objective starts from. Other objectives subclass it: distillation (`train/distill.py`) and the
autoencoder's (`train/autoencoder.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ..build import build_noise, build_schedule
from ..config import RunConfig
from ..diffusion import diffusion_loss
from ..sample import generate

if TYPE_CHECKING:
    from .trainer import _State

__all__ = ["Objective", "learning_rate"]


def learning_rate(cfg: RunConfig, step: int, steps: Optional[int] = None) -> float:
    """lr for the update that makes step + 1: linear warm-up over train.warmup_steps, then constant, and linear
    decay towards 0 over the last train.decay_steps of `steps` updates (default train.steps; a distillation round
    passes its own length and step) (warmup-stable-decay; Hägele et al. 2024 find a short decay matches a cosine
    schedule of the whole run). A function of the step alone, so resume stays exact and a finished run can be
    continued with a higher train.steps and a decay at its end."""
    tc = cfg.train
    factor = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.decay_steps:
        factor = min(factor, ((tc.steps if steps is None else steps) - step) / tc.decay_steps)
    return tc.lr * factor


class Objective:
    """What the trainer fits, and the settings that may change as it goes. This one, the default, is the diffusion
    loss on the data (spec A6) under one config; distillation (`kinema.train.distill`) changes the target and, round
    by round, the config. Built once per run: it holds the schedule and the noise prior."""

    verb = "training"  # the progress bar's word

    def __init__(self, cfg: RunConfig):
        self.cfg, self.schedule, self.prior = cfg, build_schedule(cfg.diffusion), build_noise(cfg.diffusion)

    def config(self, step: int) -> RunConfig:
        """The config written with a checkpoint at `step` and used for its preview."""
        return self.cfg

    def learning_rate(self, step: int) -> float:
        """lr of the update that makes step + 1."""
        return learning_rate(self.cfg, step)

    def before_step(self, state: _State) -> None:
        """Called before every update, on a fresh or a resumed state alike (so resume stays exact)."""

    def loss(self, forward, x: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
        """Per-example loss (B,) of clean data x; `forward(z, noise_level, **cond)` is the network being trained.
        With frame conditioning (cond["known_mask"]) only the unknown frames count (a masked mean over them)."""
        known = cond.get("known_mask")
        return diffusion_loss(forward, self.schedule, x, prediction=self.cfg.diffusion.prediction,
                              weighting=self.cfg.diffusion.weighting, cond=cond, generator=generator,
                              noise_sampler=self.prior.like, loss_frames=None if known is None else ~known)

    def record(self, step: int) -> dict:
        """Fields added to the log line, the progress bar and state.json at `step`."""
        return {}

    def preview(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.Tensor:
        """The videos (N, C, F, H, W) in [-1, 1] written to samples/ during training: samples of the EMA model."""
        return generate(model, cfg, cfg.train.sample_count, device=device)
