"""Progressive distillation (Salimans & Ho 2022, Algorithm 2; spec A9) as training with another target.

`distill` runs the trainer with a `Distillation` objective, so checkpoints, EMA, exact resume, stop signals (exit
75), the run lock, logs and previews are training's own. Round r (1 … R) trains a student of N_r = start / 2^r
steps on the grid t = i/N_r to match two DDIM steps of its teacher: the teacher's copy in round 1, the previous
round's student (its EMA weights, frozen) after that. Each round starts the student as a copy of its teacher with a
fresh optimizer and its own learning-rate warm-up and decay.

    runs/STUDENT/
      config.toml · metrics.jsonl · checkpoints/   as training writes them; a checkpoint's config.toml samples
                                                   with DDIM in the N of the round that wrote it
      rounds/n0256/   the teacher's copy (fp32 EMA weights; its config: DDIM 256 steps, guidance w)
      rounds/n0128/   round 1's student, frozen: round 2's teacher; samples with DDIM in 128 steps
      …               down to rounds/n0004, the finished student

Classifier-free guidance is distilled at one fixed weight w (distill.guidance): round 1's teacher is the guided
denoiser (1 + w) x̂(c) − w x̂(∅), and every student samples with guidance 0. Labels (or captions) are dropped at
train.label_dropout as in training; a dropped one makes the guided target the unconditional one, so the student keeps
sampling unconditionally with the null class too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from ..build import load_model, resolve_model
from ..checkpoint import export_weights, resolve_checkpoint
from ..config import ConfigError, DistillConfig, RunConfig, apply_overrides, config_from_dict, load_config, save_config
from ..diffusion.distillation import distillation_loss
from ..sample import conditioned_denoiser
from .trainer import Objective, TrainResult, learning_rate, train

__all__ = ["distill", "distill_config", "Distillation", "round_folder", "write_round"]


def round_folder(run_dir: Path, steps: int) -> Path:
    """The frozen model of a distillation that samples in `steps` DDIM steps (the teacher's copy or a student)."""
    return Path(run_dir) / "rounds" / f"n{steps:04d}"


def distill_config(teacher: str, *, name: str, start_steps: int = 256, end_steps: int = 4,
                   steps_per_round: int = 2000, guidance: Optional[float] = None,
                   overrides: Sequence[str] = ()) -> RunConfig:
    """The student's run config: the teacher's config with a distill section, train.steps = rounds × steps per round,
    v-MSE weighting, no lr decay unless asked (train.decay_steps counts within a round), and DDIM sampling without
    guidance (it is baked in) at the final step count. `guidance` defaults to the teacher's sample.guidance
    (0 for an unconditional teacher); OVERRIDES (`section.field=value`) apply on top, except to distill.* and
    train.steps, which the arguments set."""
    for item in overrides:
        key = item.partition("=")[0].strip().lstrip("-")
        if key.startswith("distill.") or key == "train.steps":
            raise ConfigError(f"override {item!r}: a distillation's rounds are set by its start steps, end steps and "
                              "steps per round (kinema distill --start-steps/--end-steps/--steps-per-round/--guidance)")
    base = load_config(resolve_checkpoint(teacher) / "config.toml")
    conditional = base.train.class_conditional or base.train.text_conditional
    if guidance is None:
        guidance = base.sample.guidance if conditional else 0.0
    elif guidance > 0 and not conditional:
        raise ConfigError(f"distill.guidance = {guidance}: classifier-free guidance needs a class- or text-conditional "
                          "teacher, and this one is unconditional")
    dc = DistillConfig(str(teacher), start_steps, end_steps, steps_per_round, float(guidance))
    cfg = config_from_dict({"name": name, "distill": dataclasses.asdict(dc),
                            "train": {"steps": dc.rounds * steps_per_round, "decay_steps": 0},
                            "diffusion": {"weighting": "v-mse"},
                            "sample": {"sampler": "ddim", "steps": end_steps, "eta": 0.0, "langevin_steps": 0,
                                       "guidance": 0.0}}, base)
    return apply_overrides(cfg, list(overrides))


def _null_condition(cond: dict, network) -> dict:
    """The classifier-free "null" of a training batch's conditioning: the null class, the captions masked out."""
    uncond = dict(cond)
    if "labels" in cond:
        uncond["labels"] = torch.full_like(cond["labels"], network.null_class)
    if "text_mask" in cond:
        uncond["text_mask"] = torch.zeros_like(cond["text_mask"])
    return uncond


class Distillation(Objective):
    """The trainer's objective for progressive distillation: per round, the teacher, the student's step count, the
    learning rate within the round, and the config each checkpoint records (its sample.steps is the round's N)."""

    verb = "distilling"

    def __init__(self, cfg: RunConfig, run_dir: Path):
        super().__init__(cfg)
        self.dc, self.run_dir = cfg.distill, Path(run_dir)
        self.teacher = self.teacher_cfg = None
        self.round = 0  # the round the loaded teacher serves (0: none loaded)

    def _round(self, step: int) -> int:
        """The round (1 … R) of the update that makes step + 1."""
        return step // self.dc.steps_per_round + 1

    def student_steps(self, round_: int) -> int:
        return self.dc.start_steps >> round_

    def config(self, step: int) -> RunConfig:
        round_ = self._round(max(step - 1, 0))
        return dataclasses.replace(self.cfg, sample=dataclasses.replace(self.cfg.sample,
                                                                        steps=self.student_steps(round_)))

    def record(self, step: int) -> dict:
        round_ = self._round(max(step - 1, 0))
        return {"round": round_, "student_steps": self.student_steps(round_)}

    def learning_rate(self, step: int) -> float:
        spr = self.dc.steps_per_round
        return learning_rate(self.cfg, step % spr, spr)

    def before_step(self, state) -> None:
        """At a round's first update: freeze the teacher (writing it to rounds/ first) and start the student as its
        copy with a fresh optimizer. A run resumed within a round only loads that round's teacher back."""
        round_ = self._round(state.step)
        if round_ == self.round:
            return
        starting = state.step % self.dc.steps_per_round == 0
        folder = round_folder(self.run_dir, self.dc.start_steps >> (round_ - 1))
        if state.step == 0:
            self._copy_teacher(folder)
        elif starting:  # the previous round's student as its checkpoint holds it, so resume here is exact too
            write_round(folder, self.config(state.step), state.ema.model, {"step": state.step,
                                                                            **self.record(state.step)})
        device = next(state.network.parameters()).device
        # building the teacher draws initial weights from the global RNG, which drives the student's dropout: a run
        # resumed within a round loads its teacher where an uninterrupted one does not, so leave the RNG untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.teacher_cfg, self.teacher = load_model(folder, "ema", device)
        self.teacher.requires_grad_(False)
        if starting:  # θ ← η
            weights = self.teacher.state_dict()
            state.network.load_state_dict(weights)
            state.ema.model.load_state_dict(weights)
            state.optimizer.state.clear()
        self.round = round_

    def _copy_teacher(self, folder: Path) -> None:
        """rounds/nSTART: the teacher's EMA weights in fp32, sampling with DDIM in start steps at the distilled w.
        A fresh run (the trainer has refused a folder with checkpoints) first clears what a failed start left."""
        shutil.rmtree(folder.parent, ignore_errors=True)
        folder.parent.mkdir(parents=True)
        export_weights(self.dc.teacher, folder, dtype="fp32", sample_overrides=[
            "sample.sampler=ddim", f"sample.steps={self.dc.start_steps}", "sample.eta=0.0", "sample.langevin_steps=0",
            f"sample.guidance={self.dc.guidance}"])

    def loss(self, forward, x: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
        teacher = conditioned_denoiser(self.teacher, self.teacher_cfg, cond, _null_condition(cond, self.teacher))
        return distillation_loss(forward, teacher, self.schedule, x, self.student_steps(self.round),
                                 prediction=self.cfg.diffusion.prediction, weighting=self.cfg.diffusion.weighting,
                                 cond=cond, generator=generator, noise_sampler=self.prior.like)


def write_round(folder: Path, cfg: RunConfig, ema: torch.nn.Module, info: dict) -> Path:
    """An inference-only folder (config.toml, fp32 ema.safetensors, state.json) written under a temporary name and
    renamed into place, replacing an older one."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(cfg, tmp / "config.toml")
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def distill(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
            max_steps: Optional[int] = None) -> TrainResult:
    """Distil `cfg.distill.teacher` into `run_dir` (see the module docstring for the folder), or continue it with
    `resume=True`; the arguments and the result are `train`'s. When the last round ends, its student is also written
    to rounds/nEND."""
    if cfg.distill is None:
        raise ConfigError("this run config has no distill section; build one with kinema.train.distill_config")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("kinema distill runs in one process (the round folders are written by one); run it without "
                         "torchrun")
    run_dir, cfg = Path(run_dir), resolve_model(cfg)
    if not resume:
        resolve_checkpoint(cfg.distill.teacher)  # a bad teacher path fails here, before the run folder is touched
    objective = Distillation(cfg, run_dir)
    result = train(cfg, run_dir, resume=resume, progress=progress, max_steps=max_steps, objective=objective)
    if result.step == cfg.train.steps:
        write_round(round_folder(run_dir, cfg.distill.end_steps), objective.config(result.step), result.ema,
                    {"step": result.step, **objective.record(result.step)})
    return result
