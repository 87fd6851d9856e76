"""Mixed precision: which float format to compute in, and the autocast context for it."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["resolve_precision", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 on CUDA devices that support it (else fp16), and on CPUs with AVX-512
    (where bf16 matrix products are fast); fp32 on other CPUs, where bf16 is emulated."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
    return "bf16" if "AVX512" in capability.upper() else "fp32"


def autocast(precision: str, device: torch.device):
    """torch.autocast for "bf16"/"fp16" (already resolved), a no-op context for "fp32"."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()
