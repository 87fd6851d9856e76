"""Composition: a RunConfig -> schedule, network, dataset; a checkpoint -> videos.

This is the only place that knows how the pieces fit: the trainer, the CLI and the report use it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .config import DataConfig, DiffusionConfig, RunConfig
from .diffusion import (
    ClassifierFreeGuidance,
    Conditioned,
    CosineSchedule,
    DDPMLinearSchedule,
    Denoiser,
    FrameNoise,
    Schedule,
    ShiftedCosineSchedule,
    sample_ancestral,
    sample_ddim,
)
from .diffusion.parameterization import output_channels
from .models import DiT, DiTConfig, UNet3D
from .precision import autocast, resolve_precision

__all__ = ["build_schedule", "build_noise", "build_model", "build_dataset", "generate", "load_model", "conditioning",
           "conditioned_denoiser", "run_sampler", "NUM_DIGIT_CLASSES"]

NUM_DIGIT_CLASSES = 10
Denoise = Callable[[Tensor, Tensor], Tensor]


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.logsnr_min, cfg.logsnr_max)
    if cfg.schedule == "shifted-cosine":
        if cfg.shift_resolution <= 0:
            raise ValueError("diffusion.shift_resolution must be set (> 0) for the shifted-cosine schedule")
        return ShiftedCosineSchedule(cfg.shift_resolution, cfg.reference_resolution, cfg.logsnr_min, cfg.logsnr_max)
    return DDPMLinearSchedule()


def build_noise(cfg: DiffusionConfig) -> FrameNoise:
    """The run's noise distribution: training, the initial z_1 and every sampler draw use this one."""
    return FrameNoise(cfg.frame_noise_correlation)


def model_config(cfg: RunConfig):
    """The network config with its channels and class count made consistent with data and diffusion."""
    channels = cfg.data.channels
    num_classes = cfg.model.num_classes
    if cfg.train.class_conditional and num_classes == 0:
        if cfg.data.dataset != "moving-digits":
            raise ValueError("train.class_conditional needs labels: only moving-digits provides them "
                             "(or set model.num_classes for your own dataset)")
        num_classes = NUM_DIGIT_CLASSES
    text_dim = cfg.model.text_dim
    if cfg.train.text_conditional:
        if cfg.data.dataset != "moving-digits":
            raise ValueError("train.text_conditional needs captions: only moving-digits provides them")
        from .text import TEXT_DIM

        if text_dim not in (0, TEXT_DIM):
            raise ValueError(f"model.text_dim is {text_dim}, but the sentence encoder gives {TEXT_DIM}-d embeddings")
        text_dim = TEXT_DIM
    return dataclasses.replace(cfg.model, in_channels=channels, num_classes=num_classes, text_dim=text_dim,
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


def conditioning(model: nn.Module, num: int, *, labels: Optional[Tensor] = None, prompts: Optional[Sequence[str]] = None,
                 seed: int = 0, device: Optional[torch.device] = None) -> tuple[dict, dict]:
    """(cond, uncond) network inputs for `num` videos; uncond is the classifier-free-guidance "null".

    A class-conditional model gets `labels` (random classes from `seed` when None; the null class
    `model.null_class` asks for an unconditional sample) and the null class; a text-conditional
    model gets the encoded `prompts` and the same embeddings masked out (its learned null text);
    without prompts it samples unconditionally. Inputs a model was not trained with are errors.
    """
    device = device or next(model.parameters()).device
    cond: dict = {}
    uncond: dict = {}
    null = getattr(model, "null_class", None)
    if labels is not None and null is None:
        raise ValueError("labels were given, but this model was trained without class conditioning")
    if null is not None:
        if labels is None:
            labels = torch.randint(0, null, (num,), generator=torch.Generator().manual_seed(seed))
        labels = torch.as_tensor(labels).long().to(device)
        if labels.shape != (num,):
            raise ValueError(f"need one label per video: {num} videos but labels of shape {tuple(labels.shape)}")
        if bool((labels < 0).any()) or bool((labels > null).any()):
            raise ValueError(f"labels must lie in [0, {null - 1}] for this model ({null}: no class); "
                             f"got {labels.unique().tolist()}")
        cond["labels"], uncond["labels"] = labels, torch.full_like(labels, null)
    text_dim = getattr(getattr(model, "config", None), "text_dim", 0)
    if prompts is not None:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not text_dim:
            raise ValueError("a text prompt was given, but this model was trained without text conditioning "
                             "(train.text_conditional = false)")
        prompts = list(prompts) * num if len(prompts) == 1 else list(prompts)
        if len(prompts) != num:
            raise ValueError(f"need one prompt, or one per video: {num} videos but {len(prompts)} prompts")
        from .text import TextEncoder

        text = TextEncoder()(prompts).to(device)
        cond["text"], uncond["text"] = text, text
        cond["text_mask"] = torch.ones(num, 1, dtype=torch.bool, device=device)
        uncond["text_mask"] = torch.zeros(num, 1, dtype=torch.bool, device=device)
    return cond, uncond


def _rows(inputs: dict, start: int, n: int) -> dict:
    return {k: v[start:start + n] if isinstance(v, Tensor) else v for k, v in inputs.items()}


def conditioned_denoiser(model: nn.Module, cfg: RunConfig, cond: dict, uncond: dict, guidance: float) -> Denoise:
    """The sampler contract denoise(z, t) -> x̂ for one batch: the network, its schedule, and CFG if w > 0."""
    denoiser = Denoiser(model, build_schedule(cfg.diffusion), cfg.diffusion.prediction)
    if guidance > 0 and cond:
        return ClassifierFreeGuidance(denoiser, cond, uncond, guidance)
    return Conditioned(denoiser, cond)


def run_sampler(denoise: Denoise, noise: Tensor, cfg: RunConfig, *, steps: Optional[int] = None,
                sampler: Optional[str] = None, gamma: Optional[float] = None, langevin_steps: Optional[int] = None,
                generator: Optional[torch.Generator] = None, progress: bool = False) -> Tensor:
    """Run the configured sampler (sample.sampler/steps/eta/gamma/langevin_steps/langevin_delta; steps, sampler,
    gamma and langevin_steps overridable) from `noise` (drawn from `build_noise(cfg.diffusion)`, as are the
    sampler's own draws)."""
    s = cfg.sample
    steps, sampler = steps or s.steps, sampler or s.sampler
    corrector = {"langevin_steps": s.langevin_steps if langevin_steps is None else langevin_steps,
                 "langevin_delta": s.langevin_delta}
    schedule = build_schedule(cfg.diffusion)
    if sampler not in ("ddim", "ancestral"):
        raise ValueError(f"sampler must be 'ddim' or 'ancestral'; got {sampler!r}")
    if sampler == "ddim" and gamma is not None:  # it would otherwise be silently ignored
        raise ValueError(f"gamma (the ancestral sampler's noise) does not apply to the ddim sampler; got gamma={gamma}")
    gamma = s.gamma if gamma is None else gamma
    # Only the network runs in the autocast format: Denoiser returns x̂ in z's dtype (fp32).
    draw = build_noise(cfg.diffusion).like
    with autocast(resolve_precision(s.precision, noise.device), noise.device):
        if sampler == "ddim":
            return sample_ddim(denoise, noise, schedule, steps, eta=s.eta, generator=generator, progress=progress,
                               noise_sampler=draw, **corrector)
        return sample_ancestral(denoise, noise, schedule, steps, gamma=gamma, generator=generator,
                                progress=progress, noise_sampler=draw, **corrector)


@torch.no_grad()
def generate(model: nn.Module, cfg: RunConfig, num: int, *, steps: Optional[int] = None, sampler: Optional[str] = None,
             gamma: Optional[float] = None, guidance: Optional[float] = None, seed: Optional[int] = None,
             labels: Optional[Tensor] = None, langevin_steps: Optional[int] = None,
             prompts: Optional[Sequence[str]] = None, frames: Optional[int] = None,
             device: Optional[torch.device] = None, progress: bool = False, batch_size: int = 16) -> Tensor:
    """Sample `num` videos (num, C, F, H, W) in [-1, 1] with the run's sampler settings (overridable).

    Class-conditional models sample random classes unless `labels` is given; text-conditional
    models take `prompts` (one for all, or one per video). With guidance w > 0 classifier-free
    guidance pairs each condition with the null one.
    """
    guidance = cfg.sample.guidance if guidance is None else guidance
    seed = cfg.sample.seed if seed is None else seed
    device = device or next(model.parameters()).device
    frames = frames or cfg.data.frames
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    prior = build_noise(cfg.diffusion)
    cond, uncond = conditioning(model, num, labels=labels, prompts=prompts, seed=seed, device=device)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        noise = prior((n, cfg.data.channels, frames, cfg.data.height, cfg.data.width), generator=gen, device=device)
        denoise = conditioned_denoiser(model, cfg, _rows(cond, start, n), _rows(uncond, start, n), guidance)
        out.append(run_sampler(denoise, noise, cfg, steps=steps, sampler=sampler, gamma=gamma,
                               langevin_steps=langevin_steps, generator=gen,
                               progress=progress).float().cpu())
    model.train(was_training)
    return torch.cat(out).clamp(-1, 1)


def load_model(checkpoint: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[RunConfig, nn.Module]:
    """Rebuild a run's network from a checkpoint folder alone (config.toml + safetensors), a run folder,
    or a shipped model's name (`kinema.pretrained`)."""
    from safetensors.torch import load_file

    from .config import load_config
    from .train.checkpoint import resolve_checkpoint

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model'; got {weights!r}")
    path = resolve_checkpoint(checkpoint)
    file = path / f"{weights}.safetensors"
    if not file.is_file():
        other = "model" if weights == "ema" else "ema"
        raise FileNotFoundError(f"{path}: holds no {weights} weights ({file.name}); use --weights {other}")
    cfg = load_config(path / "config.toml")
    model = build_model(cfg).to(device)
    # load_state_dict casts: half-precision exports load into the fp32 network
    model.load_state_dict(load_file(str(file), device=str(device)))
    return cfg, model.eval()
