"""Conditional generation on Moving Digits: every method against honest baselines, and class guidance.

    python benchmarks/conditional.py RUN [--num 24] [--length 16] [--context 4] [--steps 20] [--weight 10]
        [--interpolate 8] [--extend 32] [--guidance 0,1,2,4] [--json benchmarks/results/conditional.json]

Part 1, prediction: `num` held-out clips of `length` frames are cut after their first `context` frames and
continued block by block (`kinema.sample.plan_windows`, each later block conditioned on the `overlap` frames before
it). Moving Digits is deterministic given its first frames, so the clip's rest is the ground truth. Methods, in
every table (benchmarks/baselines.py for the trivial ones):
  - copy-last: the last context frame repeated; centroid track: its digit moved along the extrapolated track;
  - replacement and reconstruction guidance (w_r = --weight) with the frames not given to the network;
  - for a model trained with frame conditioning: trained (its conditioning, with z^a kept on the forward process
    by replacement). Reconstruction guidance on top of it is refused since 2026-12-02 (the network's x̂ of a known
    frame is untrained; the one run of it is in benchmarks/RESULTS.md).
Scores: PSNR and SSIM of each predicted frame against the truth (mean over videos; the table's mean is over the
predicted frames; a frame's PSNR is capped at 60 dB), identity kept and motion plausibility of the whole clip,
context included (kinema.eval's DigitOracle), and the velocity-jump error at the block boundaries (how far the
centroid's change of velocity there is from the real clip's, pixels/frame²: baselines.velocity_jump; 0 for the
real clips). Class-conditional checkpoints are sampled with the null
class here, so only the frames carry the identity.

Part 1b, interpolation (--interpolate L > 2): clips of L frames with the first and last given; the cross-fade of
the two against the model's methods, PSNR over the L − 2 frames between.

Part 1c, extension (--extend L): `num` videos of L frames generated from nothing, window by window; identity kept
and motion plausibility of the whole clip for each of the model's methods; with --extend-classes the videos are
of classes 0-9 in turn under the run's class guidance, as `kinema extend --label` samples them.

Part 2, classifier-free guidance: for a class-conditional checkpoint, `num` videos per guidance weight w with
requested classes 0..9 in turn; the fraction of frames the classifier assigns to the requested class.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from baselines import centroid_track, copy_last, cross_fade, velocity_jump

from kinema.build import load_model
from kinema.config import with_sample
from kinema.data import MovingDigits
from kinema.eval import DigitOracle
from kinema.eval.frames import psnr, ssim
from kinema.sample import extend, fill_frames, generate, plan_windows, predict, uses_frame_conditioning


def prediction_scores(oracle: DigitOracle, pred: torch.Tensor, real: torch.Tensor, context: int,
                      boundaries: list[int]) -> dict:
    frames = slice(context, real.shape[2])
    # (N, predicted frames), capped at 60 dB: an exactly reproduced frame (inf) would swamp the mean
    p = psnr(pred[:, :, frames], real[:, :, frames]).reshape(len(real), -1).clamp(max=60.0)
    s = ssim(pred[:, :, frames], real[:, :, frames]).reshape(len(real), -1)
    verdict = oracle.evaluate(pred)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_frame": p.mean(0).tolist(),
            "ssim_per_frame": s.mean(0).tolist(), "identity_kept": float(verdict.identity_kept.mean()),
            "motion_plausible": float(verdict.motion_plausible.mean()),
            "velocity_jump": velocity_jump(pred, real, boundaries)}


def methods(model, weight: float, only: str = "") -> list[tuple[str, dict]]:
    """(name, fill_frames keywords) of every model method this checkpoint supports; `only` (comma-separated
    names without the weight, e.g. "trained,replacement") keeps those."""
    rows = [("replacement", dict(method="replacement", frame_conditioning=False)),
            (f"reconstruction w_r={weight:g}", dict(method="reconstruction", weight=weight, frame_conditioning=False))]
    if uses_frame_conditioning(model):
        rows.append(("trained", dict(method="replacement", frame_conditioning=True)))
    if only:
        wanted = [w.strip() for w in only.split(",")]
        rows = [row for row in rows if row[0].split(" w_r=")[0] in wanted]  # names without their weight
    return rows


def _sampling(args, cfg):
    """The run's sampler at --steps, seed --seed, no class guidance (the null class), and --sampler,
    --langevin-steps and --frame-guidance where given."""
    return with_sample(cfg, steps=args.steps, seed=args.seed, guidance=0.0, sampler=args.sampler,
                       langevin_steps=args.langevin_steps, frame_guidance=args.frame_guidance)


def _print_row(name: str, scores: dict, seconds: float | None = None) -> None:
    tail = f"{seconds:>9.2f}" if seconds is not None else f"{'':>9}"
    print(f"{name:<28}{scores['psnr']:>8.2f}{scores['ssim']:>8.3f}{scores['identity_kept']:>8.1%}"
          f"{scores['motion_plausible']:>8.1%}{scores['velocity_jump']:>8.2f}{tail}", flush=True)


def prediction_table(args, cfg, model, oracle, labels) -> list[dict]:
    d = cfg.data
    real_ds = MovingDigits("test", args.length, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max),
                           seed=d.seed)
    real = torch.stack([real_ds[i]["video"] for i in range(args.num)])
    context, todo = real[:, :, :args.context], args.length - args.context
    overlap = args.overlap or d.frames // 2
    plan = plan_windows([True] * args.context + [False] * todo, d.frames, overlap)
    boundaries = [w.new[0] for w in plan]
    print(f"prediction: {args.num} held-out clips, {args.context} context frames -> {args.length} frames, "
          f"{len(plan)} blocks of the {d.frames}-frame model (new blocks from frames {boundaries}), "
          f"{_sampling(args, cfg).sample.sampler} {args.steps} steps "
          f"(+{_sampling(args, cfg).sample.langevin_steps} corrector), frame guidance "
          f"{_sampling(args, cfg).sample.frame_guidance:g}, seed {args.seed}")
    print(f"{'method':<28}{'PSNR':>8}{'SSIM':>8}{'id':>8}{'motion':>8}{'v err':>8}{'s/video':>9}")
    rows = []
    for name, pred in (("real (ceiling)", real), ("copy-last", copy_last(context, todo)),
                       ("centroid track", centroid_track(context, todo))):
        scores = prediction_scores(oracle, pred, real, args.context, boundaries)
        rows.append({"method": name, **scores})
        _print_row(name, scores)
    run = _sampling(args, cfg)
    for name, keywords in methods(model, args.weight, args.methods):
        start = time.time()
        pred = predict(model, run, context, todo, overlap=min(overlap, args.context), labels=labels, **keywords)
        seconds = (time.time() - start) / args.num
        scores = prediction_scores(oracle, pred, real, args.context, boundaries)
        rows.append({"method": name, "seconds_per_video": seconds, **scores})
        _print_row(name, scores, seconds)
    return rows


def interpolation_table(args, cfg, model, labels) -> list[dict]:
    d, length = cfg.data, args.interpolate
    real_ds = MovingDigits("test", length, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max),
                           seed=d.seed)
    real = torch.stack([real_ds[i]["video"] for i in range(args.num)])
    inner = slice(1, length - 1)
    known = [True] + [False] * (length - 2) + [True]
    print(f"\ninterpolation: {args.num} held-out clips of {length} frames, first and last given; PSNR / SSIM over "
          f"the {length - 2} between")
    rows = []
    fade = cross_fade(real[:, :, 0], real[:, :, -1], length - 2)
    candidates = [("cross-fade", lambda: fade)]
    run = _sampling(args, cfg)
    for name, keywords in methods(model, args.weight, args.methods):
        candidates.append((name, lambda kw=keywords: fill_frames(model, run, real, known, labels=labels, **kw)))
    for name, make in candidates:
        pred = make()
        row = {"method": name, "psnr": float(psnr(pred[:, :, inner], real[:, :, inner]).mean()),
               "ssim": float(ssim(pred[:, :, inner], real[:, :, inner]).mean())}
        rows.append(row)
        print(f"{name:<28}{row['psnr']:>8.2f}{row['ssim']:>8.3f}", flush=True)
    return rows


def extension_table(args, cfg, model, oracle, labels) -> list[dict]:
    """`extend` from nothing to args.extend frames, every method: identity and motion of the whole clip."""
    d = cfg.data
    print(f"\nextension: {args.num} videos of {args.extend} frames from nothing ({d.frames}-frame windows, half "
          "overlapping); identity and motion over all frames")
    run = _sampling(args, cfg)
    if args.extend_classes:  # a user who extends names a class: classes 0-9 in turn, with the run's class guidance
        if model.null_class is None:
            raise SystemExit("--extend-classes needs a class-conditional run")
        labels = torch.arange(args.num) % model.null_class
        run = with_sample(run, guidance=cfg.sample.guidance)
        print(f"classes 0-{model.null_class - 1} in turn, class guidance w = {cfg.sample.guidance:g}")
    rows = []
    for name, keywords in methods(model, args.weight, args.methods):
        start = time.time()
        videos = extend(model, run, args.extend, args.num, labels=labels, **keywords)
        verdict = oracle.evaluate(videos)
        row = {"method": name, "identity_kept": float(verdict.identity_kept.mean()),
               "motion_plausible": float(verdict.motion_plausible.mean()),
               "seconds_per_video": (time.time() - start) / args.num}
        rows.append(row)
        print(f"{name:<28}{row['identity_kept']:>8.1%}{row['motion_plausible']:>8.1%}"
              f"{row['seconds_per_video']:>9.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--num", type=int, default=24)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--context", type=int, default=4)
    parser.add_argument("--overlap", type=int, help="known frames of each later block (default: half a clip)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weight", type=float, default=10.0, help="reconstruction guidance weight w_r")
    parser.add_argument("--interpolate", type=int, default=0, help="clip length of part 1b (0: skip)")
    parser.add_argument("--sampler", help="another sampler than the run's (e.g. ddim)")
    parser.add_argument("--langevin-steps", type=int, help="corrector steps after each step (default: the run's)")
    parser.add_argument("--frame-guidance", type=float, help="guidance over the known frames (trained conditioning)")
    parser.add_argument("--methods", default="", help="only these model methods (e.g. trained,replacement)")
    parser.add_argument("--skip-prediction", action="store_true", help="leave out part 1 (its baselines too)")
    parser.add_argument("--extend", type=int, default=0, help="length of part 1c, extension from nothing (0: skip)")
    parser.add_argument("--extend-classes", action="store_true",
                        help="part 1c with classes 0-9 in turn and the run's class guidance (default: the null class)")
    parser.add_argument("--guidance", default="", help="classifier-free guidance weights (part 2), e.g. 0,1,2,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="sampling autocast: auto (bf16 on AVX-512 CPUs) or fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg, model = load_model(args.run)
    cfg.sample.precision = args.precision
    d = cfg.data
    oracle = DigitOracle(d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    labels = None if model.null_class is None else torch.full((args.num,), model.null_class)
    results: dict = {"run": str(args.run), "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                     "torch": torch.__version__, "num": args.num, "length": args.length, "context": args.context,
                     "clip_frames": d.frames, "steps": args.steps, "seed": args.seed, "precision": args.precision,
                     "sampler": _sampling(args, cfg).sample.sampler,
                     "langevin_steps": _sampling(args, cfg).sample.langevin_steps,
                     "frame_guidance": _sampling(args, cfg).sample.frame_guidance,
                     "weight": args.weight, "methods": args.methods or "all"}
    if not args.skip_prediction:
        results["prediction"] = prediction_table(args, cfg, model, oracle, labels)
    if args.interpolate > 2:
        results["interpolation"] = interpolation_table(args, cfg, model, labels)
    if args.extend > 0:
        results["extension"] = extension_table(args, cfg, model, oracle, labels)

    if model.null_class is not None and args.guidance:
        results["class_guidance"] = []
        requested = torch.arange(args.num) % model.null_class
        print(f"\nclass-conditional: {args.num} videos per weight, classes 0-9 in turn, DDIM {args.steps} steps")
        print(f"{'w':>6}{'frames of requested class':>28}{'videos all frames':>19}")
        for w in [float(x) for x in args.guidance.split(",")]:
            videos = generate(model, with_sample(cfg, steps=args.steps, sampler="ddim", guidance=w, seed=args.seed),
                              args.num, labels=requested)
            classes = oracle.classify_frames(videos)
            hit = classes == requested.numpy()[:, None]
            row = {"weight": w, "frame_accuracy": float(hit.mean()), "video_accuracy": float(hit.all(1).mean())}
            results["class_guidance"].append(row)
            print(f"{w:>6g}{row['frame_accuracy']:>28.1%}{row['video_accuracy']:>19.1%}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
