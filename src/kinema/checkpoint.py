"""The checkpoint folder that training, sampling, evaluation and shipped models all read (spec: design.md).

    step_000500/
      config.toml         the full RunConfig: enough to rebuild and sample
      model.safetensors   training weights
      ema.safetensors     EMA weights (used for sampling)
      optimizer.pt        optimizer (+ grad scaler) state, loaded with weights_only=True
      state.json          step, batches consumed, RNG states

Each checkpoint is written to a temporary folder next to its final name and renamed into place, so
a run killed at any moment leaves either the complete checkpoint or none.

A name resolves to a shipped model (package data in `kinema/pretrained/NAME/`: config.toml, fp16 EMA weights,
state.json; written by `export_weights`) only when no file or folder of that name exists, so a run called
`moving-digits` in the working directory still wins.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError, RunConfig, apply_overrides, load_config, save_config

__all__ = ["save_checkpoint", "CheckpointWriteError", "verify_checkpoint", "latest_intact_checkpoint",
           "safetensors_problem", "latest_checkpoint", "list_checkpoints", "load_state", "load_optimizer_state",
           "load_weights", "read_step", "resolve_checkpoint", "rng_state_to_json", "rng_state_from_json", "PRETRAINED",
           "PRETRAINED_DIR", "pretrained_dir", "is_pretrained", "export_weights", "check_weights"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

# name -> what it is (shown by `kinema presets`)
PRETRAINED = {
    "moving-digits": "tiny16 U-Net, 8 frames of 16×16 Moving Digits (one digit), classes 0-9 (--label), CFG w=1, "
                     "ancestral 50 steps + Langevin corrector",
    "moving-digits-frames": "moving-digits fine-tuned with trained frame conditioning (predict, extend, interpolate "
                            "condition the network), frame guidance w=1",
}

_PATTERN = re.compile(r"^step_(\d{6,})$")


def _state_dict(model: nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def rng_state_to_json(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def rng_state_from_json(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space, no permission, ...); earlier checkpoints are untouched."""


def save_checkpoint(folder: Path, cfg: RunConfig, model: nn.Module, ema: nn.Module, optimizer_state: dict,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `folder/step_XXXXXX` atomically and keep only the newest `keep`.

    The files go to a temporary folder, are fsynced, and the folder is renamed into place (and the rename fsynced),
    so a crash leaves the complete checkpoint or none. A failed write removes its temporary folder, leaves every
    earlier checkpoint as it was, and raises CheckpointWriteError naming the step and the cause. A damaged folder
    of the same step (see `verify_checkpoint`) is moved aside to `step_XXXXXX.damaged`, never deleted.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{state['step']:06d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    try:
        _write_files(tmp, cfg, model, ema, optimizer_state, state)
        if final.exists():
            if verify_checkpoint(final):
                os.replace(final, _free_name(final.with_name(final.name + ".damaged")))
            else:
                shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        error = CheckpointWriteError(f"{final}: the checkpoint could not be written ({err.strerror or err}); "
                                     "earlier checkpoints are untouched")
        error.errno = err.errno
        raise error from err
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, cfg: RunConfig, model: nn.Module, ema: nn.Module, optimizer_state: dict,
                 state: dict) -> None:
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


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def safetensors_problem(file: Path) -> Optional[str]:
    """Why a .safetensors file is unreadable (missing, truncated, a bad header), or None. Reads the header only:
    an 8-byte length, a JSON table of tensors and their byte ranges, which must end exactly at the file's end."""
    if not file.is_file():
        return f"{file.name} is missing"
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{file.name} is truncated ({size} bytes, shorter than its header)"
            header = json.loads(fh.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return f"{file.name} has an unreadable header"
    if 8 + length + end != size:
        return f"{file.name} is truncated ({size} bytes; its header describes {8 + length + end})"
    return None


def verify_checkpoint(checkpoint: Path, training: bool = False) -> list[str]:
    """What is wrong with a checkpoint folder (empty: intact). Checks that the files are present, the safetensors
    headers match the file sizes, config.toml and state.json parse, and the step matches the folder's name;
    `training=True` also asks for model.safetensors and a readable optimizer.pt. Loads no tensor."""
    import zipfile

    problems = []
    try:
        load_config(checkpoint / "config.toml")
    except ConfigError as err:
        problems.append(str(err).replace(f"{checkpoint}/", ""))
    weights = ["ema", "model"] if training else [w for w in ("ema", "model")
                                                if (checkpoint / f"{w}.safetensors").exists()] or ["ema"]
    problems += [p for w in weights if (p := safetensors_problem(checkpoint / f"{w}.safetensors"))]
    if training:
        try:
            zipfile.ZipFile(checkpoint / "optimizer.pt").close()
        except (OSError, zipfile.BadZipFile) as err:
            problems.append(f"optimizer.pt is unreadable ({err})")
    state_file = checkpoint / "state.json"
    if training or state_file.exists():
        try:
            step = json.loads(state_file.read_text()).get("step")
        except (OSError, ValueError, AttributeError) as err:
            problems.append(f"state.json is not valid JSON with the step in it ({type(err).__name__})")
        else:
            m = _PATTERN.match(checkpoint.name)
            if m and step != int(m.group(1)):
                problems.append(f"state.json says step {step}, the folder's name step {int(m.group(1))}")
    return problems


def latest_intact_checkpoint(folder: Path, training: bool = False) -> tuple[Optional[Path], list[tuple[Path, list]]]:
    """The newest checkpoint in `folder` that `verify_checkpoint` finds intact, and the (folder, problems) of every
    newer damaged one, newest first. Nothing is deleted."""
    damaged = []
    for checkpoint in reversed(list_checkpoints(folder)):
        problems = verify_checkpoint(checkpoint, training)
        if not problems:
            return checkpoint, damaged
        damaged.append((checkpoint, problems))
    return None, damaged


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
    """A checkpoint folder, a run folder (its newest intact checkpoint), or the name of a shipped model
    (`kinema.pretrained`, used only when no such path exists). A damaged checkpoint folder is an error that lists
    what is wrong; in a run folder, damaged newer checkpoints are skipped with a warning naming each."""
    path = Path(path)
    if (path / "config.toml").is_file() and any((path / f"{w}.safetensors").is_file() for w in ("model", "ema")):
        return _intact(path)
    newest, damaged = latest_intact_checkpoint(path / "checkpoints")
    for folder, problems in damaged:
        warnings.warn(f"skipping the damaged checkpoint {folder}: {'; '.join(problems)}", stacklevel=2)
    if newest is not None:
        return newest
    if damaged:
        raise FileNotFoundError(f"{path}: every checkpoint is damaged; the newest, {damaged[0][0].name}: "
                                f"{'; '.join(damaged[0][1])}")
    if not path.exists():
        if str(path) in PRETRAINED:
            return _intact(pretrained_dir(str(path)))
        raise FileNotFoundError(f"{path}: no such run or checkpoint folder, nor a shipped model "
                                f"(shipped: {', '.join(PRETRAINED)})")
    raise FileNotFoundError(f"{path}: neither a checkpoint folder (config.toml + model.safetensors) "
                            "nor a run folder with checkpoints/")


def _intact(checkpoint: Path) -> Path:
    problems = verify_checkpoint(checkpoint)
    if problems:
        raise ValueError(f"{checkpoint}: damaged checkpoint: {'; '.join(problems)}")
    return checkpoint


def check_weights(file: Path, saved: dict, expected: dict, shown: int = 3) -> None:
    """Refuse weights whose names or shapes differ from the network's, naming the file and a few tensors."""
    def few(names: list[str]) -> str:
        return ", ".join(names[:shown]) + (f", … ({len(names) - shown} more)" if len(names) > shown else "")

    problems = [(what, names) for what, names in (
        ("missing", [k for k in expected if k not in saved]),
        ("unexpected", [k for k in saved if k not in expected]),
        ("shape mismatch", [f"{k} (saved {list(saved[k].shape)}, network {list(v.shape)})"
                            for k, v in expected.items() if k in saved and saved[k].shape != v.shape]),
    ) if names]
    if problems:
        raise ValueError(f"{file}: the tensors do not fit the network config.toml describes: "
                         + "; ".join(f"{what} {len(names)}: {few(names)}" for what, names in problems))


def load_state(checkpoint: Path, model: Optional[nn.Module] = None, ema: Optional[nn.Module] = None,
               device: str | torch.device = "cpu") -> tuple[RunConfig, dict]:
    """Load config and state.json, and the weights into the given modules. Never unpickles arbitrary objects."""
    cfg = load_config(checkpoint / "config.toml")
    state = json.loads((checkpoint / "state.json").read_text()) if (checkpoint / "state.json").is_file() else {}
    for module, name in ((model, "model"), (ema, "ema")):
        if module is not None:
            file = checkpoint / f"{name}.safetensors"
            weights = load_file(str(file), device=str(device))
            check_weights(file, weights, module.state_dict())
            module.load_state_dict(weights)
    return cfg, state


def load_optimizer_state(checkpoint: Path, device: str | torch.device = "cpu") -> dict:
    return torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True)


def load_weights(checkpoint: Path, weights: str = "ema", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The `weights` ("ema" or "model") state dict of a resolved checkpoint folder; errors name the file."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model'; got {weights!r}")
    file = checkpoint / f"{weights}.safetensors"
    if not file.is_file():
        other = "model" if weights == "ema" else "ema"
        raise FileNotFoundError(f"{checkpoint}: holds no {weights} weights ({file.name}); use --weights {other}")
    return load_file(str(file), device=str(device))


def read_step(checkpoint: Path) -> Optional[int]:
    """The training step recorded in a checkpoint's state.json (None without one)."""
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        return None
    try:
        return json.loads(state_file.read_text()).get("step")
    except (ValueError, AttributeError) as err:  # not JSON (or not UTF-8); JSON but not an object
        raise ValueError(f"{state_file}: not valid JSON with the step in it ({err})") from err


def pretrained_dir(name: str) -> Path:
    """The folder of a shipped model; a KeyError lists the names."""
    if name not in PRETRAINED:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(PRETRAINED)}")
    path = PRETRAINED_DIR / name
    if not (path / "config.toml").is_file():
        raise FileNotFoundError(f"{path}: the shipped model {name!r} is missing from this installation")
    return path


def is_pretrained(checkpoint: Path) -> bool:
    """Whether a resolved checkpoint folder is a shipped model inside the installed package (never write there)."""
    return checkpoint.resolve().parent == PRETRAINED_DIR



_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp16",
                   command: Optional[str] = None, sample_overrides: Sequence[str] = ()) -> Path:
    """Write an inference-only copy of a checkpoint (config.toml, EMA weights in `dtype`, state.json).

    `sample_overrides` ("sample.sampler=ancestral", ...) change the copy's default sampling settings — only
    `sample.*`: the weights fix everything else. The folder is written under a temporary name and renamed,
    so a failed export leaves nothing behind.
    """
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
    step = read_step(source)
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
