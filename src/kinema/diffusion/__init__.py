"""Continuous-time diffusion: schedules, parameterizations, losses, samplers and guidance."""

from .distillation import distillation_loss, distillation_target
from .guidance import (
    ClassifierFreeGuidance,
    Conditioned,
    FrameConditioned,
    MeasurementGuidance,
    ReconstructionGuidance,
    Replacement,
    SuperResolutionGuidance,
    Thresholded,
    area_downsample,
    dynamic_threshold,
    static_threshold,
)
from .losses import diffusion_loss, sample_times
from .noise import FrameNoise
from .parameterization import Denoiser, loss_weight, noise_level, x_from_output
from .samplers import (
    SAMPLERS,
    SamplerEntry,
    ancestral_step,
    ddim_step,
    dpmpp_2m_sde_step,
    dpmpp_2m_step,
    langevin_step,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    time_grid,
)
from .schedules import (
    CosineSchedule,
    DDPMLinearSchedule,
    InterpolatedCosineSchedule,
    Schedule,
    ShiftedCosineSchedule,
)

__all__ = [
    "ClassifierFreeGuidance", "Conditioned", "FrameConditioned", "Replacement",
    "ReconstructionGuidance", "MeasurementGuidance", "SuperResolutionGuidance",
    "area_downsample", "Thresholded", "dynamic_threshold", "static_threshold",
    "diffusion_loss", "sample_times", "distillation_loss", "distillation_target",
    "FrameNoise", "Denoiser", "loss_weight", "noise_level", "x_from_output",
    "SAMPLERS", "SamplerEntry", "ancestral_step", "ddim_step", "dpmpp_2m_step", "dpmpp_2m_sde_step", "langevin_step",
    "sample_ancestral", "sample_ddim", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "time_grid",
    "CosineSchedule", "DDPMLinearSchedule", "InterpolatedCosineSchedule", "Schedule", "ShiftedCosineSchedule",
]
