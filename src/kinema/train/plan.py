"""`kinema plan`: before a run, will it fit and how long will it take.

Parameters, FLOPs per step and a memory estimate come from `kinema.train.cost` (counted on fake tensors, nothing
run); the step time is measured: a few real trainer steps (`trainer._optimizer_step`, data loading included) on this
device after warm-up steps that are not timed (the first steps pay for one-off allocation and kernel selection).
A config whose estimate exceeds the memory available is not timed: its plan says that it does not fit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import RunConfig
from ..precision import resolve_precision
from .cost import MemoryEstimate, memory_estimate, peak_flops, step_cost
from .trainer import _batches, _new_state, _optimizer_step, _Process, make_objective

__all__ = ["Plan", "plan", "TrainerStep", "time_steps", "available_memory"]


@dataclass(frozen=True)
class Plan:
    """What `kinema plan` prints; `step_s` is None when the step was not timed."""

    name: str
    device: str
    precision: str
    parameters: int
    flops_per_step: int
    memory: MemoryEstimate
    available: Optional[int]  # bytes free on the device now; None: unknown
    steps: int
    step_s: Optional[float] = None
    peak_flops: Optional[float] = None
    time_limit_minutes: float = 0.0  # train.time_limit_minutes: the run may stop before train.steps

    @property
    def fits(self) -> bool:
        return self.available is None or self.memory.total <= self.available

    @property
    def mfu(self) -> Optional[float]:
        if self.step_s is None or self.peak_flops is None:
            return None
        return self.flops_per_step / self.step_s / self.peak_flops

    def lines(self) -> list[str]:
        gib = 2**30
        out = [f"run          {self.name} on {self.device} ({self.precision})",
               f"parameters   {self.parameters / 1e6:,.2f} M",
               f"FLOPs/step   {self.flops_per_step / 1e9:,.1f} GFLOP (forward + backward, counted)",
               f"memory       {self.memory.total / gib:,.2f} GiB estimated: weights, gradients, AdamW and EMA "
               f"{self.memory.weights / gib:,.2f} + activations {self.memory.activations / gib:,.2f}"]
        if self.available is not None:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            out.append(f"available    {self.available / gib:,.2f} GiB: {verdict}")
        if self.step_s is not None:
            mfu = f", MFU {self.mfu:.1%}" if self.mfu is not None else ", MFU unknown (no peak for this device)"
            out.append(f"step time    {self.step_s:.3f} s measured ({1 / self.step_s:.2f} steps/s{mfu})")
            out.append(f"train.steps  {self.steps:,} steps ≈ {_duration(self.steps * self.step_s)}")
            if self.time_limit_minutes:
                out.append(f"time limit   {self.time_limit_minutes:g} min ≈ "
                           f"{int(60 * self.time_limit_minutes / self.step_s):,} steps")
        elif not self.fits:
            out.append("step time    not measured: reduce train.batch_size, raise train.grad_accum or use a "
                       "smaller model")
        return out


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can be allocated on `device` now: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


class TrainerStep:
    """One real training step of `cfg` on `device` per call, returning its loss: the trainer's own state, data
    stream and update (`trainer._optimizer_step`), in one process on `device`, or as the rank `proc` of a
    distributed run (`state.parallel` is then the caller's to wrap in DistributedDataParallel)."""

    def __init__(self, cfg: RunConfig, device: Optional[torch.device] = None, proc: Optional[_Process] = None):
        self.proc = proc or _Process(0, 1, device or torch.device("cpu"))
        self.cfg, self.objective = make_objective(cfg, self.proc.device)
        self.state = _new_state(self.cfg, self.proc)
        self.state.parallel = self.state.network
        self.state.network.train()
        self.batches = _batches(self.cfg, self.state, self.proc, progress=False)
        self.text_encoder = None
        if self.cfg.train.text_conditional:
            from ..models.text import TextEncoder

            self.text_encoder = TextEncoder()

    def __call__(self) -> float:
        return _optimizer_step(self.cfg, self.state, self.proc, self.batches, self.text_encoder, self.objective)[0]

    def weight_bytes(self) -> int:
        """Bytes of the network's and the EMA's weights and buffers."""
        modules = (self.state.network, self.state.ema.model)
        return sum(t.nbytes for m in modules for t in (*m.parameters(), *m.buffers()))


def time_steps(step: Callable[[], float], device: torch.device, warmup: int, timed: int) -> float:
    """Mean seconds per call of `step` over `timed` calls after `warmup` untimed ones. Each step ends with the
    loss's `.item()`, so the clock reads finished work."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / timed


def plan(cfg: RunConfig, device: Optional[torch.device] = None, *, warmup: int = 2, timed: int = 5) -> Plan:
    """The plan of training `cfg` on `device` (default: CUDA if present, else the CPU) in one process; `timed=0`
    counts without timing."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.train.precision, device)
    cost = step_cost(cfg, device, precision)
    result = Plan(cfg.name, str(device), precision, cost.parameters, cost.flops, memory_estimate(cost),
                  available_memory(device), cfg.train.steps, peak_flops=peak_flops(device, precision),
                  time_limit_minutes=cfg.train.time_limit_minutes)
    if timed < 1 or not result.fits:
        return result
    step = TrainerStep(cfg, device)
    return dataclasses.replace(result, step_s=time_steps(step, device, warmup, timed))
