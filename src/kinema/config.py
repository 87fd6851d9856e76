"""Typed run configuration: dataclasses, TOML files, and `section.field=value` overrides.

A run is described by one `RunConfig` (model, diffusion, data, train, sample). It is written as
`config.toml` next to every checkpoint, so a checkpoint folder alone is enough to sample. Unknown
fields and values of the wrong type are errors that name the field.

The model section holds either backbone's config, told apart by its `backbone` field ("unet3d" or
"dit"). A model table without that field keeps the backbone of the config it is applied to; for a
file loaded on its own that is the default U-Net, so config.toml files written before the DiT
existed still load as U-Nets. Naming another backbone starts from that backbone's defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple, Union

from .data import DATASETS
from .data.windows import BALANCES
from .diffusion.distillation import DISTILL_WEIGHTINGS
from .diffusion.losses import RECONSTRUCTION_LOSSES
from .diffusion.parameterization import PREDICTIONS, WEIGHTINGS
from .diffusion.samplers import SAMPLERS
from .diffusion.schedules import SCHEDULES
from .models import (
    AUTOENCODER,
    AUTOENCODER_PRESETS,
    BACKBONES,
    DIT_PRESETS,
    UNET_PRESETS,
    AutoencoderConfig,
    DiTConfig,
    UNet3DConfig,
)
from .precision import PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DiffusionConfig", "DataConfig", "TrainConfig", "SampleConfig", "DistillConfig", "LatentConfig", "RunConfig",
           "RUN_PRESETS", "ModelConfig", "MODEL_CONFIGS", "ConfigError", "load_config", "save_config",
           "apply_overrides", "config_from_dict", "config_to_dict", "with_sample", "changed_fields", "changes_shape",
           "MAX_FRAMES", "MAX_SIDE", "MAX_CLIP_ELEMENTS", "MAX_BATCH_ELEMENTS"]


class ConfigError(ValueError):
    """A user error in a configuration file or override; the message names the field."""


ModelConfig = Union[UNet3DConfig, DiTConfig, AutoencoderConfig]
MODEL_CONFIGS = {name: row.config for name, row in BACKBONES.items()}  # the `backbone` field's values


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # a kinema.diffusion.schedules.SCHEDULES name
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift_resolution: float = 0.0  # shifted-cosine: working resolution d; shift 2 log(reference/d)
    reference_resolution: float = 64.0
    prediction: str = "v"  # v | eps | x | both
    # auto (natural_weighting: eps -> eps-mse, ...) | v-mse | eps-mse | x-mse | snr-trunc | min-snr
    weighting: str = "auto"
    frame_noise_correlation: float = 0.0  # ρ: ε shares a component √ρ across a video's frames (FrameNoise)

    def __post_init__(self) -> None:
        _check_finite("diffusion", self)
        if not self.reference_resolution > 0:
            raise ConfigError(f"diffusion.reference_resolution must be positive; got {self.reference_resolution}")
        if not 0.0 <= self.frame_noise_correlation < 1.0:
            raise ConfigError("diffusion.frame_noise_correlation must lie in [0, 1); "
                              f"got {self.frame_noise_correlation}")
        _choice("diffusion.schedule", self.schedule, tuple(SCHEDULES))
        _choice("diffusion.prediction", self.prediction, PREDICTIONS)
        _choice("diffusion.weighting", self.weighting, WEIGHTINGS)


@dataclass
class DataConfig:
    dataset: str = "moving-digits"  # a kinema.data.DATASETS name
    path: str = ""  # folder for video-folder / image-folder; the cache folder for clips (made by kinema prepare)
    frames: int = 8
    height: int = 32
    width: int = 32
    channels: int = 1  # moving-digits is grey; folders may use 1 or 3
    num_digits: int = 1
    digit_size: int = 14
    speed_min: float = 1.0
    speed_max: float = 3.0
    stride: int = 1
    fps: float = 0.0  # resample videos to this rate by their timestamps (0: every frame, at the source's rate)
    balance: str = "clips"  # video-folder / clips: each clip equally likely per draw, or each file ("files")
    flip: bool = True
    images_path: str = ""  # joint image+video training: a folder of images
    images_per_video: int = 0
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_finite("data", self)
        _choice("data.dataset", self.dataset, tuple(DATASETS))
        _choice("data.balance", self.balance, BALANCES)
        if self.fps < 0:
            raise ConfigError(f"data.fps must be 0 (the source's rate) or a positive rate; got {self.fps}")
        for name in ("frames", "height", "width", "stride", "digit_size", "num_digits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be positive; got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3; got {self.channels}")
        for name in ("images_per_video", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be 0 or more; got {getattr(self, name)}")
        # Bounds against typos (an extra zero or two), checked before anything is allocated.
        for name, limit in (("frames", MAX_FRAMES), ("height", MAX_SIDE), ("width", MAX_SIDE)):
            if getattr(self, name) > limit:
                raise ConfigError(f"data.{name} must be at most {limit} (a bound against typos: no clip that large "
                                  f"could be allocated); got {getattr(self, name)}")
        elements = self.frames * self.height * self.width * self.channels
        if elements > MAX_CLIP_ELEMENTS:
            raise ConfigError(f"data: a clip of {self.frames}×{self.height}×{self.width}×{self.channels} "
                              f"(frames×height×width×channels) = {elements:,} elements would need "
                              f"{elements * 4 / 2**30:.0f} GiB as float32, more than the {MAX_CLIP_ELEMENTS:,} "
                              f"elements ({MAX_CLIP_ELEMENTS * 4 // 2**30} GiB) a clip may have; "
                              "reduce data.frames, data.height or data.width")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16  # global batch (all ranks and accumulation steps together)
    grad_accum: int = 1
    lr: float = 5e-4
    warmup_steps: int = 100
    decay_steps: int = 0  # the last decay_steps of train.steps anneal lr linearly towards 0; 0: constant after warm-up
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.999
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where supported)
    seed: int = 0
    class_conditional: bool = False
    label_dropout: float = 0.1  # classifier-free guidance: labels replaced by the null class this often
    text_conditional: bool = False  # condition on captions (moving-digits) through the bundled sentence encoder
    text_dropout: float = 0.1  # classifier-free guidance: captions dropped (null text) this often
    # frame conditioning (model.frame_conditioning): relative weights of the known-frame patterns drawn per example,
    # (none, prefix of k frames, first and last, random subset); "none" is also the dropped condition of guidance
    frame_patterns: Tuple[float, float, float, float] = (0.1, 0.5, 0.2, 0.2)
    # autoencoder runs (model.backbone=autoencoder): the reconstruction loss (a RECONSTRUCTION_LOSSES name) and the
    # weight of the KL term, both per input element (kinema.diffusion.losses.autoencoder_loss). L2, not Stable
    # Diffusion's L1: overfitting a batch of mostly-black glyph clips (tests/models/test_autoencoder.py), L1's
    # median held a fresh autoencoder at the blank background for 300 steps, where L2 got past it
    reconstruction_loss: str = "l2"
    kl_weight: float = 1e-6
    log_every: int = 10
    sample_every: int = 500  # 0 disables sample videos during training
    sample_count: int = 16
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    time_limit_minutes: float = 0.0  # 0: no limit; otherwise stop (and checkpoint) after this wall-clock time

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _check_finite("train", self)
        _choice("train.precision", self.precision, PRECISIONS)
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints",
                     "sample_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be positive; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive; got {self.lr}")
        for name in ("warmup_steps", "sample_every", "weight_decay", "grad_clip", "time_limit_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be 0 or more; got {getattr(self, name)}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ConfigError(f"train.betas[{i}] must lie in [0, 1); got {beta}")
        if not 0 <= self.decay_steps <= self.steps:
            raise ConfigError(f"train.decay_steps must lie in [0, train.steps = {self.steps}]; got {self.decay_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in [0, 1); got {self.ema_decay}")
        for name in ("label_dropout", "text_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train.{name} must lie in [0, 1]; got {getattr(self, name)}")
        _choice("train.reconstruction_loss", self.reconstruction_loss, tuple(RECONSTRUCTION_LOSSES))
        if self.kl_weight < 0:
            raise ConfigError(f"train.kl_weight must be 0 or more; got {self.kl_weight}")
        self.frame_patterns = tuple(float(w) for w in self.frame_patterns)
        if len(self.frame_patterns) != 4 or min(self.frame_patterns) < 0 or not sum(self.frame_patterns) > 0:
            raise ConfigError("train.frame_patterns must be 4 weights >= 0, not all 0, of the patterns (none, prefix, "
                              f"first_last, subset); got {self.frame_patterns}")


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # a kinema.diffusion.SAMPLERS name
    steps: int = 50
    eta: float = 0.0
    gamma: float = 0.1
    # VDM's Langevin corrector (predictor-corrector): corrector steps after each sampler step, each one more
    # network call, and its step size δ (spec A2)
    langevin_steps: int = 0
    langevin_delta: float = 0.1
    guidance: float = 0.0
    frame_guidance: float = 0.0  # classifier-free guidance over the known frames of a frame-conditioned model
    seed: int = 0
    fps: float = 8.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto: the network's autocast format while sampling

    def __post_init__(self) -> None:
        _check_finite("sample", self)
        _choice("sample.sampler", self.sampler, tuple(SAMPLERS))
        if self.steps < 1:
            raise ConfigError(f"sample.steps must be positive; got {self.steps}")
        if self.eta < 0:
            raise ConfigError(f"sample.eta must be 0 or more; got {self.eta}")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"sample.gamma must lie in [0, 1]; got {self.gamma}")
        if self.fps <= 0:
            raise ConfigError(f"sample.fps must be positive; got {self.fps}")
        if self.langevin_steps < 0:
            raise ConfigError(f"sample.langevin_steps must be 0 or more; got {self.langevin_steps}")
        if not self.langevin_delta > 0:
            raise ConfigError(f"sample.langevin_delta must be positive; got {self.langevin_delta}")
        if self.frame_guidance < 0:
            raise ConfigError(f"sample.frame_guidance must be 0 or more; got {self.frame_guidance}")
        _choice("sample.precision", self.precision, PRECISIONS)


@dataclass
class LatentConfig:
    """Latent diffusion (issue 22): the run's denoiser models the latents of a trained video autoencoder instead of
    pixels; training encodes each clip, sampling decodes. Present only in a latent run."""

    autoencoder: str = ""  # an autoencoder run or checkpoint folder; the trained run records the folder it used
    scale: float = 0.0  # latents are multiplied by it to unit variance; 0: measured on the data when training starts

    def __post_init__(self) -> None:
        _check_finite("latent", self)
        if not self.autoencoder:
            raise ConfigError("latent.autoencoder must name an autoencoder run or checkpoint folder "
                              "(kinema train --preset ae-digits64 trains one)")
        if self.scale < 0:
            raise ConfigError(f"latent.scale must be positive (or 0: measured when training starts); got {self.scale}")


@dataclass
class DistillConfig:
    """Progressive distillation (spec A9): the teacher's DDIM sampler of `start_steps` steps is halved round by round
    into a student of `end_steps` steps, each round `steps_per_round` updates. Present only in a distilled run."""

    teacher: str = ""  # the teacher as given (run, checkpoint folder or shipped name); its copy is rounds/nSTART
    start_steps: int = 256  # the teacher's DDIM steps; round r's student samples in start_steps / 2^r
    end_steps: int = 4
    steps_per_round: int = 2000
    guidance: float = 0.0  # the classifier-free guidance weight w the teacher is distilled at (baked into students)

    def __post_init__(self) -> None:
        _check_finite("distill", self)
        if self.end_steps < 1 or self.steps_per_round < 1:
            raise ConfigError("distill.end_steps and distill.steps_per_round must be positive; got "
                              f"{self.end_steps} and {self.steps_per_round}")
        ratio = self.start_steps // self.end_steps
        if self.start_steps <= self.end_steps or ratio * self.end_steps != self.start_steps or ratio & (ratio - 1):
            raise ConfigError(f"distill.start_steps ({self.start_steps}) must be distill.end_steps ({self.end_steps}) "
                              "times a power of two above 1: each round halves the step count")
        if self.guidance < 0:
            raise ConfigError(f"distill.guidance must be 0 or more (0 = unguided); got {self.guidance}")

    @property
    def rounds(self) -> int:
        return (self.start_steps // self.end_steps).bit_length() - 1


@dataclass
class RunConfig:
    name: str = "tiny"
    model: ModelConfig = field(default_factory=lambda: copy.deepcopy(UNET_PRESETS["tiny"]))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: Optional[DistillConfig] = None  # set in a distilled run only
    latent: Optional[LatentConfig] = None  # set in a latent diffusion run only

    def __post_init__(self) -> None:
        if self.distill is not None:
            _check_distill(self)
        if self.latent is not None:
            _check_latent(self)
        if getattr(self.model, "frame_conditioning", False) and self.data.frames < 2:
            raise ConfigError(f"model.frame_conditioning needs clips of at least 2 frames (one known, one to "
                              f"generate); data.frames is {self.data.frames}")
        if BACKBONES[self.model.backbone].kind == AUTOENCODER:
            _check_autoencoder(self)
        d, t = self.data, self.train
        clips = -(-t.batch_size // t.grad_accum)  # one process's micro-batch
        elements = clips * d.frames * d.height * d.width * d.channels
        if elements > MAX_BATCH_ELEMENTS:
            raise ConfigError(f"train.batch_size: {clips:,} clips (train.batch_size={t.batch_size} / train.grad_accum="
                              f"{t.grad_accum}) of {d.frames}×{d.height}×{d.width}×{d.channels} = {elements:,} "
                              f"elements would need {elements * 4 / 2**30:,.0f} GiB as float32 on one process, more "
                              f"than the {MAX_BATCH_ELEMENTS:,} elements ({MAX_BATCH_ELEMENTS * 4 // 2**30} GiB) a "
                              "micro-batch may have; reduce train.batch_size or raise train.grad_accum")


def _check_latent(cfg: RunConfig) -> None:
    """A latent run's settings that latent space does not support (yet), refused with the field named."""
    for name, used in (("model.backbone=autoencoder", BACKBONES[cfg.model.backbone].kind == AUTOENCODER),
                       ("model.frame_conditioning", getattr(cfg.model, "frame_conditioning", False)),
                       ("distill", cfg.distill is not None),
                       ("data.images_per_video", cfg.data.images_per_video > 0)):
        if used:
            raise ConfigError(f"{name}: not supported in a latent diffusion run (latent.autoencoder is set)")


def _check_autoencoder(cfg: RunConfig) -> None:
    """An autoencoder run's settings that only a diffusion model has, refused with the field named."""
    t, s = cfg.train, cfg.model.spatial_factor
    for name, used in (("train.class_conditional", t.class_conditional), ("train.text_conditional",
                       t.text_conditional), ("distill", cfg.distill is not None),
                       ("data.images_per_video", cfg.data.images_per_video > 0)):
        if used:
            raise ConfigError(f"{name}: an autoencoder (model.backbone=autoencoder) is trained on clips alone; "
                              "unset it")
    if cfg.data.height % s or cfg.data.width % s:
        raise ConfigError(f"data.height and data.width ({cfg.data.height}×{cfg.data.width}) must be multiples of "
                          f"the autoencoder's spatial factor {s} (2 per level after the first of model.channel_mults)")


def _check_distill(cfg: RunConfig) -> None:
    """A distillation's run settings that its rounds depend on, each refused with the field named."""
    dc, tc = cfg.distill, cfg.train
    if getattr(cfg.model, "frame_conditioning", False):
        raise ConfigError("model.frame_conditioning: distilling a frame-conditioned model is not supported yet (the "
                          "student's loss would count the known frames); distil a model without it")
    if tc.steps != dc.rounds * dc.steps_per_round:
        raise ConfigError(f"train.steps ({tc.steps}) of a distillation must be its {dc.rounds} rounds × "
                          f"distill.steps_per_round ({dc.steps_per_round}) = {dc.rounds * dc.steps_per_round}; "
                          "set distill.steps_per_round instead")
    if tc.decay_steps > dc.steps_per_round:
        raise ConfigError(f"train.decay_steps ({tc.decay_steps}) must be at most distill.steps_per_round "
                          f"({dc.steps_per_round}): each round has its own warm-up and decay")
    if cfg.diffusion.prediction == "eps":
        raise ConfigError("diffusion.prediction=eps cannot be distilled: x̂ = (z − σ ε̂)/α explodes near t = 1, where a "
                          "few-step student takes its first step (spec A9); distil a v, x or both model")
    if cfg.diffusion.weighting not in DISTILL_WEIGHTINGS:
        raise ConfigError(f"diffusion.weighting of a distillation must be one of {', '.join(DISTILL_WEIGHTINGS)} (a "
                          f"weight of at least 1 at t = 1); got {cfg.diffusion.weighting!r}")


# data: the largest clip accepted (bounds against typos, checked before anything is allocated); generous on purpose
MAX_FRAMES = 65536
MAX_SIDE = 16384
MAX_CLIP_ELEMENTS = 2**31  # frames × height × width × channels: 8 GiB per clip as float32
MAX_BATCH_ELEMENTS = 2**34  # a micro-batch of clips: 64 GiB as float32


def _check_finite(section: str, cfg) -> None:
    """Refuse NaN and ±inf in any float field (or tuple of floats) of a config section, naming the field."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for i, item in enumerate(value) if isinstance(value, tuple) else ((None, value),):
            if isinstance(item, float) and not math.isfinite(item):
                index = "" if i is None else f"[{i}]"
                raise ConfigError(f"{section}.{f.name}{index} must be a finite number; got {item!r}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")


RUN_PRESETS = {
    # CPU minutes: 8 frames of 32×32 Moving Digits with the tiny U-Net.
    "tiny": RunConfig(name="tiny"),
    "small": RunConfig(name="small", model=copy.deepcopy(UNET_PRESETS["small"]),
                       train=TrainConfig(steps=20000, lr=3e-4)),
    # The same data and budget with the spacetime transformer.
    "dit-tiny": RunConfig(name="dit-tiny", model=copy.deepcopy(DIT_PRESETS["dit-tiny"])),
    # `make demo` and the shipped `moving-digits` model: what the temporal-consistency ablations kept
    # (benchmarks/temporal_ablations.py; benchmarks/RESULTS.md). 16×16 frames with 8-pixel digits
    # (4× fewer pixels per step), a temporal conv after every ResBlock, lr 1e-3, min-SNR weighting, and
    # class conditioning sampled with classifier-free guidance w = 1.
    "tiny16": RunConfig(
        name="tiny16",
        model=dataclasses.replace(UNET_PRESETS["tiny"], temporal_conv=3),
        diffusion=DiffusionConfig(weighting="min-snr"),
        data=DataConfig(height=16, width=16, digit_size=8, speed_min=0.5, speed_max=1.5),
        train=TrainConfig(lr=1e-3, class_conditional=True, label_dropout=0.2),
        # ancestral sampling: more plausible motion than DDIM on this preset (benchmarks/RESULTS.md, sampler sweep)
        sample=SampleConfig(sampler="ancestral", guidance=1.0, steps=50),
    ),
    # Latent diffusion's first stage on 64×64 Moving Digits (28-pixel digits, the Moving MNIST scale): 4× spatial
    # compression to 16×16 latents of 4 channels; L2 with a light KL term (Stable Diffusion's weight). 4-frame
    # clips: the network is convolutional in time, so it encodes clips of any length, and half the frames halve
    # the step (kinema plan).
    "ae-digits64": RunConfig(
        name="ae-digits64",
        model=copy.deepcopy(AUTOENCODER_PRESETS["ae-tiny"]),
        data=DataConfig(frames=4, height=64, width=64, digit_size=28, speed_min=2.0, speed_max=6.0),
        train=TrainConfig(lr=3e-4, batch_size=8, sample_every=0, checkpoint_every=250),
    ),
}


def with_sample(cfg: RunConfig, **changes: Any) -> RunConfig:
    """A copy of `cfg` whose sampling settings take `changes` (SampleConfig fields; None keeps the run's value).

    This is where a command's sampling options meet the run's: resolved once, validated, and then carried by the
    config to every sampler call and into eval.json. A noise level that the chosen sampler has no use for (gamma for
    DDIM, eta for the ancestral sampler) is an error rather than silently ignored.
    """
    given = {key: value for key, value in changes.items() if value is not None}
    known = {f.name for f in dataclasses.fields(SampleConfig)}
    for key in given:
        if key not in known:
            raise _unknown("sample.", key, known, SampleConfig)
    try:
        sample = dataclasses.replace(cfg.sample, **given)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sample: {err}") from err
    own = SAMPLERS[sample.sampler].noise_level
    for name, row in SAMPLERS.items():
        if row.noise_level in given and row.noise_level != own:
            raise ConfigError(f"sample.{row.noise_level} (the {name} sampler's noise level) does not apply to the "
                              f"{sample.sampler} sampler; got {row.noise_level}={given[row.noise_level]}")
    return dataclasses.replace(cfg, sample=sample)


def changed_fields(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """(section.field, old value, new value) for every field that differs, in section order."""
    def flat(cfg) -> dict:
        return {f"{section}.{key}": value for section, table in config_to_dict(cfg).items() if isinstance(table, dict)
                for key, value in table.items()}

    a, b = flat(old), flat(new)
    return [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]


# Fields that may differ between a run and its resumption without changing what the network or a batch is.
_SHAPE_FREE_MODEL_FIELDS = {"model.gradient_checkpointing", "model.dropout"}
_SHAPE_FIELDS = {"diffusion.prediction", "latent.autoencoder", "latent.scale",
                 "data.frames", "data.height", "data.width", "data.channels",
                 "data.images_per_video", "train.class_conditional", "train.text_conditional"}


def changes_shape(field_name: str) -> bool:
    """Whether changing `field_name` changes the network (its layers and their shapes, its inputs) or the shape of a
    batch, so that a checkpoint cannot continue under it: every model field but dropout and gradient checkpointing,
    the parameterization (output channels), the clip size, joint images, class and text conditioning."""
    if field_name.startswith("model."):
        return field_name not in _SHAPE_FREE_MODEL_FIELDS
    return field_name in _SHAPE_FIELDS


def _check_type(path: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_type(path, value, args[0])
    if origin in (tuple, Tuple):
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                value = [value]  # model.attention_levels=1 means (1,)
            else:
                raise ConfigError(f"{path} must be a list; got {value!r}")
        item_type = args[0]
        if len(args) > 1 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{path} must have {len(args)} entries; got {len(value)}")
        return tuple(_check_type(f"{path}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            raise ConfigError(f"{path} must be a finite number; got an integer of {len(str(value))} digits") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number; got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {value!r}")
        return value
    return value


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(path: str, key: str, known, cls) -> ConfigError:
    for name, other in MODEL_CONFIGS.items():  # a field of the other backbone: say so rather than guess a spelling
        if cls in MODEL_CONFIGS.values() and other is not cls and key in _fields(other):
            return ConfigError(f"{path + key!r} is a field of the {name} backbone, but {path}backbone is "
                               f"{cls.backbone!r} (set {path}backbone={name} to switch)")
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {path + close[0]!r}?)" if close else ""
    if cls is RunConfig:
        sections = [name for name, annotation in _fields(RunConfig).items() if annotation is not str]
        return ConfigError(f"unknown section {key!r}{hint}; a run config has the sections {', '.join(sections)} "
                           "and the field name")
    return ConfigError(f"unknown field {path + key!r}{hint}")


def _section(annotation: Any, data: Any, path: str, base):
    """Build a nested table. For the model table the class is the one `backbone` names (absent: the base's)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a table of fields; got {data!r}")
    cls = annotation
    if annotation == ModelConfig:
        backbone = data.get("backbone", base.backbone if base is not None else "unet3d")
        _choice(f"{path}.backbone", backbone, tuple(MODEL_CONFIGS))
        cls = MODEL_CONFIGS[backbone]
        if not isinstance(base, cls):
            base = cls()
    return _build(cls, data, f"{path}.", base)


def _section_class(annotation: Any) -> Any:
    """The dataclass of a section's annotation (Optional[X] names X: a section only some runs have), or None."""
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    return annotation if dataclasses.is_dataclass(annotation) else None


def _build(cls, data: dict, path: str, base=None):
    fields = _fields(cls)
    values = {key: copy.deepcopy(getattr(base, key)) for key in fields} if base is not None else {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(path, key, fields, cls)
        annotation = fields[key]
        if annotation == ModelConfig or _section_class(annotation) is not None:
            values[key] = _section(_section_class(annotation) or annotation, value, path + key, values.get(key))
        else:
            values[key] = _check_type(path + key, value, annotation)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path.rstrip('.') or 'config'}: {err}") from err


def config_from_dict(data: dict, base: RunConfig | None = None) -> RunConfig:
    return _build(RunConfig, data, "", base if base is not None else RunConfig())


def config_to_dict(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif value is None:
            continue  # TOML has no null: an absent optional field means its default
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def load_config(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text: {err.reason} at byte {err.start})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    try:
        return config_from_dict(data, base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def save_config(cfg: RunConfig, path: str | Path) -> None:
    import tomli_w

    Path(path).write_text(tomli_w.dumps(config_to_dict(cfg)))


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if "," in text:  # 1,2,4 -> [1, 2, 4]
            return [_parse_value(part.strip()) for part in text.split(",")]
        return text  # bare strings need no quotes on the command line


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings (values in TOML syntax; bare words are strings)."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().lstrip("-").split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = _parse_value(text.strip())
    return config_from_dict(data, cfg)
