"""Step time and MFU of three networks on the GPUs of this machine, in bf16, with and without torch.compile.

    python benchmarks/gpu.py [--models small vdm-ucf101 dit-s-2] [--timed 10] [--warmup 3] [--out FILE.json]
    python benchmarks/gpu.py --smoke        # no GPU: a tiny CPU run of the same code, to keep the script working

With more than one GPU it starts itself again under torchrun, one DDP process per GPU (each timing its share of the
global batch; rank 0 prints). Without CUDA and without --smoke it says so and exits 0.

The networks, each trained by the real trainer step (`kinema.train.plan.TrainerStep`: data, loss, backward, AdamW,
EMA) on Moving Digits:
* `small`: the run preset (U-Net `small`, 8 × 32 × 32, batch 16 per GPU);
* `vdm-ucf101`: the U-Net preset of VDM's UCF101 model (spec B2) at its clip shape, 16 × 64 × 64, but grey
  (Moving Digits has 1 channel; UCF101 has 3, which changes only the first and last convolution), batch 8 per GPU;
* `dit-s-2`: the DiT-S/2 preset on the `dit-tiny` run's data (8 × 32 × 32), batch 32 per GPU.
There are no `vdm-ucf101` or `dit-s-2` *run* presets: these configs are built here from the network presets.

Reported per row: parameters, GFLOP per step per GPU (counted, `kinema.train.cost`), the first step's seconds
(compilation included), the mean step after warm-up, MFU against the device's dense bf16 peak
(`kinema.train.cost.PEAK_FLOPS`, or $KINEMA_PEAK_FLOPS; "–" when unknown), and the peak memory allocated beside
`kinema plan`'s estimate.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kinema.config import RUN_PRESETS, apply_overrides
from kinema.models import DIT_PRESETS, UNET_PRESETS
from kinema.train.cost import memory_estimate, peak_flops, step_cost
from kinema.train.plan import TrainerStep, time_steps
from kinema.train.trainer import _distributed

QUIET = ["train.sample_every=0", "train.precision=bf16", "train.grad_accum=1"]
# The CPU smoke run: the same three rows at a size that takes seconds
SMOKE = {"small": ["model.base_channels=8", "model.head_dim=8"],
         "vdm-ucf101": ["model.base_channels=8", "model.head_dim=8", "model.emb_dim=32", "data.frames=4",
                        "data.height=16", "data.width=16", "data.digit_size=8"],
         "dit-s-2": ["model.hidden_dim=32", "model.depth=2", "model.heads=2"]}


def config(name: str, batch: int, smoke: bool):
    if name == "small":
        cfg, extra = copy.deepcopy(RUN_PRESETS["small"]), []
    elif name == "vdm-ucf101":
        cfg = dataclasses.replace(copy.deepcopy(RUN_PRESETS["small"]), model=copy.deepcopy(UNET_PRESETS[name]))
        extra = ["data.frames=16", "data.height=64", "data.width=64", "data.digit_size=28"]
    elif name == "dit-s-2":
        cfg = dataclasses.replace(copy.deepcopy(RUN_PRESETS["dit-tiny"]), model=copy.deepcopy(DIT_PRESETS[name]))
        extra = []
    else:
        raise SystemExit(f"unknown model {name!r}; choose from small, vdm-ucf101, dit-s-2")
    cfg = apply_overrides(cfg, QUIET + extra + (SMOKE[name] if smoke else []) + [f"train.batch_size={batch}"])
    cfg.name = f"gpu-{name}"
    return cfg


def measure(name: str, per_gpu_batch: int, compiled: bool, args, proc) -> dict:
    """One row: the trainer step of `name` on this process's device, compiled or not."""
    cfg = config(name, per_gpu_batch * proc.world, args.smoke)
    step = TrainerStep(cfg, proc=proc)
    network = step.state.network
    parallel = DistributedDataParallel(network) if proc.world > 1 else network
    step.state.parallel = torch.compile(parallel) if compiled else parallel
    cost = step_cost(cfg, proc.device, step.state.precision, proc.world)
    if proc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(proc.device)
    start = time.perf_counter()
    step()  # compiles, when compiled
    first = time.perf_counter() - start
    seconds = time_steps(step, proc.device, args.warmup, args.timed)
    peak = peak_flops(proc.device, step.state.precision)
    memory = torch.cuda.max_memory_allocated(proc.device) if proc.device.type == "cuda" else None
    return {"model": name, "compile": compiled, "world": proc.world, "batch_per_gpu": per_gpu_batch,
            "parameters": cost.parameters, "gflop_per_step": cost.flops / 1e9, "first_step_s": first,
            "step_s": seconds, "mfu": None if peak is None else cost.flops / seconds / peak,
            "peak_memory_gib": None if memory is None else memory / 2**30,
            "estimate_gib": memory_estimate(cost).total / 2**30, "device": _device_label(proc.device)}


def _device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def table(rows: list[dict]) -> str:
    lines = ["| model | compile | GPUs | batch/GPU | params | GFLOP/step/GPU | first step s | step s | MFU | "
             "peak GiB (plan's estimate) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        memory = "–" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        lines.append(f"| `{r['model']}` | {'yes' if r['compile'] else 'no'} | {r['world']} | {r['batch_per_gpu']} | "
                     f"{r['parameters'] / 1e6:.1f} M | {r['gflop_per_step']:.1f} | {r['first_step_s']:.2f} | "
                     f"{r['step_s']:.4f} | {mfu} | {memory} ({r['estimate_gib']:.2f}) |")
    return "\n".join(lines)


def _relaunch_under_torchrun() -> None:
    """With more than one GPU and not yet under torchrun: run this script again, one process per GPU."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torch.cuda.device_count()}",
               __file__, *sys.argv[1:]]
    raise SystemExit(subprocess.call(command))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small", "vdm-ucf101", "dit-s-2"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 8, 32], help="Per-GPU batch, one per model.")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps after the first.")
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="Tiny networks on the CPU, without compile: a test.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if len(args.batch) != len(args.models):
        parser.error(f"--batch needs one per-GPU batch per model ({len(args.models)}); got {len(args.batch)}")
    return args


def main() -> None:
    args = parse()
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here, nothing measured (run it on a GPU machine; --smoke runs a "
              "tiny CPU check of the script)")
        return
    if not args.smoke and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun()
    proc = _distributed()
    compiles = [False] if args.smoke else [c == "on" for c in args.compile]
    rows = [measure(name, batch, compiled, args, proc)
            for name, batch in zip(args.models, args.batch) for compiled in compiles]
    if proc.is_main:
        print(table(rows))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    if proc.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
