"""kinema against the public peer video-diffusion-pytorch 0.7.0: same data, same wall-clock, scored by the oracle.

    python benchmarks/vs_peer.py [--minutes 10] [--num 64] [--batch 16] [--kinema-steps 50] [--peer-steps 50]
                                 [--guidance 1] [--out runs/vs_peer]

Both models train on the train split of Moving Digits as the `tiny16` preset configures it (one 8-pixel digit,
8 frames of 16×16, grey, 0.5-1.5 px/frame), class-conditional with 20% of the labels dropped (classifier-free
guidance), for the same wall-clock budget, each from its own defaults otherwise:

* kinema: the `tiny16` preset (v-prediction, min-SNR-weighted v-MSE, cosine log-SNR schedule, AdamW 1e-3, EMA
  0.999 with warm-up, a temporal convolution after every ResBlock), samples from the EMA weights with DDIM (η = 0)
  in `--kinema-steps` steps.
* peer: `Unet3D(dim=32, dim_mults=(1, 2, 4), channels=1, cond_dim=10)` (the class as a one-hot `cond`, dropped
  with its `null_cond_prob` = 0.2) in `GaussianDiffusion` (1000 discrete steps, cosine β, ε-prediction, L1 loss),
  trained as its `Trainer` does (Adam 1e-4, EMA 0.995 every 10 steps from step 2000; before that the EMA copy is
  the model). It samples with its own ancestral loop (`p_sample_loop`, posterior variance β̃, clipping x̂₀ to
  [-1, 1]); by default on `--peer-steps` = 50 of its 1000 training steps, respaced evenly as in improved-DDPM (the
  β of the sub-sequence recomputed from ᾱ, the network given the original step indices), so both samplers spend
  the same network evaluations per video. `--peer-steps 1000` runs its full default loop.

Both sample the same random classes with the same guidance: kinema's weight w (VDM: (1 + w)·cond − w·uncond) is the
peer's `cond_scale` = 1 + w. Both use the same precision (kinema's `train.precision=auto`: bf16 autocast where
supported) and batch size, on the same device. Reported: parameters, training steps and it/s, sampling seconds per
video, and every oracle metric of N samples (and of N real held-out clips), with the oracle Fréchet distance
against N held-out clips. A markdown table is printed; everything is also written to OUT/vs_peer.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from _peer import PEER_INSTALL, import_peer, peer_available  # benchmarks/_peer.py
from torch import nn

from kinema.config import RUN_PRESETS, apply_overrides, with_sample
from kinema.data import MovingDigits
from kinema.data.media import to_uint8, write_videos
from kinema.eval import DigitOracle
from kinema.precision import resolve_precision
from kinema.sample import generate
from kinema.train import train

PRESET = "tiny16"


def train_kinema(minutes: float, batch: int, out: Path, device: torch.device) -> dict:
    cfg = apply_overrides(copy.deepcopy(RUN_PRESETS[PRESET]),
                          [f"train.time_limit_minutes={minutes}", "train.steps=100000000", "train.sample_every=0",
                           f"train.batch_size={batch}", "train.checkpoint_every=100000000", "train.keep_checkpoints=1"])
    cfg.name = "vs_peer-kinema"
    start = time.time()
    result = train(cfg, out / "kinema", progress=True)
    seconds = time.time() - start
    params = sum(p.numel() for p in result.model.parameters())
    return {"cfg": cfg, "model": result.ema, "steps": result.step, "train_seconds": seconds, "params": params,
            "precision": resolve_precision(cfg.train.precision, device)}


class _Respaced(nn.Module):
    """The peer's network seen through a respaced step index: step i of the sub-sequence is `use[i]` originally."""

    def __init__(self, unet: nn.Module, use: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("use", use)

    def forward_with_cond_scale(self, x, t, **kwargs):
        return self.unet.forward_with_cond_scale(x, self.use[t], **kwargs)


def respaced_peer(peer, diffusion: nn.Module, steps: int) -> nn.Module:
    """A GaussianDiffusion that runs the peer's own sampler on `steps` evenly spaced of its training steps."""
    total = diffusion.num_timesteps
    if steps >= total:
        return diffusion
    use = torch.from_numpy(np.linspace(0, total - 1, steps).round().astype(np.int64))
    alphas_cumprod = diffusion.alphas_cumprod.double()[use]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / previous
    original = peer.cosine_beta_schedule
    peer.cosine_beta_schedule = lambda timesteps, s=0.008: betas  # its constructor derives every buffer from β
    try:
        return peer.GaussianDiffusion(_Respaced(diffusion.denoise_fn, use), image_size=diffusion.image_size,
                                      num_frames=diffusion.num_frames, channels=diffusion.channels,
                                      timesteps=steps, loss_type=diffusion.loss_type).to(diffusion.betas.device)
    finally:
        peer.cosine_beta_schedule = original


NUM_CLASSES = 10


def one_hot(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The peer's `cond` for class labels."""
    return nn.functional.one_hot(labels, NUM_CLASSES).float().to(device)


def train_peer(minutes: float, batch: int, data: MovingDigits, precision: str, device: torch.device, seed: int,
               label_dropout: float) -> dict:
    peer = import_peer()
    torch.manual_seed(seed)
    unet = peer.Unet3D(dim=32, dim_mults=(1, 2, 4), channels=1, cond_dim=NUM_CLASSES)
    diffusion = peer.GaussianDiffusion(unet, image_size=data.size, num_frames=data.frames, channels=1,
                                       timesteps=1000, loss_type="l1").to(device)
    ema_model, ema = copy.deepcopy(diffusion), peer.EMA(0.995)  # its Trainer's defaults
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())
    rng = np.random.default_rng(seed)
    from tqdm.auto import tqdm

    bar = tqdm(desc="training peer", unit="step")
    step, start = 0, time.time()
    while time.time() - start < 60 * minutes:
        items = [data[int(i)] for i in rng.integers(0, len(data), size=batch)]
        x = torch.stack([it["video"] for it in items]).to(device)
        cond = one_hot(torch.stack([it["label"] for it in items]), device)
        with autocast:  # the peer takes videos in [0, 1]
            loss = diffusion((x + 1) / 2, cond=cond, null_cond_prob=label_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            if step < 2000:
                ema_model.load_state_dict(diffusion.state_dict())
            else:
                ema.update_model_average(ema_model, diffusion)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.time() - start
    if step < 2000:  # the Trainer's EMA copy would still be the model itself
        ema_model.load_state_dict(diffusion.state_dict())
    return {"peer": peer, "model": ema_model, "steps": step, "train_seconds": seconds,
            "params": sum(p.numel() for p in unet.parameters())}


@torch.no_grad()
def sample_peer(run: dict, labels: torch.Tensor, guidance: float, steps: int, batch: int,
                seed: int) -> tuple[torch.Tensor, float]:
    sampler = respaced_peer(run["peer"], run["model"], steps).eval()
    device = next(sampler.parameters()).device
    torch.manual_seed(seed)  # the peer draws its noise from the global generator
    start, out = time.time(), []
    for first in range(0, len(labels), batch):
        cond = one_hot(labels[first:first + batch], device)
        out.append(sampler.sample(cond=cond, cond_scale=1.0 + guidance).float().cpu())
    return (torch.cat(out) * 2 - 1).clamp(-1, 1), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-clock per model")
    parser.add_argument("--num", type=int, default=64, help="samples per model (and real clips)")
    parser.add_argument("--batch", type=int, default=16, help="training batch, both models")
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--kinema-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--peer-steps", type=int, default=50, help="peer ancestral steps (1000 = its full loop)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight w, both models (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/vs_peer"))
    args = parser.parse_args()
    if not peer_available():
        raise SystemExit(f"the peer is not installed: {PEER_INSTALL}")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose another --out")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    kin = train_kinema(args.minutes, args.batch, args.out, device)
    d = kin["cfg"].data
    train_data = MovingDigits("train", d.frames, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max),
                              seed=d.seed)
    peer = train_peer(args.minutes, args.batch, train_data, kin["precision"], device, args.seed,
                      kin["cfg"].train.label_dropout)

    guidance = kin["cfg"].sample.guidance if args.guidance is None else args.guidance
    labels = torch.randint(0, NUM_CLASSES, (args.num,), generator=torch.Generator().manual_seed(args.seed))
    start = time.time()
    kin_cfg = with_sample(kin["cfg"], steps=args.kinema_steps, sampler="ddim", guidance=guidance, seed=args.seed)
    kin_samples = generate(kin["model"], kin_cfg, args.num, labels=labels, device=device, progress=True,
                           batch_size=args.sample_batch)
    kin_seconds = time.time() - start
    peer_samples, peer_seconds = sample_peer(peer, labels, guidance, args.peer_steps, args.sample_batch, args.seed)

    test = MovingDigits("test", d.frames, d.height, d.num_digits, d.digit_size, (d.speed_min, d.speed_max), seed=d.seed)
    real = torch.stack([test[i]["video"] for i in range(args.num)])
    reference = torch.stack([test[args.num + i]["video"] for i in range(args.num)])
    oracle = DigitOracle(d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    ref_features = oracle.clip_features(reference)

    rows = {}
    for name, videos, run, sampling, seconds in (
            (f"kinema {PRESET}", kin_samples, kin, f"DDIM {args.kinema_steps} steps (EMA), w={guidance:g}",
             kin_seconds),
            ("video-diffusion-pytorch", peer_samples, peer,
             f"ancestral {min(args.peer_steps, 1000)} of 1000 steps, w={guidance:g}", peer_seconds),
            ("real (test split)", real, None, "-", None)):
        metrics = oracle.metrics(videos)
        metrics["oracle_fd"] = oracle.frechet(ref_features, videos)
        rows[name] = {
            "params": run["params"] if run else None, "train_steps": run["steps"] if run else None,
            "train_it_per_s": run["steps"] / run["train_seconds"] if run else None,
            "sampling": sampling, "sample_s_per_video": seconds / args.num if seconds else None, **metrics}
        if run:
            stem, frames = args.out / f"{name.split()[0]}_samples", to_uint8(videos)
            write_videos(frames[:16], stem.with_suffix(".gif"), fps=8, scale=2)
            np.savez_compressed(stem.with_suffix(".npz"), videos=frames)  # `kinema eval --samples` reads it

    keys = [("params", "params", lambda v: f"{v / 1e6:.2f} M"), ("train_steps", "train steps", str),
            ("train_it_per_s", "train it/s", lambda v: f"{v:.2f}"), ("sampling", "sampler", str),
            ("sample_s_per_video", "sample s/video", lambda v: f"{v:.2f}"),
            ("recognisability", "recognisability", lambda v: f"{v:.1%}"),
            ("identity_consistency", "identity", lambda v: f"{v:.1%}"),
            ("count_consistency", "count consistency", lambda v: f"{v:.1%}"),
            ("count_accuracy", "count accuracy", lambda v: f"{v:.1%}"),
            ("motion_plausibility", "motion", lambda v: f"{v:.1%}"),
            ("digits_per_frame", "digits/frame", lambda v: f"{v:.2f}"),
            ("oracle_fd", "oracle FD", lambda v: f"{v:.2f}")]
    print(f"\n{args.minutes:g} min of training each on {device} ({kin['precision']}), batch {args.batch}, "
          f"{d.frames}×{d.height}×{d.width} Moving Digits, class-conditional; N = {args.num} samples (same random "
          f"classes, guidance w = {guidance:g}); oracle FD against {args.num} other held-out clips\n")
    print("| | " + " | ".join(label for _, label, _ in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        cells = [fmt(row[key]) if row[key] is not None else "-" for key, _, fmt in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    summary = {"minutes": args.minutes, "num": args.num, "batch": args.batch, "device": str(device),
               "precision": kin["precision"], "kinema_steps": args.kinema_steps, "peer_steps": args.peer_steps,
               "preset": PRESET, "guidance": guidance,
               "data": {"frames": d.frames, "size": d.height, "num_digits": d.num_digits}, "rows": rows}
    (args.out / "vs_peer.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out / 'vs_peer.json'} and the sample GIFs")


if __name__ == "__main__":
    main()
