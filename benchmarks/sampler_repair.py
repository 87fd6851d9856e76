"""Paired check: do sampler-side repairs fix the shipped model's motion failures?

    python benchmarks/sampler_repair.py [--model moving-digits] [--num 128] [--seed 0]
                                        [--variants base restart langevin]

Every variant samples the same classes from the same initial noise (ancestral, 50 steps, γ = 0.1, CFG w = 1), so a
video's verdict can be compared across variants: how many failures a variant repairs and how many good videos it
breaks. Variants: `base` (the plain sampler), `langevin` (one Langevin corrector step after each step, δ = 0.1;
what `sample.langevin_steps=1` does) and `restart` (Restart sampling, Xu et al. 2023: on reaching t = 0.4, re-noise
to t = 0.7 by the forward process and solve again, twice). `restart` is a prototype here, not a library sampler.
Measured 2026-11-25 on the reference machine (2 CPU cores), N = 128, seed 0: base 86.7% motion, restart 89.8%
(repaired 13, broke 9), langevin 90.6% (repaired 15, broke 10); only 2 of the 17 base failures failed under both.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from kinema.build import build_schedule, load_model
from kinema.config import with_sample
from kinema.diffusion.samplers import sample_ancestral, time_grid
from kinema.eval.oracle import DigitOracle
from kinema.sample import conditioned_denoiser, conditioning
from kinema.sample.generation import rows

RESTART = (0.7, 0.4, 2)  # (t_max, t_min, repeats)


def sample(model, cfg, cond, uncond, z0, variant: str, gamma: float = 0.1, steps: int = 50) -> torch.Tensor:
    schedule = build_schedule(cfg.diffusion)
    times = time_grid(steps).tolist()

    def solve(den, z, ts, gen):
        return sample_ancestral(den, z, schedule, times=torch.tensor(ts), gamma=gamma, generator=gen,
                                langevin_steps=int(variant == "langevin"), langevin_delta=0.1)

    def alpha_sigma(t):
        a, s = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        return float(a), float(s)

    out = []
    for start in range(0, len(z0), 16):
        n = min(16, len(z0) - start)
        gen = torch.Generator().manual_seed(1000 + start)
        den = conditioned_denoiser(model, with_sample(cfg, guidance=1.0), rows(cond, start, n), rows(uncond, start, n))
        z = z0[start:start + n]
        if variant == "restart":
            t_max, t_min, repeats = RESTART
            i_max = min(range(len(times)), key=lambda i: abs(times[i] - t_max))
            i_min = min(range(len(times)), key=lambda i: abs(times[i] - t_min))
            z = solve(den, z, times[:i_min + 1], gen)
            a_max, s_max = alpha_sigma(times[i_max])
            a_min, s_min = alpha_sigma(times[i_min])
            a = a_max / a_min  # q(z_tmax | z_tmin): mean a·z, variance σ_max² − a²σ_min²
            sigma = math.sqrt(max(s_max**2 - a**2 * s_min**2, 0.0))
            for _ in range(repeats):
                z = solve(den, a * z + sigma * torch.randn(z.shape, generator=gen), times[i_max:i_min + 1], gen)
            z = solve(den, z, times[i_min:], gen)
        else:
            z = solve(den, z, times, gen)
        out.append(z.clamp(-1, 1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="moving-digits")
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["base", "restart", "langevin"],
                        choices=["base", "restart", "langevin"])
    args = parser.parse_args()
    cfg, model = load_model(args.model)
    model.eval()
    cond, uncond = conditioning(model, args.num, seed=args.seed)
    z0 = torch.randn(args.num, cfg.data.channels, cfg.data.frames, cfg.data.height, cfg.data.width,
                     generator=torch.Generator().manual_seed(args.seed))
    d = cfg.data
    oracle = DigitOracle(d.num_digits, d.digit_size, (d.speed_min, d.speed_max))
    verdicts = {}
    for variant in args.variants:
        start = time.time()
        with torch.no_grad():
            videos = sample(model, cfg, cond, uncond, z0, variant)
        result = oracle.evaluate(videos)
        verdicts[variant] = result.motion_plausible
        line = f"{variant:<9} motion {result.summary()['motion_plausibility']:.1%}  ({time.time() - start:.0f} s)"
        if variant != "base" and "base" in verdicts:
            base = verdicts["base"]
            good = result.motion_plausible
            line += f"  repaired {int((~base & good).sum())}, broke {int((base & ~good).sum())}"
        print(line, flush=True)
    failing = [~v for v in verdicts.values()]
    print(f"failing under every variant: {int(np.logical_and.reduce(failing).sum())}")


if __name__ == "__main__":
    main()
