"""Pretrained models shipped inside the package, sampled by name: `kinema sample moving-digits`.

Each is a folder next to this file holding what sampling needs and nothing else: `config.toml`, the EMA
weights as `ema.safetensors` in half precision (they load into an fp32 network), and `state.json` with
the training step and the command that trained it. `export_weights` writes such a folder from any
checkpoint; the README records the exact commands behind each shipped model.

A name resolves to the shipped folder only when no file or folder of that name exists, so a run
called `moving-digits` in the working directory still wins.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["PRETRAINED", "pretrained_dir", "export_weights"]

HERE = Path(__file__).resolve().parent

# name -> what it is (shown by `kinema presets`)
PRETRAINED = {
    "moving-digits": "tiny16 U-Net, 8 frames of 16×16 Moving Digits (one digit), classes 0-9 (--label), CFG w=1, "
                     "ancestral 50 steps + Langevin corrector",
}


def pretrained_dir(name: str) -> Path:
    """The folder of a shipped model; a KeyError lists the names."""
    if name not in PRETRAINED:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(PRETRAINED)}")
    path = HERE / name
    if not (path / "config.toml").is_file():
        raise FileNotFoundError(f"{path}: the shipped model {name!r} is missing from this installation")
    return path


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp16",
                   command: Optional[str] = None, sample_overrides: Sequence[str] = ()) -> Path:
    """Write an inference-only copy of a checkpoint (config.toml, EMA weights in `dtype`, state.json).

    `sample_overrides` ("sample.sampler=ancestral", ...) change the copy's default sampling settings — only
    `sample.*`: the weights fix everything else. The folder is written under a temporary name and renamed,
    so a failed export leaves nothing behind.
    """
    from safetensors.torch import load_file, save_file

    from ..config import apply_overrides, load_config, save_config
    from ..train.checkpoint import resolve_checkpoint

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
    for item in sample_overrides:
        if not item.startswith("sample."):
            raise ValueError(f"export changes sampling settings only (sample.*=...); got {item!r}")
    source = resolve_checkpoint(checkpoint)
    if not (source / "ema.safetensors").is_file():
        raise FileNotFoundError(f"{source}: has no ema.safetensors to export")
    cfg = apply_overrides(load_config(source / "config.toml"), list(sample_overrides))  # bad values fail here
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out or remove it")
    weights = {k: (v.to(_DTYPES[dtype]) if v.is_floating_point() else v).contiguous()
               for k, v in load_file(str(source / "ema.safetensors")).items()}
    state_file = source / "state.json"
    step = json.loads(state_file.read_text()).get("step") if state_file.is_file() else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(cfg, tmp / "config.toml")
    save_file(weights, str(tmp / "ema.safetensors"))
    (tmp / "ema.safetensors").chmod(0o644)  # safetensors writes it owner-only; a package must be readable by all
    info = {"step": step, "source": str(source), "weights": f"ema, {dtype}"}
    if sample_overrides:
        info["sample_overrides"] = list(sample_overrides)
    if command:
        info["command"] = command
    (tmp / "state.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
