"""Config → objects: the schedule, the noise, the network and the dataset of a run; a checkpoint folder → its network.

The only place that knows how a `RunConfig` turns into the pieces: training, sampling and evaluation call it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from .checkpoint import check_weights, load_weights, resolve_checkpoint
from .config import DataConfig, DiffusionConfig, RunConfig, load_config
from .data import DATASETS, ImageFolder, JointImageVideo
from .diffusion import CosineSchedule, FrameNoise, Schedule, ShiftedCosineSchedule
from .diffusion.parameterization import output_channels
from .diffusion.schedules import SCHEDULES
from .models import AUTOENCODER, BACKBONES
from .models.autoencoder import latent_frames
from .models.text import TEXT_DIM

__all__ = ["build_schedule", "build_noise", "resolve_model", "build_model", "build_dataset", "load_model",
           "latent_view", "denoiser_space", "load_autoencoder"]


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    """The `SCHEDULES[diffusion.schedule]` schedule with the fields it takes (the DDPM one has fixed β's)."""
    cls = SCHEDULES[cfg.schedule]
    if cls is ShiftedCosineSchedule:
        if cfg.shift_resolution <= 0:
            raise ValueError("diffusion.shift_resolution must be set (> 0) for the shifted-cosine schedule")
        return cls(cfg.shift_resolution, cfg.reference_resolution, cfg.logsnr_min, cfg.logsnr_max)
    if cls is CosineSchedule:
        return cls(cfg.logsnr_min, cfg.logsnr_max)
    return cls()


def build_noise(cfg: DiffusionConfig) -> FrameNoise:
    """The run's noise distribution: training, the initial z_1 and every sampler draw use this one."""
    return FrameNoise(cfg.frame_noise_correlation)


def resolve_model(cfg: RunConfig) -> RunConfig:
    """`cfg` with the model section as the network is built: channels from the data, the class count and text width
    from what the dataset provides and the conditioning asks for, output channels from the parameterization.
    Training saves this, so a run's config.toml says what its network is; applying it twice changes nothing."""
    if BACKBONES[cfg.model.backbone].kind == AUTOENCODER:  # clips in, clips out: nothing else to resolve
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=cfg.data.channels))
    channels, num_classes, text_dim = cfg.data.channels, cfg.model.num_classes, cfg.model.text_dim
    if cfg.latent is not None:  # the denoiser's channels are the latent's; the autoencoder is pinned to a folder
        folder = _autoencoder_folder(cfg)
        cfg = dataclasses.replace(cfg, latent=dataclasses.replace(cfg.latent, autoencoder=str(folder)))
        channels = latent_view(cfg, _autoencoder_config(cfg, folder)).data.channels
    if cfg.train.text_conditional and text_dim not in (0, TEXT_DIM):
        raise ValueError(f"model.text_dim is {text_dim}, but the sentence encoder gives {TEXT_DIM}-d embeddings")
    needs_labels = cfg.train.class_conditional and num_classes == 0
    needs_text = cfg.train.text_conditional and text_dim == 0
    if needs_labels or needs_text:  # a resolved config (a checkpoint's) asks nothing of the data
        provides = DATASETS[cfg.data.dataset].provides(cfg.data)
        if needs_labels and not provides.num_classes:
            raise ValueError(f"train.class_conditional needs labels, and {provides.where} provides none "
                             "(set model.num_classes for your own labelled dataset)")
        if needs_text and not provides.captions:
            raise ValueError(f"train.text_conditional needs captions, and {provides.where} provides none")
        num_classes = provides.num_classes if needs_labels else num_classes
        text_dim = TEXT_DIM if needs_text else text_dim
    return _with_model(cfg, channels, num_classes, text_dim)


def _autoencoder_folder(cfg: RunConfig) -> Path:
    """The checkpoint folder latent.autoencoder names (a run: its newest checkpoint), absolute; a clear error when
    it is gone, since a latent run's samples need the decoder it was trained with."""
    try:
        return resolve_checkpoint(cfg.latent.autoencoder).resolve()
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f"latent.autoencoder: {err} (a latent diffusion run encodes and decodes with the "
                                "autoencoder it names; keep that folder, or set latent.autoencoder to its copy)"
                                ) from err


def _autoencoder_config(cfg: RunConfig, folder: Path) -> RunConfig:
    """The autoencoder run's config, checked against the latent run's data: an autoencoder, of the same channels,
    and of a spatial factor the frames divide."""
    ae = load_config(folder / "config.toml")
    if BACKBONES[ae.model.backbone].kind != AUTOENCODER:
        raise ValueError(f"latent.autoencoder: {folder} holds a {ae.model.backbone} model, not an autoencoder")
    d, s = cfg.data, ae.model.spatial_factor
    if ae.data.channels != d.channels or d.height % s or d.width % s:
        raise ValueError(f"latent.autoencoder: {folder} encodes {ae.data.channels}-channel frames with height and "
                         f"width multiples of {s}; this run's data is {d.channels}-channel {d.height}×{d.width}")
    return ae


def latent_view(cfg: RunConfig, autoencoder: RunConfig) -> RunConfig:
    """`cfg` as its denoiser sees it: the data section shaped as the latents of `autoencoder`'s (its config), the
    latent section dropped. Sampling, the size checks and the FLOP count run on this view."""
    m, data = autoencoder.model, copy.copy(cfg.data)
    # set, not dataclasses.replace: a latent has any channel count, which DataConfig (frames to decode: 1 or 3)
    # refuses; the view is never used to read data
    data.frames = latent_frames(data.frames, m.temporal_factor)
    data.channels, data.height, data.width = (m.latent_channels, data.height // m.spatial_factor,
                                              data.width // m.spatial_factor)
    return dataclasses.replace(cfg, data=data, latent=None)


def denoiser_space(cfg: RunConfig) -> RunConfig:
    """`cfg` itself for a pixel-space run, its `latent_view` for a latent one."""
    if cfg.latent is None:
        return cfg
    return latent_view(cfg, _autoencoder_config(cfg, _autoencoder_folder(cfg)))


def load_autoencoder(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[RunConfig, nn.Module]:
    """The (config, EMA network) of a latent run's autoencoder, frozen, in eval mode."""
    folder = _autoencoder_folder(cfg)
    ae_cfg = _autoencoder_config(cfg, folder)
    _, network = load_model(folder, device=device)
    return ae_cfg, network.requires_grad_(False)


def _with_model(cfg: RunConfig, channels: int, num_classes: int, text_dim: int) -> RunConfig:
    model = dataclasses.replace(cfg.model, in_channels=channels, num_classes=num_classes, text_dim=text_dim,
                                out_channels=output_channels(cfg.diffusion.prediction, channels))
    return dataclasses.replace(cfg, model=model)


MAX_PARAMETERS = 10**10  # a bound against typos (model.base_channels=100000): 40 GB as float32; largest preset 1.2e9


def build_model(cfg: RunConfig) -> nn.Module:
    """The run's network, of the class `BACKBONES[model.backbone]` names; one of more than `MAX_PARAMETERS`
    parameters is refused, counted on the meta device before anything is allocated."""
    model = resolve_model(cfg).model
    network = BACKBONES[model.backbone].network
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in network(model).parameters())
    except RuntimeError as err:  # sizes beyond what a tensor can have
        reason = str(err).strip().partition("\n")[0]
        raise ValueError(f"model: cannot build {model.summary()} ({reason})") from err
    if count > MAX_PARAMETERS:
        raise ValueError(f"model: {model.summary()} has {count:,} parameters ({count * 4 / 1e9:,.0f} GB as float32), "
                         f"more than the {MAX_PARAMETERS:,} kinema builds; check the model section's sizes")
    return network(model)


def build_dataset(cfg: DataConfig, split: str = "train", progress: bool = True):
    """The `DATASETS[data.dataset]` dataset of `split`, with images appended to each clip for joint training."""
    ds = DATASETS[cfg.dataset].from_config(cfg, split, progress)
    if cfg.images_per_video > 0:
        if not cfg.images_path:
            raise ValueError("data.images_per_video > 0 needs data.images_path (a folder of images)")
        images = ImageFolder.from_config(cfg, split, progress, path=cfg.images_path)
        ds = JointImageVideo(ds, images, cfg.images_per_video, cfg.seed)
    return ds


def load_model(checkpoint: str | Path, weights: str = "ema",
               device: str | torch.device = "cpu") -> tuple[RunConfig, nn.Module]:
    """Rebuild a run's network from a checkpoint folder alone (config.toml + safetensors), a run folder,
    or a shipped model's name (see `kinema.checkpoint.resolve_checkpoint`)."""
    path = resolve_checkpoint(checkpoint)
    file = path / f"{weights}.safetensors"
    try:
        state = load_weights(path, weights, device)
    except SafetensorError as err:  # a truncated or corrupt file
        raise ValueError(f"{file}: cannot read the weights ({err})") from err
    cfg = load_config(path / "config.toml")
    model = build_model(cfg).to(device)
    check_weights(file, state, model.state_dict())
    model.load_state_dict(state)  # load_state_dict casts: half-precision exports load into the fp32 network
    return cfg, model.eval()
