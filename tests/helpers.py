"""Shared test helpers."""

import torch
from torch import nn


def randomize_zero_inits(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every all-zero parameter (zero-initialised output layers, position biases) random values.

    At initialisation those layers make temporal attention contribute nothing, which would make
    every interaction test pass vacuously.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def moving_glyph_clips(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """Moving-Digits-like clips in [-1, 1]: a random 5×5 glyph bouncing with constant velocity."""
    g = torch.Generator().manual_seed(seed)
    clips = -torch.ones(batch, 1, frames, size, size)
    for b in range(batch):
        glyph = (torch.rand(5, 5, generator=g) > 0.45).float() * 2 - 1
        pos = torch.randint(0, size - 5, (2,), generator=g)
        vel = torch.randint(-2, 3, (2,), generator=g)
        for f in range(frames):
            for d in range(2):
                if not 0 <= pos[d] + vel[d] <= size - 5:
                    vel[d] = -vel[d]
            pos = pos + vel if f else pos
            y, x = int(pos[0]), int(pos[1])
            clips[b, 0, f, y:y + 5, x:x + 5] = torch.maximum(clips[b, 0, f, y:y + 5, x:x + 5], glyph)
    return clips


def frame_jacobian(model, z, out_frame, **kw):
    """|∂ output[:, :, out_frame] / ∂ z| summed per input frame, shape (B, F)."""
    z = z.clone().requires_grad_(True)
    out = model(z, torch.full((z.shape[0],), 0.5), **kw)
    (out[:, :, out_frame] * torch.randn_like(out[:, :, out_frame])).sum().backward()
    return z.grad.abs().sum(dim=(1, 3, 4))


def excess_loss_probe(model, schedule, x, generator: torch.Generator):
    """A function giving `model`'s v-loss above the Bayes optimum on `x`, at fixed times and at noise drawn now
    from `generator` (which training then goes on drawing from)."""
    from kinema.diffusion import diffusion_loss

    g = generator
    eval_t = torch.linspace(0.05, 0.95, 4)
    eval_noise = [torch.randn(x.shape, generator=g) for _ in range(3)]
    optimum = sum(bayes_optimal_v_loss(schedule, x, eval_t, n).mean() for n in eval_noise) / 3

    def excess_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = sum(diffusion_loss(model, schedule, x, t=eval_t, noise=n).mean() for n in eval_noise) / 3
        model.train()
        return (value - optimum).item()

    excess_loss.optimum = optimum
    return excess_loss


def bayes_optimal_v_loss(schedule, data, t, noise):
    """v-MSE of the exact E[x | z_t] for a dataset of len(data) clips: a softmax over the clips."""
    alpha, sigma = schedule.alpha_sigma(t)
    a, s = alpha.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1, 1)
    z = a * data + s * noise
    dist = (z[:, None] - a[:, None] * data[None]).pow(2).flatten(2).sum(-1)  # (B, K)
    weights = torch.softmax(-dist / (2 * sigma[:, None] ** 2), dim=1)
    x_hat = torch.einsum("bk,kcfhw->bcfhw", weights, data)
    return (x_hat - data).pow(2).flatten(1).mean(1) / sigma**2  # v-MSE = ||Δx||² / σ²


# A run small enough for a train step in tens of milliseconds: the one micro config of the test suite.
MICRO = ["model.base_channels=8", "model.channel_mults=1,2", "model.attention_levels=1", "model.head_dim=8",
         "data.frames=4", "data.height=16", "data.width=16", "data.digit_size=8", "train.batch_size=2",
         "train.warmup_steps=2", "train.sample_every=0", "train.log_every=1", "sample.steps=3",
         "train.precision=fp32"]
MICRO_DIT = ["model.backbone=dit", "model.hidden_dim=32", "model.depth=2", "model.heads=2",
             *[item for item in MICRO if not item.startswith("model.")]]


def micro(*extra: str, dit: bool = False):
    """The micro RunConfig (U-Net, or the DiT with dit=True) with `section.field=value` overrides on top."""
    from kinema.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig(name="micro"), (MICRO_DIT if dit else MICRO) + list(extra))
