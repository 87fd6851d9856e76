"""Sampling a trained network: its conditioning inputs, the denoiser the samplers see, and the run's sampler.

Every sampling setting comes from the run's `sample` config (`kinema.config.SampleConfig`): a command applies the
user's options to it once (`kinema.config.with_sample`), and everything here reads that one object.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..build import build_noise, build_schedule, latent_view, load_autoencoder
from ..config import MAX_BATCH_ELEMENTS, MAX_FRAMES, RunConfig, SampleConfig
from ..diffusion import SAMPLERS, ClassifierFreeGuidance, Conditioned, Denoiser, FrameConditioned
from ..models import BACKBONES, DENOISER
from ..models.autoencoder import latent_frames
from ..precision import autocast, resolve_precision

__all__ = ["conditioning", "conditioned_denoiser", "run_sampler", "sampler_keywords", "sampling_record", "generate",
           "rows", "check_output_size", "check_denoiser"]

Denoise = Callable[[Tensor, Tensor], Tensor]


def conditioning(model: nn.Module, num: int, *, labels: Optional[Tensor] = None,
                 prompts: Optional[Sequence[str]] = None, seed: int = 0,
                 device: Optional[torch.device] = None) -> tuple[dict, dict]:
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
        cond["labels"], uncond["labels"] = _labels(labels, num, null, seed, device)
    if prompts is not None:
        cond["text"], cond["text_mask"], uncond["text_mask"] = _text(model, prompts, num, device)
        uncond["text"] = cond["text"]
    return cond, uncond


def _labels(labels: Optional[Tensor], num: int, null: int, seed: int, device) -> tuple[Tensor, Tensor]:
    if labels is None:
        labels = torch.randint(0, null, (num,), generator=torch.Generator().manual_seed(seed))
    labels = torch.as_tensor(labels).long().to(device)
    if labels.shape != (num,):
        raise ValueError(f"need one label per video: {num} videos but labels of shape {tuple(labels.shape)}")
    if bool((labels < 0).any()) or bool((labels > null).any()):
        raise ValueError(f"labels must lie in [0, {null - 1}] for this model ({null}: no class); "
                         f"got {labels.unique().tolist()}")
    return labels, torch.full_like(labels, null)


def _text(model: nn.Module, prompts: Sequence[str], num: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """(embeddings (num, D), keep-mask, null-mask) of one prompt for all videos or one per video."""
    from ..models.text import TextEncoder  # loads sentence-transformers: only when a prompt is given

    if isinstance(prompts, str):
        prompts = [prompts]
    if not getattr(getattr(model, "config", None), "text_dim", 0):
        raise ValueError("a text prompt was given, but this model was trained without text conditioning "
                         "(train.text_conditional = false)")
    prompts = list(prompts) * num if len(prompts) == 1 else list(prompts)
    if len(prompts) != num:
        raise ValueError(f"need one prompt, or one per video: {num} videos but {len(prompts)} prompts")
    text = TextEncoder()(prompts).to(device)
    return (text, torch.ones(num, 1, dtype=torch.bool, device=device),
            torch.zeros(num, 1, dtype=torch.bool, device=device))


def rows(inputs: dict, start: int, n: int) -> dict:
    """Rows start..start+n−1 of every tensor in a conditioning dict."""
    return {k: v[start:start + n] if isinstance(v, Tensor) else v for k, v in inputs.items()}


def conditioned_denoiser(model: nn.Module, cfg: RunConfig, cond: dict, uncond: dict,
                         known: Optional[tuple[Tensor, Sequence[int]]] = None) -> Denoise:
    """The sampler contract denoise(z, t) -> x̂ for one batch: the network, its schedule, and classifier-free
    guidance when sample.guidance > 0. `known` = (frames (B, C, K, H, W), their positions) passes known frames to a
    frame-conditioned network (`FrameConditioned`, guided over them by sample.frame_guidance)."""
    denoiser = Denoiser(model, build_schedule(cfg.diffusion), cfg.diffusion.prediction)
    if known is not None:
        denoiser = FrameConditioned(denoiser, known[0], known[1], cfg.sample.frame_guidance)
    if cfg.sample.guidance > 0 and cond:
        return ClassifierFreeGuidance(denoiser, cond, uncond, cfg.sample.guidance)
    return Conditioned(denoiser, cond)


def sampler_keywords(s: SampleConfig) -> dict:
    """What `SAMPLERS[s.sampler].solve` receives from the settings: steps, the sampler's own noise level (if it has
    one), the Langevin corrector's step count and, when it runs, its step size δ."""
    row = SAMPLERS[s.sampler]
    keywords = {"steps": s.steps, **({row.noise_level: getattr(s, row.noise_level)} if row.noise_level else {}),
                "langevin_steps": s.langevin_steps}
    if s.langevin_steps:
        keywords["langevin_delta"] = s.langevin_delta
    return keywords


def sampling_record(s: SampleConfig) -> dict:
    """The settings a sampling run used, as eval.json records them: the sampler and exactly the keywords it
    received, the guidance weight, the seed and the network's autocast format."""
    return {"sampler": s.sampler, **sampler_keywords(s), "guidance": s.guidance, "seed": s.seed,
            "precision": s.precision}


def run_sampler(denoise: Denoise, noise: Tensor, cfg: RunConfig, *, generator: Optional[torch.Generator] = None,
                progress: bool = False) -> Tensor:
    """Solve from `noise` (drawn from `build_noise(cfg.diffusion)`, as are the sampler's own draws) with the sampler
    `SAMPLERS[sample.sampler]` and `sampler_keywords(cfg.sample)`, the network in sample.precision's autocast."""
    s = cfg.sample
    # Only the network runs in the autocast format: Denoiser returns x̂ in z's dtype (fp32).
    with autocast(resolve_precision(s.precision, noise.device), noise.device):
        return SAMPLERS[s.sampler].solve(denoise, noise, build_schedule(cfg.diffusion), generator=generator,
                                         progress=progress, noise_sampler=build_noise(cfg.diffusion).like,
                                         **sampler_keywords(s))


def check_denoiser(cfg: RunConfig) -> None:
    """Refuse to sample a network that is not a denoiser (an autoencoder run), naming what it is."""
    if BACKBONES[cfg.model.backbone].kind != DENOISER:
        raise ValueError(f"the run {cfg.name!r} is an {BACKBONES[cfg.model.backbone].kind} "
                         f"({cfg.model.summary()}): it encodes and decodes clips and does not sample; "
                         "`kinema eval` scores its reconstructions")


def check_output_size(cfg: RunConfig, num: int, frames: int, window: Optional[int] = None) -> None:
    """Refuse `num` videos of `frames` frames at the model's size, before anything is allocated, unless there is at
    least one frame and they fit the bounds of kinema.config (`window`: the frames the network sees at once)."""
    d = cfg.data
    if num < 1:
        raise ValueError(f"the number of videos must be at least 1; got {num}")
    if frames < 1:
        raise ValueError(f"the number of frames must be at least 1; got {frames}")
    if window is not None and window > MAX_FRAMES:
        raise ValueError(f"{window:,} frames at once are more than the {MAX_FRAMES:,} a clip may have")
    elements = num * frames * d.height * d.width * d.channels
    if elements > MAX_BATCH_ELEMENTS:
        raise ValueError(f"{num:,} videos of {frames:,} frames of {d.height}×{d.width}×{d.channels} = {elements:,} "
                         f"elements would need {elements * 4 / 2**30:,.0f} GiB as float32, more than the "
                         f"{MAX_BATCH_ELEMENTS:,} elements ({MAX_BATCH_ELEMENTS * 4 // 2**30} GiB) kinema generates "
                         "at once; ask for fewer videos or frames")


def generate(model: nn.Module, cfg: RunConfig, num: int, *, labels: Optional[Tensor] = None,
             prompts: Optional[Sequence[str]] = None, frames: Optional[int] = None,
             device: Optional[torch.device] = None, progress: bool = False, batch_size: int = 16) -> Tensor:
    """Sample `num` videos (num, C, F, H, W) in [-1, 1] with the settings of `cfg.sample`.

    Class-conditional models sample random classes (from sample.seed) unless `labels` is given; text-conditional
    models take `prompts` (one for all, or one per video). With sample.guidance w > 0 classifier-free guidance pairs
    each condition with the null one. `frames` defaults to the training clip length.
    """
    check_denoiser(cfg)
    frames = cfg.data.frames if frames is None else frames
    if cfg.latent is not None:
        return _generate_latent(model, cfg, num, frames, labels=labels, prompts=prompts, device=device,
                                progress=progress, batch_size=batch_size)
    return _sample(model, cfg, num, frames, labels=labels, prompts=prompts, device=device, progress=progress,
                   batch_size=batch_size).clamp(-1, 1)


def _sample(model: nn.Module, cfg: RunConfig, num: int, frames: int, *, labels: Optional[Tensor],
            prompts: Optional[Sequence[str]], device: Optional[torch.device], progress: bool,
            batch_size: int) -> Tensor:
    """`num` draws of the run's sampler in the space cfg.data describes (pixels, or a latent view), unclipped."""
    check_output_size(cfg, num, frames, window=frames)
    if batch_size < 1:
        raise ValueError(f"batch_size (videos per sampling batch) must be at least 1; got {batch_size}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.sample.seed)
    prior = build_noise(cfg.diffusion)
    cond, uncond = conditioning(model, num, labels=labels, prompts=prompts, seed=cfg.sample.seed, device=device)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        noise = prior((n, cfg.data.channels, frames, cfg.data.height, cfg.data.width), generator=gen, device=device)
        denoise = conditioned_denoiser(model, cfg, rows(cond, start, n), rows(uncond, start, n))
        out.append(run_sampler(denoise, noise, cfg, generator=gen, progress=progress).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def _generate_latent(model: nn.Module, cfg: RunConfig, num: int, frames: int, *, device: Optional[torch.device],
                     batch_size: int, **kwargs) -> Tensor:
    """`generate` for a latent run: sample latents in the run's latent view, then decode them (latent / scale) with
    its autoencoder to `frames` pixel frames."""
    device = device or next(model.parameters()).device
    ae_cfg, autoencoder = load_autoencoder(cfg, device)
    view = latent_view(cfg, ae_cfg)
    latents = _sample(model, view, num, latent_frames(frames, ae_cfg.model.temporal_factor), device=device,
                      batch_size=batch_size, **kwargs)  # unclipped: latents have unit variance, not a range
    with torch.no_grad():
        videos = [autoencoder.decode(latents[i:i + batch_size].to(device) / cfg.latent.scale, frames).float().cpu()
                  for i in range(0, num, batch_size)]
    return torch.cat(videos).clamp(-1, 1)
