"""Sampling a trained network: unconditional and class/text-conditional videos (`generation`), and videos
conditioned on known frames (`conditional`: predict, extend, interpolate, upsample)."""

from .conditional import (
    DEFAULT_WEIGHT,
    METHODS,
    extend,
    fill_frames,
    interpolate,
    plan_windows,
    predict,
    upsample,
    uses_frame_conditioning,
)
from .generation import conditioned_denoiser, conditioning, generate, run_sampler, sampler_keywords, sampling_record

__all__ = ["generate", "run_sampler", "sampler_keywords", "sampling_record", "conditioning", "conditioned_denoiser",
           "fill_frames", "uses_frame_conditioning", "plan_windows", "predict", "extend", "interpolate", "upsample",
           "METHODS", "DEFAULT_WEIGHT"]
