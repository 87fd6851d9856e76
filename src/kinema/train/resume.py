"""Deciding what a training run continues from: the newest intact checkpoint, and whether the config may change.

Both functions return notes for the user (what was skipped, what changed) rather than printing, so that the
trainer says them once, on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..build import resolve_model
from ..checkpoint import latest_intact_checkpoint, list_checkpoints
from ..config import ConfigError, RunConfig, changed_fields, changes_shape, load_config

__all__ = ["checkpoint_to_resume", "check_resumable"]


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def checkpoint_to_resume(run_dir: Path, resume: bool) -> tuple[Optional[Path], list[str]]:
    """The checkpoint a run starts from (None: a fresh run) and notes on damaged newer ones it skipped.

    A fresh run refuses a folder that holds checkpoints; a resumed one takes the newest checkpoint that
    `verify_checkpoint` finds intact, names every damaged newer one (left in place) and the steps the fallback
    costs, and refuses when there is nothing intact to resume.
    """
    folder = run_dir / "checkpoints"
    if not resume:
        if list_checkpoints(folder):
            raise FileExistsError(f"{run_dir} already holds checkpoints; resume it with --resume, or choose another "
                                  "--name")
        return None, []
    last, damaged = latest_intact_checkpoint(folder, training=True)
    details = "; ".join(f"{path.name}: {', '.join(problems)}" for path, problems in damaged)
    if last is None:
        if damaged:
            raise FileNotFoundError(f"{run_dir}: no intact checkpoint to resume ({details})")
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no checkpoints/step_* folder)")
    notes = [f"skipping the damaged checkpoint {path} ({', '.join(problems)}); it is left in place"
             for path, problems in damaged]
    if damaged:
        lost = _step(damaged[0][0]) - _step(last)
        notes.append(f"resuming from {last.name} instead: {lost} step(s) to train again")
    return last, notes


def check_resumable(cfg: RunConfig, checkpoint: Path) -> list[str]:
    """Compare the run's config with the checkpoint's before anything is loaded: a change to the network or the
    shape of a batch (`changes_shape`) is a ConfigError naming each field; any other change is allowed and noted."""
    saved = resolve_model(load_config(checkpoint / "config.toml"))
    changes = changed_fields(saved, resolve_model(cfg))
    refused = [f"{key} {old!r} -> {new!r}" for key, old, new in changes if changes_shape(key)]
    if refused:
        raise ConfigError(f"{checkpoint}: cannot resume with another network or clip shape: {'; '.join(refused)} "
                          "(start a new run with --name, or keep the saved values)")
    if not changes:
        return []
    return ["resuming with changed settings: " + "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes)]
