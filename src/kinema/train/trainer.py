"""The training loop. One function, readable top to bottom; the same code runs alone or under torchrun.

Exact resume: everything random is drawn from explicit generators whose states are checkpointed
(diffusion times and noise, label dropout) or from torch's global RNG (dropout), also checkpointed;
the data stream is a pure function of (seed, batches consumed). So on CPU a run interrupted and
resumed ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import RunConfig, save_config
from ..data import ResumableBatchSampler
from ..diffusion import diffusion_loss
from ..media import to_uint8, write_videos
from ..pipeline import build_dataset, build_model, build_noise, build_schedule, generate
from ..precision import autocast, resolve_precision
from .checkpoint import (
    latest_checkpoint,
    load_optimizer_state,
    load_state,
    rng_state_from_json,
    rng_state_to_json,
    save_checkpoint,
)
from .ema import EMA

__all__ = ["train", "TrainingError", "TrainResult", "resolve_precision"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite); the message says what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Optional[Path]
    stopped_by: str  # "steps" | "time limit"
    model: Optional[torch.nn.Module] = None  # the trained network (not the EMA) of this process
    ema: Optional[torch.nn.Module] = None


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def learning_rate(cfg: RunConfig, step: int) -> float:
    """lr for the update that makes step + 1: linear warm-up over train.warmup_steps, then constant, and linear
    decay towards 0 over the last train.decay_steps of train.steps (warmup-stable-decay; Hägele et al. 2024
    find a short decay matches a cosine schedule of the whole run). A function of the step alone, so resume stays exact
    and a finished run can be continued with a higher train.steps and a decay at its end."""
    tc = cfg.train
    factor = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.decay_steps:
        factor = min(factor, (tc.steps - step) / tc.decay_steps)
    return tc.lr * factor


class _Log:
    """metrics.jsonl (and TensorBoard when installed), on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, keep_until_step: int):
        self.enabled, self.path, self.tb = enabled, run_dir / "metrics.jsonl", None
        if not enabled:
            return
        if self.path.exists():  # a resumed run drops what was logged after its checkpoint
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= keep_until_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=keep_until_step + 1)
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          max_steps: Optional[int] = None) -> TrainResult:
    """Train `cfg` into `run_dir` (config.toml, metrics.jsonl, samples/, checkpoints/).

    With `resume=True` training continues from the newest checkpoint in `run_dir`. `max_steps`
    stops this call early (the run's target stays cfg.train.steps); it exists for tests and demos.
    """
    run_dir = Path(run_dir)
    rank, world, device = _distributed()
    is_main = rank == 0
    tc = cfg.train
    micro = tc.batch_size // (world * tc.grad_accum)
    if micro * world * tc.grad_accum != tc.batch_size or micro == 0:
        raise ValueError(f"train.batch_size ({tc.batch_size}) must be divisible by world size ({world}) "
                         f"× train.grad_accum ({tc.grad_accum})")

    checkpoint_dir = run_dir / "checkpoints"
    last = latest_checkpoint(checkpoint_dir)
    if resume and last is None:
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no checkpoints/step_* folder)")
    if not resume and last is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints; resume it with --resume, or choose another --name")

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    ema = EMA(model, tc.ema_decay)
    precision = resolve_precision(tc.precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + rank)
    step = batches = 0
    if last is not None:
        _, state = load_state(last, model=model, ema=ema.model, device=device)
        opt_state = load_optimizer_state(last, device)
        optimizer.load_state_dict(opt_state["optimizer"])
        scaler.load_state_dict(opt_state["scaler"])
        step, batches = state["step"], state["batches"]
        rngs = state["rng"].get(str(rank))
        if rngs is None:  # resumed on more processes than were saved: correct, but not bit-exact
            warnings.warn(f"{last} holds RNG states for {len(state['rng'])} process(es); rank {rank} starts a fresh "
                          "generator, so this resume is not bit-identical to an uninterrupted run")
            gen.manual_seed(tc.seed * 1_000_003 + rank + 7919 * step)
        else:
            gen.set_state(rng_state_from_json(rngs["generator"]))
            torch.set_rng_state(rng_state_from_json(rngs["torch"]))
            if device.type == "cuda" and "cuda" in rngs:
                torch.cuda.set_rng_state(rng_state_from_json(rngs["cuda"]), device)
    net = DistributedDataParallel(model) if world > 1 else model

    schedule, prior = build_schedule(cfg.diffusion), build_noise(cfg.diffusion)
    dataset = build_dataset(cfg.data, "train", progress=progress and is_main)
    needed = [f for f, used in (("label", model.null_class is not None), ("caption", tc.text_conditional)) if used]
    missing = [f for f in needed if f not in dataset[0]]
    if missing:
        joint = (" (joint image+video training, data.images_per_video > 0, drops them: the label or caption of a clip "
                 "does not describe the images appended to it)" if cfg.data.images_per_video > 0 else "")
        raise ValueError(f"a conditional model needs each item's {missing}, which the training data does not "
                         f"provide{joint}")
    if is_main and hasattr(dataset, "summary"):
        tqdm.write(dataset.summary())
    sampler = ResumableBatchSampler(len(dataset), micro, world_size=world, rank=rank, seed=cfg.data.seed,
                                    start_batch=batches)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator(),  # leaves the global RNG alone
                        persistent_workers=cfg.data.num_workers > 0)
    batch_iter = iter(loader)
    text_encoder = None
    if tc.text_conditional:
        from ..text import TextEncoder

        text_encoder = TextEncoder()

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
    log = _Log(run_dir, is_main, step)
    def network(z, level, **cond):
        with autocast(precision, device):
            return net(z, level, **cond)

    def checkpoint() -> Optional[Path]:
        """Called on every rank: each contributes its RNG states; rank 0 writes."""
        rng = {"generator": rng_state_to_json(gen.get_state()), "torch": rng_state_to_json(torch.get_rng_state())}
        if device.type == "cuda":
            rng["cuda"] = rng_state_to_json(torch.cuda.get_rng_state(device))
        per_rank = [rng]
        if world > 1:
            per_rank = [None] * world
            dist.all_gather_object(per_rank, rng)
        if not is_main:
            return None
        state = {"step": step, "batches": batches, "rng": {str(r): states for r, states in enumerate(per_rank)},
                 "precision": precision, "world_size": world}
        return save_checkpoint(checkpoint_dir, cfg, model, ema.model,
                               {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, state,
                               tc.keep_checkpoints)

    end = tc.steps if max_steps is None else min(tc.steps, max_steps)
    start_time, start_step, stopped_by, saved = time.time(), step, "steps", last
    bar = tqdm(total=tc.steps, initial=step, desc=f"training {cfg.name}", disable=not (progress and is_main),
               dynamic_ncols=True)
    model.train()
    while step < end:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        total = torch.zeros((), device=device)
        for k in range(tc.grad_accum):
            batch = next(batch_iter)
            batches += 1
            x = batch["video"].to(device, non_blocking=True)
            cond = {}
            if "frame_mask" in batch:
                cond["frame_mask"] = batch["frame_mask"].to(device)
            if model.null_class is not None:
                labels = batch["label"].to(device)
                drop = torch.rand(labels.shape, generator=gen, device=device) < tc.label_dropout
                cond["labels"] = torch.where(drop, torch.full_like(labels, model.null_class), labels)
            if text_encoder is not None:
                cond["text"] = text_encoder(batch["caption"]).to(device)
                keep = torch.rand(len(batch["caption"]), generator=gen, device=device) >= tc.text_dropout
                cond["text_mask"] = keep[:, None]  # a dropped caption is the null text
            sync = net.no_sync() if world > 1 and k < tc.grad_accum - 1 else nullcontext()
            with sync:
                loss = diffusion_loss(network, schedule, x, prediction=cfg.diffusion.prediction,
                                      weighting=cfg.diffusion.weighting, cond=cond, generator=gen,
                                      noise_sampler=prior.like).mean()
                scaler.scale(loss / tc.grad_accum).backward()
            total += loss.detach() / tc.grad_accum
        if world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        loss_value = total.item()
        if not math.isfinite(loss_value):
            bar.close()
            log.close()
            kept = f"the last good checkpoint is {saved}" if saved else "no checkpoint was written yet"
            raise TrainingError(f"loss is {loss_value} at step {step + 1}; training stopped and {kept}. "
                                "Try a lower train.lr, train.grad_clip > 0, or train.precision=fp32.")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, step)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")

        if step % tc.log_every == 0 or step == end:
            elapsed = time.time() - start_time
            log.write({"step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                       "grad_norm": float(grad_norm), "steps_per_s": (step - start_step) / elapsed,
                       "elapsed_s": elapsed})
        out_of_time = tc.time_limit_minutes > 0 and time.time() - start_time > 60 * tc.time_limit_minutes
        if world > 1 and tc.time_limit_minutes > 0:  # every rank must agree to stop
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % tc.checkpoint_every == 0 or step == end or out_of_time:
            saved = checkpoint() or saved
        if is_main and tc.sample_every > 0 and (step % tc.sample_every == 0 or step == end or out_of_time):
            videos = to_uint8(generate(ema.model, cfg, tc.sample_count, device=device))
            for suffix in (".gif", ".mp4"):
                write_videos(videos, run_dir / "samples" / f"step_{step:06d}{suffix}", fps=cfg.sample.fps, scale=2)
        if out_of_time:
            stopped_by = "time limit"
            break
    bar.close()
    log.close()
    if world > 1:
        dist.barrier()
    return TrainResult(run_dir, step, saved, stopped_by, model, ema.model)
