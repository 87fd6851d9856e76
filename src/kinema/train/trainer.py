"""The training loop. `train()` reads top to bottom; the same code runs alone or under torchrun.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..build import build_dataset, build_model, resolve_model
from ..checkpoint import (
    CheckpointWriteError,
    load_optimizer_state,
    load_state,
    read_step,
    rng_state_from_json,
    rng_state_to_json,
    save_checkpoint,
)
from ..config import ConfigError, RunConfig, save_config
from ..data import ResumableBatchSampler
from ..data.media import to_uint8, write_videos
from ..models import AUTOENCODER, BACKBONES, DENOISER
from ..precision import autocast, resolve_precision
from .autoencoder import AutoencoderObjective
from .cost import peak_flops, step_cost
from .ema import EMA
from .latent import InLatentSpace, with_latent_scale
from .lock import RunLock, RunLocked
from .objective import Objective, learning_rate
from .patterns import draw_known_masks
from .resume import check_resumable, checkpoint_to_resume
from .signals import EXIT_RESUMABLE, StopSignals

__all__ = ["train", "TrainingError", "TrainResult", "learning_rate", "Objective", "EXIT_RESUMABLE"]


OBJECTIVES = {DENOISER: Objective, AUTOENCODER: AutoencoderObjective}  # a run's default by its backbone's kind


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss is not finite); the message says what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Optional[Path]
    stopped_by: str  # "steps" | "time limit" | "signal SIGTERM" (or another stop signal): resumable
    model: Optional[nn.Module] = None  # the trained network (not the EMA) of this process
    ema: Optional[nn.Module] = None


@dataclass
class _Process:
    """Where this training process runs: its rank among `world` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class _State:
    """What one training process holds and checkpoints: the network, its EMA, the optimizer, the grad scaler, the
    generator of the diffusion draws, and the counters of steps taken and micro-batches consumed."""

    network: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    precision: str
    step: int = 0
    batches: int = 0
    saved: Optional[Path] = None  # the newest checkpoint written (or resumed from)
    parallel: Optional[nn.Module] = field(default=None, repr=False)  # the network inside DDP, or the network


def _distributed() -> _Process:
    """This process's rank, world size and device; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Process(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return _Process(rank, world, torch.device("cuda", local))
    return _Process(rank, world, torch.device("cpu"))


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


def _micro_batch(cfg: RunConfig, world: int) -> int:
    tc = cfg.train
    micro = tc.batch_size // (world * tc.grad_accum)
    if micro * world * tc.grad_accum != tc.batch_size or micro == 0:
        raise ValueError(f"train.batch_size ({tc.batch_size}) must be divisible by world size ({world}) "
                         f"× train.grad_accum ({tc.grad_accum})")
    return micro


def _say(proc: _Process, message: str) -> None:
    if proc.is_main:
        tqdm.write(message)


def _agree(proc: _Process, flags: list[float]) -> list[float]:
    """Each flag raised on any rank, on every rank (one all-reduce; nothing to do alone)."""
    if proc.world == 1:
        return flags
    tensor = torch.tensor(flags, device=proc.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


@contextmanager
def _run_lock(run_dir: Path, proc: _Process):
    """Rank 0 holds the run's lock while training; every rank stops if it cannot be had."""
    lock, error = RunLock(run_dir), None
    if proc.is_main:
        try:
            lock.acquire()
        except RunLocked as err:
            error = err
    if _agree(proc, [float(error is not None)])[0] and error is None:
        error = RunLocked(f"{run_dir}: rank 0 found the run locked by another trainer")
    if error is not None:
        raise error
    if lock.previous:
        _say(proc, f"took over the lock of {run_dir} left by pid {lock.previous.get('pid')} on host "
                   f"{lock.previous.get('host')}, which has ended")
    try:
        yield
    finally:
        lock.release()


def _generator_seed(cfg: RunConfig, rank: int, step: int = 0) -> int:
    return cfg.train.seed * 1_000_003 + rank + 7919 * step


def _new_state(cfg: RunConfig, proc: _Process) -> _State:
    """A fresh network (the same initial weights on every rank), EMA, AdamW, grad scaler and generator."""
    tc = cfg.train
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    network = build_model(cfg).to(proc.device)
    # then a global RNG of each rank's own (dropout masks), unlike the shared one that drew the weights
    torch.manual_seed(_generator_seed(cfg, proc.rank) + 1)
    precision = resolve_precision(tc.precision, proc.device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    return _State(network, EMA(network, tc.ema_decay), optimizer,
                  torch.amp.GradScaler(proc.device.type, enabled=precision == "fp16"),
                  torch.Generator(device=proc.device).manual_seed(_generator_seed(cfg, proc.rank)), precision)


def _restore(state: _State, checkpoint: Path, cfg: RunConfig, proc: _Process) -> None:
    """Load weights, optimizer, counters and this rank's RNG states from `checkpoint`."""
    _, saved = load_state(checkpoint, model=state.network, ema=state.ema.model, device=proc.device)
    opt_state = load_optimizer_state(checkpoint, proc.device)
    state.optimizer.load_state_dict(opt_state["optimizer"])
    state.scaler.load_state_dict(opt_state["scaler"])
    state.step, state.batches, state.saved = saved["step"], saved["batches"], checkpoint
    rngs = saved["rng"].get(str(proc.rank))
    if rngs is None:  # resumed on more processes than were saved: correct, but not bit-exact
        warnings.warn(f"{checkpoint} holds RNG states for {len(saved['rng'])} process(es); rank {proc.rank} starts a "
                      "fresh generator, so this resume is not bit-identical to an uninterrupted run", stacklevel=2)
        state.generator.manual_seed(_generator_seed(cfg, proc.rank, state.step))
        return
    state.generator.set_state(rng_state_from_json(rngs["generator"]))
    torch.set_rng_state(rng_state_from_json(rngs["torch"]))
    if proc.device.type == "cuda" and "cuda" in rngs:
        torch.cuda.set_rng_state(rng_state_from_json(rngs["cuda"]), proc.device)


def _check_provides(dataset, cfg: RunConfig, network: nn.Module) -> None:
    """A conditional network needs every item's label or caption: refuse before step 1, naming the field."""
    needed = [f for f, used in (("label", network.null_class is not None), ("caption", cfg.train.text_conditional))
              if used]
    missing = [f for f in needed if f not in dataset[0]]
    if missing:
        joint = (" (joint image+video training, data.images_per_video > 0, drops them: the label or caption of a clip "
                 "does not describe the images appended to it)" if cfg.data.images_per_video > 0 else "")
        raise ValueError(f"a conditional model needs each item's {missing}, which the training data does not "
                         f"provide{joint}")


def _batches(cfg: RunConfig, state: _State, proc: _Process, progress: bool) -> Iterator[dict]:
    """The training stream of micro-batches, continuing after the `state.batches` already consumed."""
    dataset = build_dataset(cfg.data, "train", progress=progress and proc.is_main)
    _check_provides(dataset, cfg, state.network)
    if proc.is_main and hasattr(dataset, "summary"):
        tqdm.write(dataset.summary())
    sampler = ResumableBatchSampler(len(dataset), _micro_batch(cfg, proc.world), world_size=proc.world,
                                    rank=proc.rank, seed=cfg.data.seed, start_batch=state.batches)
    return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                           pin_memory=proc.device.type == "cuda",
                           generator=torch.Generator(),  # leaves the global RNG alone
                           persistent_workers=cfg.data.num_workers > 0))


def _conditioning(batch: dict, cfg: RunConfig, state: _State, text_encoder, device: torch.device) -> dict:
    """The network's conditioning inputs for a batch, with labels and captions dropped for classifier-free
    guidance at train.label_dropout / train.text_dropout, and for a frame-conditioned network known frames drawn
    per example from train.frame_patterns (they enter clean; `Objective.loss` leaves them out of the loss)."""
    cond = {}
    if "frame_mask" in batch:
        cond["frame_mask"] = batch["frame_mask"].to(device)
    if getattr(cfg.model, "frame_conditioning", False):  # an autoencoder has no such field
        video = batch["video"]
        cond["known_mask"] = draw_known_masks(video.shape[0], video.shape[2], cfg.train.frame_patterns,
                                              state.generator, batch.get("frame_mask")).to(device)
        cond["known_frames"] = video.to(device)  # the network zeroes the frames its mask leaves unknown
    null = state.network.null_class
    if null is not None:
        labels = batch["label"].to(device)
        drop = torch.rand(labels.shape, generator=state.generator, device=device) < cfg.train.label_dropout
        cond["labels"] = torch.where(drop, torch.full_like(labels, null), labels)
    if text_encoder is not None:
        cond["text"] = text_encoder(batch["caption"]).to(device)
        keep = torch.rand(len(batch["caption"]), generator=state.generator, device=device) >= cfg.train.text_dropout
        cond["text_mask"] = keep[:, None]  # a dropped caption is the null text
    return cond


def _optimizer_step(cfg: RunConfig, state: _State, proc: _Process, batches: Iterator[dict], text_encoder,
                    objective: Objective) -> tuple:
    """One update from train.grad_accum micro-batches; returns (loss averaged over ranks, grad norm)."""
    tc = cfg.train

    def forward(z, level, **cond):
        with autocast(state.precision, proc.device):
            return state.parallel(z, level, **cond)

    objective.before_step(state)
    for group in state.optimizer.param_groups:
        group["lr"] = objective.learning_rate(state.step)
    total = torch.zeros((), device=proc.device)
    for k in range(tc.grad_accum):
        batch = next(batches)
        state.batches += 1
        x = batch["video"].to(proc.device, non_blocking=True)
        cond = _conditioning(batch, cfg, state, text_encoder, proc.device)
        sync = state.parallel.no_sync() if proc.world > 1 and k < tc.grad_accum - 1 else nullcontext()
        with sync:
            loss = objective.loss(forward, x, cond, state.generator).mean()
            state.scaler.scale(loss / tc.grad_accum).backward()
        total += loss.detach() / tc.grad_accum
    if proc.world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
    loss_value = total.item()
    if not math.isfinite(loss_value):
        kept = f"the last good checkpoint is {state.saved}" if state.saved else "no checkpoint was written yet"
        raise TrainingError(f"loss is {loss_value} at step {state.step + 1}; training stopped and {kept}. "
                            "Try a lower train.lr, train.grad_clip > 0, or train.precision=fp32.")
    state.scaler.unscale_(state.optimizer)
    clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(state.network.parameters(), clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(state.network, state.step)
    state.step += 1
    return loss_value, float(grad_norm)


def _save(cfg: RunConfig, run_dir: Path, state: _State, proc: _Process, extra: dict) -> Optional[Path]:
    """Called on every rank: each contributes its RNG states; rank 0 writes the checkpoint. A failed write stops
    every rank with a TrainingError naming the step reached and the last good checkpoint."""
    rng = {"generator": rng_state_to_json(state.generator.get_state()),
           "torch": rng_state_to_json(torch.get_rng_state())}
    if proc.device.type == "cuda":
        rng["cuda"] = rng_state_to_json(torch.cuda.get_rng_state(proc.device))
    per_rank = [rng]
    if proc.world > 1:
        per_rank = [None] * proc.world
        dist.all_gather_object(per_rank, rng)
    written, error = None, None
    if proc.is_main:
        record = {"step": state.step, "batches": state.batches, "rng": {str(r): s for r, s in enumerate(per_rank)},
                  "precision": state.precision, "world_size": proc.world, **extra}
        optimizer = {"optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict()}
        try:
            written = save_checkpoint(run_dir / "checkpoints", cfg, state.network, state.ema.model, optimizer, record,
                                      cfg.train.keep_checkpoints)
        except CheckpointWriteError as err:
            error = err
    if _agree(proc, [float(error is not None)])[0]:
        kept = state.saved or "none was written"
        raise TrainingError(f"stopped at step {state.step}: {error or 'rank 0 could not write the checkpoint'}; "
                            f"the last good checkpoint is {kept}") from error
    return written


def _stop_reason(cfg: RunConfig, proc: _Process, start_time: float, signals: StopSignals) -> Optional[str]:
    """Why training stops after this step, agreed by every rank: a stop signal on any rank, or
    train.time_limit_minutes passed on any rank's clock; None to go on."""
    limit = cfg.train.time_limit_minutes
    out_of_time, signalled = _agree(proc, [float(limit > 0 and time.time() - start_time > 60 * limit),
                                           float(signals.received is not None)])
    if signalled:
        return f"signal {signals.received or '(received by another rank)'}"
    return "time limit" if out_of_time else None


def _mfu_basis(cfg: RunConfig, proc: _Process, precision: str) -> tuple[int, Optional[float]]:
    """(FLOPs of one step of this process, the device's peak FLOP/s), counted once per run for the MFU of the log;
    a peak of None (an unknown device, or a network the counter cannot trace) leaves MFU out rather than guessed."""
    peak = peak_flops(proc.device, precision)
    if peak is None or not proc.is_main:
        return 0, None
    try:
        return step_cost(cfg, proc.device, precision, proc.world).flops, peak
    except Exception as err:  # the count is a report, never a reason to stop training
        warnings.warn(f"MFU left out of the log: counting the step's FLOPs failed ({err})", stacklevel=2)
        return 0, None


def _write_preview(cfg: RunConfig, run_dir: Path, state: _State, device: torch.device, objective: Objective) -> None:
    videos = to_uint8(objective.preview(state.ema.model, cfg, device))
    for suffix in (".gif", ".mp4"):
        write_videos(videos, run_dir / "samples" / f"step_{state.step:06d}{suffix}", fps=cfg.sample.fps, scale=2)


def make_objective(cfg: RunConfig, device: torch.device) -> tuple[RunConfig, Objective]:
    """The run's config as trained (the network resolved, a latent run's scale measured) and its default objective:
    `OBJECTIVES` by the backbone's kind, in latent space for a latent run."""
    cfg = resolve_model(cfg)
    if cfg.latent is None:
        return cfg, OBJECTIVES[BACKBONES[cfg.model.backbone].kind](cfg)
    cfg, encoder = with_latent_scale(cfg, device)
    return cfg, InLatentSpace(Objective(cfg), encoder)


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          max_steps: Optional[int] = None, objective: Optional[Objective] = None) -> TrainResult:
    """Train `cfg` into `run_dir` (config.toml, metrics.jsonl, samples/, checkpoints/).

    With `resume=True` training continues from the newest intact checkpoint in `run_dir`. SIGTERM, SIGINT or
    SIGUSR1 stop it after the current step with a checkpoint (`stopped_by` "signal …"). `max_steps` stops this call
    early (the run's target stays cfg.train.steps); it exists for tests and demos. `objective` (default: the
    diffusion loss, `Objective(cfg)`) is what is fitted; `kinema.train.distill` passes another.
    """
    run_dir, proc = Path(run_dir), _distributed()
    cfg, default = make_objective(cfg, proc.device)
    _micro_batch(cfg, proc.world)
    if resume and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no checkpoints/step_* folder)")
    if cfg.distill is not None and objective is None:
        raise ConfigError(f"{run_dir} is a distillation (its config has a distill section): continue it with "
                          f"kinema distill TEACHER --name {cfg.name} --resume, or kinema.train.distill")
    objective = objective or default
    state = _new_state(cfg, proc)  # built (and its size checked) before the run folder is touched
    with _run_lock(run_dir, proc), StopSignals() as signals:
        last, notes = checkpoint_to_resume(run_dir, resume)
        notes += check_resumable(objective.config(read_step(last)), last) if last is not None else []
        for note in notes:
            _say(proc, note)
        if last is not None:
            _restore(state, last, cfg, proc)
        return _train(cfg, run_dir, proc, state, signals, progress, max_steps, objective)


def _train(cfg: RunConfig, run_dir: Path, proc: _Process, state: _State, signals: StopSignals, progress: bool,
           max_steps: Optional[int], objective: Objective) -> TrainResult:
    tc = cfg.train
    state.parallel = DistributedDataParallel(state.network) if proc.world > 1 else state.network
    batches = _batches(cfg, state, proc, progress)
    text_encoder = None
    if tc.text_conditional:
        from ..models.text import TextEncoder  # loads sentence-transformers: only for text-conditional runs

        text_encoder = TextEncoder()
    if proc.is_main:
        save_config(cfg, run_dir / "config.toml")
    log = _Log(run_dir, proc.is_main, state.step)
    end = tc.steps if max_steps is None else min(tc.steps, max_steps)
    flops, peak = _mfu_basis(cfg, proc, state.precision)  # a latent run's: the denoiser's (encoding not counted)
    shown = {}  # the MFU of the last log record, on the progress bar until the next
    start_time, start_step, stopped_by = time.time(), state.step, "steps"
    bar = tqdm(total=tc.steps, initial=state.step, desc=f"{objective.verb} {cfg.name}",
               disable=not (progress and proc.is_main), dynamic_ncols=True)
    state.network.train()
    try:
        while state.step < end:
            loss, grad_norm = _optimizer_step(cfg, state, proc, batches, text_encoder, objective)
            extra = objective.record(state.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", **shown, **extra)
            if state.step % tc.log_every == 0 or state.step == end:
                elapsed = time.time() - start_time
                rate = (state.step - start_step) / elapsed
                mfu = {"mfu": flops * rate / peak} if peak else {}  # nanoGPT's: model FLOPs × steps/s ÷ peak
                shown = {"mfu": f"{mfu['mfu']:.1%}"} if mfu else {}
                log.write({"step": state.step, "loss": loss, "lr": state.optimizer.param_groups[0]["lr"],
                           "grad_norm": grad_norm, "steps_per_s": rate, "elapsed_s": elapsed, **mfu, **extra})
            stop = _stop_reason(cfg, proc, start_time, signals)
            step_cfg = objective.config(state.step)
            if state.step % tc.checkpoint_every == 0 or state.step == end or stop:
                state.saved = _save(step_cfg, run_dir, state, proc, extra) or state.saved
            if proc.is_main and tc.sample_every > 0 and (state.step % tc.sample_every == 0 or state.step == end
                                                         or stop == "time limit"):
                _write_preview(step_cfg, run_dir, state, proc.device, objective)
            if stop:
                stopped_by = stop
                break
    finally:
        bar.close()
        log.close()
    if proc.world > 1:
        dist.barrier()
    return TrainResult(run_dir, state.step, state.saved, stopped_by, state.network, state.ema.model)
