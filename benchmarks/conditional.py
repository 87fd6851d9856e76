"""Conditional generation on Moving Digits: VDM Table 6's question on our data, and class guidance.

    python benchmarks/conditional.py runs/cond-digits [--num 24] [--length 32] [--steps 20]
        [--weights 0,1,3,10] [--guidance 0,1,2,4] [--json benchmarks/results/conditional.json]

Part 1, long-video prediction (VDM §3.1, Table 6): real held-out clips of `length` frames (≥ 4× the
training clip length) are cut after their first `overlap` frames; the model continues them block by
block, each block conditioned on the `overlap` frames before it, once by replacement (w_r = 0) and
once per reconstruction-guidance weight w_r. Moving Digits is deterministic given its first frames,
so the real clip is the ground-truth continuation. Scores:
  - PSNR and SSIM of every predicted frame against the ground truth (mean over frames and videos);
  - boundary identity: at each block boundary, does the digit class of the new block (majority over
    its frames, by kinema.eval's digit classifier) equal the class of the frames it was conditioned
    on?  (mean over boundaries and videos);
  - identity kept: fraction of videos whose every predicted frame shows the context digit's class.
Class-conditional checkpoints are sampled with the null class here (unconditional), so only the
known frames carry the identity.

Part 2, classifier-free guidance: for a class-conditional checkpoint, `num` videos per guidance
weight w with requested classes 0..9 in turn; the fraction of frames the classifier assigns to the
requested class.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from kinema.build import load_model
from kinema.config import with_sample
from kinema.data import MovingDigits
from kinema.eval import DigitOracle
from kinema.eval.frames import psnr, ssim
from kinema.sample import generate, plan_windows, predict


def majority(classes: np.ndarray) -> int:
    visible = classes[classes >= 0]
    return int(np.bincount(visible).argmax()) if len(visible) else -1


def prediction_scores(oracle: DigitOracle, pred: torch.Tensor, real: torch.Tensor, plan, context: int) -> dict:
    frames = slice(context, real.shape[2])
    p, s = psnr(pred[:, :, frames], real[:, :, frames]), ssim(pred[:, :, frames], real[:, :, frames])
    classes = oracle.classify_frames(pred)  # (N, T)
    true = oracle.classify_frames(real[:, :, :context])
    agree = [majority(c[list(w.new)]) == majority(c[[w.start + i for i in w.known]]) for c in classes for w in plan]
    kept = [bool((c[context:] == majority(t)).all()) for c, t in zip(classes, true)]
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "boundary_identity": float(np.mean(agree)),
            "identity_kept": float(np.mean(kept))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--num", type=int, default=24)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--overlap", type=int, help="default: half the training clip length")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--weights", default="0,1,3,10", help="reconstruction guidance weights; 0 = replacement")
    parser.add_argument("--guidance", default="0,1,2,4", help="classifier-free guidance weights (part 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="sampling autocast: auto (bf16 on AVX-512 CPUs) or fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg, model = load_model(args.run)
    cfg.sample.precision = args.precision
    d = cfg.data
    overlap = args.overlap or d.frames // 2
    oracle = DigitOracle(d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    results: dict = {"run": str(args.run), "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                     "torch": torch.__version__, "num": args.num, "length": args.length, "clip_frames": d.frames,
                     "overlap": overlap, "steps": args.steps, "precision": args.precision,
                     "sampler": cfg.sample.sampler, "prediction": []}

    real_ds = MovingDigits("test", args.length, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max),
                           seed=d.seed)
    real = torch.stack([real_ds[i]["video"] for i in range(args.num)])
    context = real[:, :, :overlap]
    plan = plan_windows([True] * overlap + [False] * (args.length - overlap), d.frames, overlap)
    labels = None if model.null_class is None else torch.full((args.num,), model.null_class)
    real_scores = prediction_scores(oracle, real, real, plan, overlap)
    print(f"{args.num} held-out clips, {overlap} context frames -> {args.length} frames "
          f"({args.length / d.frames:.0f}x the {d.frames}-frame training clips), {len(plan)} blocks, "
          f"DDIM {args.steps} steps")
    print(f"{'method':<24}{'PSNR':>8}{'SSIM':>8}{'boundary id':>13}{'id kept':>9}{'s/video':>9}")
    print(f"{'real (ceiling)':<24}{'inf':>8}{1.0:>8.3f}{real_scores['boundary_identity']:>13.1%}"
          f"{real_scores['identity_kept']:>9.1%}{'':>9}")
    results["real"] = real_scores
    for w in [float(x) for x in args.weights.split(",")]:
        start = time.time()
        run = with_sample(cfg, steps=args.steps, sampler="ddim", seed=args.seed, guidance=0.0)
        pred = predict(model, run, context, args.length - overlap, method="reconstruction", weight=w,
                       overlap=overlap, labels=labels)
        seconds = (time.time() - start) / args.num
        scores = prediction_scores(oracle, pred, real, plan, overlap)
        name = "replacement" if w == 0 else f"reconstruction w_r={w:g}"
        results["prediction"].append({"method": name, "weight": w, "seconds_per_video": seconds, **scores})
        print(f"{name:<24}{scores['psnr']:>8.2f}{scores['ssim']:>8.3f}{scores['boundary_identity']:>13.1%}"
              f"{scores['identity_kept']:>9.1%}{seconds:>9.2f}", flush=True)

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
