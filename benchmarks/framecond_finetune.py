"""Fine-tune a trained model into a frame-conditioned one (model.frame_conditioning), in one resumable run.

    python benchmarks/framecond_finetune.py runs/fc-digits [--base moving-digits] [--minutes 12]
        [override ...]   # section.field=value on top, e.g. train.frame_patterns=0.1,0.6,0.15,0.15

The frame-conditioned network differs from its base only in its first layer, which takes 2C + 1 channels
(models/known_frames.py). Its first C input channels get the base's weights and the known-frame channels start
at zero, so step 0 is exactly the base model and fine-tuning only has to learn to read the condition. The run is
made by one ordinary training step, whose checkpoint then receives the base's weights (the optimizer's moments are
those of that one step, which the warm-up keeps small), and is resumed under train.time_limit_minutes; calling the
script again on the same folder resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

from kinema.build import build_model, load_model
from kinema.config import apply_overrides
from kinema.train import train


def widen(base: dict, network: torch.nn.Module) -> dict:
    """The base state dict for `network`: every tensor as saved, the first layer's extra input channels zero."""
    state = network.state_dict()
    out = {}
    for name, target in state.items():
        source = base[name]
        if source.shape != target.shape:  # the input layer: (out, C, ...) into (out, 2C + 1, ...) or its DiT form
            if network.config.backbone != "unet3d":
                raise ValueError(f"{name}: widening is written for the U-Net's input convolution only")
            widened = torch.zeros_like(target)
            widened[:, : source.shape[1]] = source
            source = widened
        out[name] = source.contiguous()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", default="moving-digits", help="run, checkpoint folder or shipped model name")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    base_cfg, base = load_model(args.base)
    cfg = dataclasses.replace(base_cfg, name=args.run.name, distill=None)
    cfg = apply_overrides(cfg, ["model.frame_conditioning=true", "train.steps=20000", "train.decay_steps=0",
                                "train.warmup_steps=50", "train.lr=3e-4", "train.ema_decay=0.995",
                                "train.checkpoint_every=200", "train.sample_every=0",
                                f"train.time_limit_minutes={args.minutes}", *args.overrides])
    if not (args.run / "checkpoints").is_dir():
        first = train(cfg, args.run, max_steps=1, progress=False)
        weights = widen(base.state_dict(), build_model(cfg))
        for file in ("model", "ema"):
            save_file(weights, str(first.checkpoint / f"{file}.safetensors"))
        print(f"{first.checkpoint}: the weights of {args.base}, widened")
    result = train(cfg, args.run, resume=True)
    print(f"stopped at step {result.step} ({result.stopped_by}); checkpoint {result.checkpoint}")


if __name__ == "__main__":
    main()
