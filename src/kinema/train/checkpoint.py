"""Checkpoint folders, written atomically (spec: design.md).

    step_000500/
      config.toml         the full RunConfig: enough to rebuild and sample
      model.safetensors   training weights
      ema.safetensors     EMA weights (used for sampling)
      optimizer.pt        optimizer (+ grad scaler) state, loaded with weights_only=True
      state.json          step, batches consumed, RNG states

Each checkpoint is written to a temporary folder next to its final name and renamed into place, so
a run killed at any moment leaves either the complete checkpoint or none.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import RunConfig, load_config, save_config

__all__ = ["save_checkpoint", "latest_checkpoint", "list_checkpoints", "load_state", "resolve_checkpoint",
           "rng_state_to_json", "rng_state_from_json"]

_PATTERN = re.compile(r"^step_(\d{6,})$")


def _state_dict(model: nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def rng_state_to_json(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def rng_state_from_json(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def save_checkpoint(folder: Path, cfg: RunConfig, model: nn.Module, ema: nn.Module, optimizer_state: dict,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `folder/step_XXXXXX` atomically and keep only the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_config(cfg, tmp / "config.toml")
    save_file(_state_dict(model), str(tmp / "model.safetensors"))
    save_file(_state_dict(ema), str(tmp / "ema.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Optional[Path]:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, a run folder (its newest checkpoint), or the name of a shipped model
    (`kinema.pretrained`, used only when no such path exists). Errors name the path."""
    path = Path(path)
    if (path / "config.toml").is_file() and any((path / f"{w}.safetensors").is_file() for w in ("model", "ema")):
        return path
    newest = latest_checkpoint(path / "checkpoints")
    if newest is not None:
        return newest
    if not path.exists():
        from ..pretrained import PRETRAINED, pretrained_dir

        if str(path) in PRETRAINED:
            return pretrained_dir(str(path))
        raise FileNotFoundError(f"{path}: no such run or checkpoint folder, nor a shipped model "
                                f"(shipped: {', '.join(PRETRAINED)})")
    raise FileNotFoundError(f"{path}: neither a checkpoint folder (config.toml + model.safetensors) nor a run folder with checkpoints/")


def load_state(checkpoint: Path, model: Optional[nn.Module] = None, ema: Optional[nn.Module] = None,
               device: str | torch.device = "cpu") -> tuple[RunConfig, dict]:
    """Load config and state.json, and the weights into the given modules. Never unpickles arbitrary objects."""
    cfg = load_config(checkpoint / "config.toml")
    state = json.loads((checkpoint / "state.json").read_text()) if (checkpoint / "state.json").is_file() else {}
    if model is not None:
        model.load_state_dict(load_file(str(checkpoint / "model.safetensors"), device=str(device)))
    if ema is not None:
        ema.load_state_dict(load_file(str(checkpoint / "ema.safetensors"), device=str(device)))
    return cfg, state


def load_optimizer_state(checkpoint: Path, device: str | torch.device = "cpu") -> dict:
    return torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True)
