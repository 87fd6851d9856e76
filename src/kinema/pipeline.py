"""Composition: a RunConfig -> schedule, network, dataset; a checkpoint -> videos.

This is the only place that knows how the pieces fit: the trainer, the CLI and the report use it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .config import DataConfig, DiffusionConfig, RunConfig
from .diffusion import (
    ClassifierFreeGuidance,
    Conditioned,
    CosineSchedule,
    DDPMLinearSchedule,
    Denoiser,
    Schedule,
    ShiftedCosineSchedule,
    sample_ancestral,
    sample_ddim,
)
from .diffusion.parameterization import output_channels
from .models import DiT, DiTConfig, UNet3D

__all__ = ["build_schedule", "build_model", "build_dataset", "generate", "load_model", "NUM_DIGIT_CLASSES"]

NUM_DIGIT_CLASSES = 10


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.logsnr_min, cfg.logsnr_max)
    if cfg.schedule == "shifted-cosine":
        if cfg.shift_resolution <= 0:
            raise ValueError("diffusion.shift_resolution must be set (> 0) for the shifted-cosine schedule")
        return ShiftedCosineSchedule(cfg.shift_resolution, cfg.reference_resolution, cfg.logsnr_min, cfg.logsnr_max)
    return DDPMLinearSchedule()


def model_config(cfg: RunConfig):
    """The network config with its channels and class count made consistent with data and diffusion."""
    channels = cfg.data.channels
    num_classes = cfg.model.num_classes
    if cfg.train.class_conditional and num_classes == 0:
        if cfg.data.dataset != "moving-digits":
            raise ValueError("train.class_conditional needs labels: only moving-digits provides them "
                             "(or set model.num_classes for your own dataset)")
        num_classes = NUM_DIGIT_CLASSES
    return dataclasses.replace(cfg.model, in_channels=channels, num_classes=num_classes,
                               out_channels=output_channels(cfg.diffusion.prediction, channels))


def build_model(cfg: RunConfig) -> nn.Module:
    """The run's network: a `DiT` or a `UNet3D`, as the model section's `backbone` says."""
    mcfg = model_config(cfg)
    return DiT(mcfg) if isinstance(mcfg, DiTConfig) else UNet3D(mcfg)


def build_dataset(cfg: DataConfig, split: str = "train", progress: bool = True):
    from .data import ImageFolder, JointImageVideo, MovingDigits, VideoFolder

    if cfg.dataset == "moving-digits":
        ds = MovingDigits(split, cfg.frames, cfg.height, cfg.num_digits, cfg.digit_size,
                          (cfg.speed_min, cfg.speed_max), seed=cfg.seed)
    elif not cfg.path:
        raise ValueError(f"data.path must name a folder for data.dataset={cfg.dataset}")
    elif cfg.dataset == "video-folder":
        ds = VideoFolder(cfg.path, cfg.frames, cfg.height, cfg.width, cfg.stride, cfg.flip, cfg.channels, cfg.seed,
                         progress=progress)
    else:
        ds = ImageFolder(cfg.path, cfg.height, cfg.width, cfg.flip, cfg.channels, cfg.seed, progress=progress)
    if cfg.images_per_video > 0:
        if not cfg.images_path:
            raise ValueError("data.images_per_video > 0 needs data.images_path (a folder of images)")
        images = ImageFolder(cfg.images_path, cfg.height, cfg.width, cfg.flip, cfg.channels, cfg.seed, progress=progress)
        ds = JointImageVideo(ds, images, cfg.images_per_video, cfg.seed)
    return ds


@torch.no_grad()
def generate(model: nn.Module, cfg: RunConfig, num: int, *, steps: Optional[int] = None, sampler: Optional[str] = None,
             guidance: Optional[float] = None, seed: Optional[int] = None, labels: Optional[Tensor] = None,
             frames: Optional[int] = None, device: Optional[torch.device] = None, progress: bool = False,
             batch_size: int = 16) -> Tensor:
    """Sample `num` videos (num, C, F, H, W) in [-1, 1] with the run's sampler settings (overridable).

    Class-conditional models sample random classes unless `labels` is given; with guidance w > 0
    the classifier-free guidance wrapper pairs each label with the null class.
    """
    s = cfg.sample
    steps, sampler = steps or s.steps, sampler or s.sampler
    guidance = s.guidance if guidance is None else guidance
    seed = s.seed if seed is None else seed
    device = device or next(model.parameters()).device
    frames = frames or cfg.data.frames
    schedule = build_schedule(cfg.diffusion)
    denoiser = Denoiser(model, schedule, cfg.diffusion.prediction)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    null = getattr(model, "null_class", None)
    if null is not None and labels is None:
        labels = torch.randint(0, null, (num,), generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        noise = torch.randn((n, cfg.data.channels, frames, cfg.data.height, cfg.data.width), generator=gen, device=device)
        if null is not None:
            lab = labels[start:start + n].to(device)
            cond = {"labels": lab}
            denoise = (ClassifierFreeGuidance(denoiser, cond, {"labels": torch.full_like(lab, null)}, guidance)
                       if guidance > 0 else Conditioned(denoiser, cond))
        else:
            denoise = Conditioned(denoiser)
        if sampler == "ddim":
            video = sample_ddim(denoise, noise, schedule, steps, eta=s.eta, generator=gen, progress=progress)
        else:
            video = sample_ancestral(denoise, noise, schedule, steps, gamma=s.gamma, generator=gen, progress=progress)
        out.append(video.float().cpu())
    model.train(was_training)
    return torch.cat(out).clamp(-1, 1)


def load_model(checkpoint: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[RunConfig, nn.Module]:
    """Rebuild a run's network from a checkpoint folder alone (config.toml + safetensors)."""
    from safetensors.torch import load_file

    from .config import load_config
    from .train.checkpoint import resolve_checkpoint

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model'; got {weights!r}")
    path = resolve_checkpoint(checkpoint)
    cfg = load_config(path / "config.toml")
    model = build_model(cfg).to(device)
    model.load_state_dict(load_file(str(path / f"{weights}.safetensors"), device=str(device)))
    return cfg, model.eval()
