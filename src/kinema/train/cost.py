"""What a training step costs, counted without running it: FLOPs, the memory it holds, and the device's peak rate.

The count runs one forward and backward of the run's network on *fake* tensors (torch's FakeTensorMode): every op
dispatches as on the real device, autocast included, so shapes, dtypes and the tensors autograd saves are those of
a real step, but nothing is computed or allocated. So a config far too large for this machine can still be counted
in seconds, which is what `kinema plan` needs to say that it will not fit. `kinema.train.plan` reports these
numbers beside a measured step; the trainer counts once per run for its MFU.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..build import build_model, denoiser_space, resolve_model
from ..config import RunConfig
from ..models import AUTOENCODER, BACKBONES
from ..models.autoencoder import latent_shape
from ..models.text import TEXT_DIM
from ..precision import autocast

__all__ = ["StepCost", "step_cost", "trace_step", "memory_estimate", "MemoryEstimate", "peak_flops", "PEAK_FLOPS_ENV"]

# AdamW keeps two moments per weight; the EMA one more copy; gradients one: with the weights, five fp32 copies.
WEIGHT_COPIES = 5


@dataclass(frozen=True)
class StepCost:
    """One optimizer step of one process: `flops` of forward + backward over train.grad_accum micro-batches, and
    the bytes of the tensors autograd saves for backward in one micro-batch (`saved_bytes`, the largest of them
    `largest_bytes`)."""

    parameters: int
    flops: int
    saved_bytes: int
    largest_bytes: int


def _counted_config(cfg: RunConfig) -> RunConfig:
    """`cfg` resolved, without its class embedding: the embedding is a lookup of B × emb_dim (no FLOPs, no memory to
    speak of), and its range check reads the labels, which fake tensors do not have."""
    cfg = resolve_model(cfg)
    if BACKBONES[cfg.model.backbone].kind == AUTOENCODER:  # no class embedding to leave out
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=0),
                               train=dataclasses.replace(cfg.train, class_conditional=False))


def _fake_inputs(cfg: RunConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """z (B, C, F, H, W), noise_level (B,) and the text conditioning, shaped as the trainer feeds the network."""
    d = cfg.data
    z = torch.randn(batch, d.channels, d.frames + d.images_per_video, d.height, d.width)
    if BACKBONES[cfg.model.backbone].kind == AUTOENCODER:  # clips and the posterior's noise, no noise level
        return z, torch.randn(latent_shape(cfg.model, tuple(z.shape))), {}
    cond = {}
    if cfg.train.text_conditional:
        cond = {"text": torch.randn(batch, TEXT_DIM), "text_mask": torch.ones(batch, 1, dtype=torch.bool)}
    return z, torch.rand(batch), cond


def step_cost(cfg: RunConfig, device: torch.device, precision: str, world: int = 1) -> StepCost:
    """Count one training step of `cfg` on `device` at `precision` ("fp32" | "bf16" | "fp16", resolved), with the
    micro-batch of one of `world` processes, train.grad_accum times."""
    micro = cfg.train.batch_size // (world * cfg.train.grad_accum)
    counted = _counted_config(denoiser_space(cfg))  # a latent run's denoiser, on latents
    flops, saved, largest = trace_step(lambda: build_model(counted), lambda: _fake_inputs(counted, micro), device,
                                       precision)
    parameters = sum(p.numel() for p in build_model_meta(cfg).parameters())
    return StepCost(parameters, flops * cfg.train.grad_accum, saved, largest)


def trace_step(make_network: Callable[[], nn.Module], make_inputs: Callable[[], tuple], device: torch.device,
               precision: str) -> tuple[int, int, int]:
    """(FLOPs, bytes saved for backward, the largest saved tensor's bytes) of one forward and backward of the network
    `make_network()` on the inputs `make_inputs()` = (z, noise_level, cond), both made on fake tensors. FLOPs are
    torch's FlopCounterMode counts of matrix products, convolutions and attention (2 per multiply-add, backward
    included); norms, activations and the loss are not counted, as in MFU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved, keep = {}, []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base  # a view shares its base's memory
        if id(base) not in weights:
            keep.append(base)  # holds the id until the count ends
            saved[id(base)] = base.untyped_storage().nbytes()
        return tensor

    with FakeTensorMode(), torch.device(device):
        network = make_network()
        weights = {id(p) for p in network.parameters()}
        z, level, cond = make_inputs()
        with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with autocast(precision, device):
                out = network(z, level, **cond)
            out = out[0] if isinstance(out, tuple) else out  # an autoencoder's (x̂, posterior)
            (out.float()[:, :z.shape[1]] - z).pow(2).mean().backward()
    return counter.get_total_flops(), sum(saved.values()), max(saved.values(), default=0)


def build_model_meta(cfg: RunConfig) -> torch.nn.Module:
    """The run's real network (class embedding and all) on the meta device: its parameter count, no memory."""
    with torch.device("meta"):
        return build_model(cfg)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process holds at its peak: fp32 weights with their gradients, AdamW moments and EMA copy
    (`weights`), and the activations autograd saves plus the gradient buffers of backward (`activations`)."""

    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


def memory_estimate(cost: StepCost) -> MemoryEstimate:
    """The peak of a step: all saved activations are live when backward starts, and backward then holds gradient
    buffers of about two of the largest activations at once (the incoming gradient and the one it computes)."""
    return MemoryEstimate(WEIGHT_COPIES * 4 * cost.parameters, cost.saved_bytes + 2 * cost.largest_bytes)


# Dense peak FLOP/s by (device, precision), for MFU. CUDA rows are the datasheets' dense tensor-core (bf16, fp16)
# and plain fp32 rates, matched by a substring of torch.cuda.get_device_name, the first match winning (so
# "H100 PCIe" before "H100"). The CPU row is the reference machine of benchmarks/RESULTS.md (2 cores of an AMD EPYC
# with AVX-512 bf16), its matrix-product peaks *measured* there ("U-Net speed against the peer"); a CPU is named by
# model, thread count and torch's vector capability, because a virtual machine may report the same bare "AMD EPYC"
# on cores without AVX-512, where fp32 is far slower and bf16 is emulated (RESULTS.md, "Other timings"). Another CPU
# has no row: its MFU is omitted, not guessed.
PEAK_FLOPS = {
    "cuda": [("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
             ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
             ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
             ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12})],
    "cpu": [("AMD EPYC/2/AVX512", {"bf16": 920e9, "fp32": 210e9})],
}
PEAK_FLOPS_ENV = "KINEMA_PEAK_FLOPS"  # FLOP/s of this device at the run's precision, e.g. 4.5e14; wins over the table


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return f"{model}/{torch.get_num_threads()}/{torch.backends.cpu.get_cpu_capability()}"


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The dense peak FLOP/s of `device` at `precision`: $KINEMA_PEAK_FLOPS if set (the peak is the machine's, not
    the run's, so it is not a config field that a checkpoint would carry elsewhere), else the `PEAK_FLOPS` row, else
    None (MFU unknown)."""
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise ValueError(f"${PEAK_FLOPS_ENV} must be a positive number of FLOP/s (e.g. 4.5e14); got {override!r}")
        return value
    name = _device_name(device)
    for pattern, peaks in PEAK_FLOPS.get(device.type, []):
        if (pattern in name) if device.type == "cuda" else pattern == name:
            return peaks.get(precision)
    return None
