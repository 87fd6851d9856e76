"""U-Net speed, memory and FLOP utilisation, side by side with the public peer `video-diffusion-pytorch`.

    python benchmarks/unet_speed.py [--batch 4] [--frames 8] [--size 32] [--repeats 5]

Each configuration runs in its own subprocess so that peak memory (max RSS) is its own. A train
step is forward + v-MSE-style loss + backward + AdamW step. FLOPs are counted with
torch.utils.flop_counter on one forward + backward; utilisation is against this machine's measured
matrix-product peaks (set --peak-fp32 / --peak-bf16 for another machine).

The peer is optional: `pip install --no-deps video-diffusion-pytorch==0.7.0 rotary-embedding-torch
einops-exts`; benchmarks/_peer.py imports it behind a torchvision stand-in (there is no CPU torchvision build here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _peer import PEER_INSTALL, import_peer, peer_available  # benchmarks/_peer.py

CONFIGS = {
    "kinema-tiny": "kinema tiny preset",
    "kinema-matched": "kinema, peer-matched: base 32, mults (1,2,4), 2 blocks/level, attention at every level",
    "peer": "video-diffusion-pytorch 0.7.0 Unet3D(dim=32, dim_mults=(1,2,4))",
}


def build(name: str):
    """Returns (model, forward(z, level) -> output)."""
    if name.startswith("kinema"):
        from kinema.models import UNET_PRESETS, UNet3D, UNet3DConfig

        if name == "kinema-tiny":
            cfg = UNET_PRESETS["tiny"]
        else:
            cfg = UNet3DConfig(base_channels=32, channel_mults=(1, 2, 4), blocks_per_level=2,
                               attention_levels=(0, 1, 2), head_dim=32)
        model = UNet3D(cfg)
        return model, lambda z, level: model(z, level)
    model = import_peer().Unet3D(dim=32, dim_mults=(1, 2, 4))
    return model, lambda z, level: model(z, level * 1000)


def measure(name: str, batch: int, frames: int, size: int, repeats: int, bf16: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, forward = build(name)
    params = sum(p.numel() for p in model.parameters())
    z = torch.randn(batch, 3, frames, size, size)
    level = torch.rand(batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(z, level)
        loss = (out.float() - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def fwd():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            forward(z, level)

    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(z, level)
        (out.float() - z).pow(2).mean().backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    forward_s = timed(fwd)
    step_s = timed(train_step)
    return {"name": name, "bf16": bf16, "params": params, "forward_s": forward_s, "train_step_s": step_s,
            "train_gflop": flops / 1e9, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-fp32", type=float, default=210.0, help="GFLOP/s, fp32 matrix products")
    parser.add_argument("--peak-bf16", type=float, default=920.0, help="GFLOP/s, bf16 matrix products")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single:
        print(json.dumps(measure(args.single, args.batch, args.frames, args.size, args.repeats, args.bf16)))
        return

    runs = [("kinema-tiny", False), ("kinema-tiny", True), ("kinema-matched", False), ("kinema-matched", True)]
    if peer_available():
        runs += [("peer", False), ("peer", True)]
    else:
        print(f"peer not installed: {PEER_INSTALL}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"batch {args.batch} of 3x{args.frames}x{args.size}x{args.size}; median of {args.repeats}")
    results = []
    for name, bf16 in runs:
        cmd = [sys.executable, __file__, "--single", name, "--batch", str(args.batch), "--frames", str(args.frames),
               "--size", str(args.size), "--repeats", str(args.repeats)] + (["--bf16"] if bf16 else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name} (bf16={bf16}) failed:\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    peer = {r["bf16"]: r for r in results if r["name"] == "peer"}
    header = (f"{'model':<16}{'dtype':<6}{'params':>9}{'fwd s':>8}{'step s':>8}{'GFLOP':>8}{'GFLOP/s':>9}{'util':>7}"
              f"{'RSS MiB':>9}{'peer/this':>10}")
    print(header)
    for r in results:
        rate = r["train_gflop"] / r["train_step_s"]
        util = rate / (args.peak_bf16 if r["bf16"] else args.peak_fp32)
        ratio = f"{peer[r['bf16']]['train_step_s'] / r['train_step_s']:.2f}x" if r["bf16"] in peer else "-"
        print(f"{r['name']:<16}{'bf16' if r['bf16'] else 'fp32':<6}{r['params'] / 1e6:>8.2f}M{r['forward_s']:>8.3f}"
              f"{r['train_step_s']:>8.3f}{r['train_gflop']:>8.1f}{rate:>9.1f}{util:>7.0%}{r['peak_rss_mib']:>9.0f}{ratio:>10}")
    for name, text in CONFIGS.items():
        print(f"  {name}: {text}")


if __name__ == "__main__":
    main()
