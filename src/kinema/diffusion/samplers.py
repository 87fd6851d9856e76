"""Samplers: pure functions over a denoiser `denoise(z, t) -> x̂` (spec A2, A4).

A sampler knows the schedule (to turn times into α, σ, λ) and nothing else: no network, no
conditioning. Conditioning and guidance are wrappers that produce another denoiser
(`kinema.diffusion.guidance`). `t` passed to the denoiser is a tensor of shape (B,).

Times run over a grid 1 = t_0 > t_1 > … > t_N = 0. The step into s = 0 returns x̂ itself.

Every fresh noise draw (ancestral steps, DDIM with η > 0, the Langevin corrector) goes through
`noise_sampler(z, generator)`, plain `torch.randn` by default; a model trained with noise correlated
across frames passes `FrameNoise(ρ).like` (see `kinema.diffusion.noise`), as k-diffusion's samplers
take a `noise_sampler`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .noise import NoiseSampler, randn_like
from .parameterization import eps_from_x
from .schedules import Schedule

__all__ = [
    "time_grid",
    "ddim_step",
    "ancestral_step",
    "langevin_step",
    "sample_ddim",
    "sample_ancestral",
    "dpmpp_2m_step",
    "sample_dpmpp_2m",
    "dpmpp_2m_sde_step",
    "sample_dpmpp_2m_sde",
    "GRIDS",
    "SAMPLERS",
    "SamplerEntry",
]

Denoise = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[Dict[str, Any]], None]
GRIDS = ("uniform", "trailing", "leading", "logsnr")


def time_grid(steps: int, kind: str = "uniform", schedule: Optional[Schedule] = None,
              num_train_timesteps: int = 1000) -> Tensor:
    """A decreasing grid of `steps + 1` times ending at 0 (float64).

    - "uniform": equally spaced from 1 to 0.
    - "trailing": equally spaced from 1, snapped to a discrete training grid of
      `num_train_timesteps` steps (diffusers' "trailing"); equals "uniform" when steps divides it.
    - "leading": diffusers' default "leading" spacing, t = (k·⌊T/N⌋ + 1)/T for k = N-1 … 0: it
      never starts at pure noise (a known flaw, kept for comparison with DDPM-style models).
    - "logsnr": equally spaced in λ between λ(1) and λ(0); needs `schedule`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    if kind == "uniform":
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if kind in ("trailing", "leading"):
        T = int(num_train_timesteps)
        if steps > T:
            raise ValueError(f"steps ({steps}) cannot exceed num_train_timesteps ({T}) for grid {kind!r}")
        if kind == "trailing":
            # the k-th of `steps` times, k = 0 … steps-1, as numpy's arange(T, 0, -T/steps) computes it
            # (start + k·δ with δ = (T - T/steps) - T), so the values equal diffusers' "trailing";
            # taking exactly `steps` of them avoids arange's float-step overshoot (steps = 61 gave 62)
            delta = (T - T / steps) - T
            t = torch.round(T + torch.arange(steps, dtype=torch.float64) * delta) / T
        else:
            t = (torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps) + 1.0) / T
        return torch.cat([t, t.new_zeros(1)])
    if kind == "logsnr":
        if schedule is None:
            raise ValueError("time_grid(kind='logsnr') needs the schedule")
        lam = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, steps + 1, dtype=torch.float64)
        t = schedule.t(lam)
        t[0], t[-1] = 1.0, 0.0
        return t
    raise ValueError(f"grid must be one of {GRIDS}; got {kind!r}")


def _check_denoised(z: Tensor, x_hat: Tensor) -> Tensor:
    if not isinstance(x_hat, Tensor):
        raise ValueError(f"denoise output must be a Tensor; got {type(x_hat).__name__}")
    if x_hat.shape != z.shape or x_hat.dtype != z.dtype:
        raise ValueError(
            f"denoise output has shape {tuple(x_hat.shape)} and dtype {x_hat.dtype}, "
            f"but z has shape {tuple(z.shape)} and dtype {z.dtype}; they must match"
        )
    return x_hat


def _coefficients(schedule: Schedule, t: Tensor):
    """(α, σ, λ) at a scalar time, as float64 Python-side scalars."""
    lam = schedule.logsnr(t)
    alpha, sigma = schedule.alpha_sigma(t)
    return float(alpha), float(sigma), float(lam)


def ddim_step(z: Tensor, x_hat: Tensor, t: float, s: float, schedule: Schedule, eta: float = 0.0,
              noise: Optional[Tensor] = None) -> Tensor:
    """One DDIM step from time t to s < t (spec A4, Song et al. 2021 eq. 12).

    z_s = α_s x̂ + sqrt(σ_s² - c²) ε̂ + c ε, with c = η·σ̃_{s|t} (η = 0 deterministic; η = 1 equals
    the ancestral step with the posterior variance).
    """
    if s <= 0.0:
        return x_hat
    a_t, s_t, l_t = _coefficients(schedule, torch.tensor(t, dtype=torch.float64))
    a_s, s_s, l_s = _coefficients(schedule, torch.tensor(s, dtype=torch.float64))
    eps_hat = eps_from_x(x_hat, z, a_t, s_t)
    if eta == 0.0:
        return a_s * x_hat + s_s * eps_hat
    c2 = eta**2 * -math.expm1(l_t - l_s) * s_s**2  # η² σ̃²_{s|t}
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise")
    return a_s * x_hat + math.sqrt(max(s_s**2 - c2, 0.0)) * eps_hat + math.sqrt(c2) * noise


def ancestral_step(z: Tensor, x_hat: Tensor, t: float, s: float, schedule: Schedule, gamma: float = 0.0,
                   noise: Optional[Tensor] = None) -> Tensor:
    """One ancestral step from t to s < t (spec A2).

    z_s = μ̃_{s|t}(z_t, x̂) + sqrt((σ̃²_{s|t})^{1-γ} (σ²_{t|s})^γ) ε, where
    μ̃ = e^{λt-λs} (α_s/α_t) z_t + (1 - e^{λt-λs}) α_s x̂, σ̃² = (1 - e^{λt-λs}) σ_s² and
    σ²_{t|s} = (1 - e^{λt-λs}) σ_t². γ interpolates in log-variance.
    """
    if s <= 0.0:
        return x_hat
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1]; got {gamma}")
    a_t, s_t, l_t = _coefficients(schedule, torch.tensor(t, dtype=torch.float64))
    a_s, s_s, l_s = _coefficients(schedule, torch.tensor(s, dtype=torch.float64))
    r = math.exp(l_t - l_s)
    mean = (r * a_s / a_t) * z + (1.0 - r) * a_s * x_hat
    one_minus_r = -math.expm1(l_t - l_s)
    log_var = math.log(one_minus_r) + (1.0 - gamma) * math.log(s_s**2) + gamma * math.log(s_t**2)
    if noise is None:
        raise ValueError("ancestral_step needs noise")
    return mean + math.exp(0.5 * log_var) * noise


def dpmpp_2m_step(z: Tensor, x_hat: Tensor, t: float, s: float, schedule: Schedule,
                  previous: Optional[tuple[Tensor, float]] = None) -> Tensor:
    """One DPM-Solver++(2M) step from t to s < t (spec A9b; Lu et al. 2022, Algorithm 2), in ℓ = λ/2 = log(α/σ).

    z_s = (σ_s/σ_t) z_t − α_s (e^{−h} − 1) D with h = ℓ_s − ℓ_t, where D = x̂ without history (DDIM, first order)
    and D = (1 + 1/(2r)) x̂ − x̂_prev/(2r), r = h_prev/h, given the previous step's `previous = (x̂_prev, h_prev)`.
    The step into s = 0 returns x̂ (first order, as diffusers' final step to σ = 0).
    """
    if s <= 0.0:
        return x_hat
    (_, s_t, _), (a_s, s_s, _), h, d = _dpmpp_terms(x_hat, t, s, schedule, previous)
    return (s_s / s_t) * z - (a_s * math.expm1(-h)) * d


def _dpmpp_terms(x_hat: Tensor, t: float, s: float, schedule: Schedule, previous: Optional[tuple[Tensor, float]]):
    """((α_t, σ_t, λ_t), (α_s, σ_s, λ_s), h = ℓ_s − ℓ_t, D): the data term D = x̂, or with the previous step's
    (x̂_prev, h_prev) the multistep D = x̂ + (x̂ − x̂_prev)/(2r), r = h_prev/h (both DPM-Solver++(2M) forms)."""
    at_t = _coefficients(schedule, torch.tensor(t, dtype=torch.float64))
    at_s = _coefficients(schedule, torch.tensor(s, dtype=torch.float64))
    h = 0.5 * (at_s[2] - at_t[2])
    if previous is None:
        return at_t, at_s, h, x_hat
    x_prev, h_prev = previous
    return at_t, at_s, h, x_hat + (0.5 * h / h_prev) * (x_hat - x_prev)


def dpmpp_2m_sde_step(z: Tensor, x_hat: Tensor, t: float, s: float, schedule: Schedule,
                      previous: Optional[tuple[Tensor, float]] = None, noise: Optional[Tensor] = None) -> Tensor:
    """One SDE-DPM-Solver++(2M) step from t to s < t (Lu et al. 2022, "DPM-Solver++", its SDE solver; diffusers'
    `sde-dpmsolver++` with the midpoint rule, k-diffusion's `sample_dpmpp_2m_sde` at η = 1), in ℓ = log(α/σ):

        z_s = (σ_s/σ_t) e^{−h} z_t + α_s (1 − e^{−2h}) D + σ_s √(1 − e^{−2h}) ε,   h = ℓ_s − ℓ_t,

    with D = x̂ on a first-order step and D = x̂ + (x̂ − x̂_prev)/(2r), r = h_prev/h, given `previous`: the
    first-order step is exactly `ancestral_step` at γ = 0 (the same mean and noise), so this is ancestral sampling
    with DPM-Solver++'s second-order correction of its mean. The step into s = 0 returns x̂.
    """
    if s <= 0.0:
        return x_hat
    if noise is None:
        raise ValueError("dpmpp_2m_sde_step needs noise")
    (_, s_t, _), (a_s, s_s, _), h, d = _dpmpp_terms(x_hat, t, s, schedule, previous)
    kept = -math.expm1(-2.0 * h)  # 1 − e^{−2h}, exact for small h
    return (s_s / s_t * math.exp(-h)) * z + (a_s * kept) * d + (s_s * math.sqrt(kept)) * noise


def half_logsnr_step(t: float, s: float, schedule: Schedule) -> float:
    """h = ℓ_s − ℓ_t, ℓ = λ/2: the step size DPM-Solver measures its steps in."""
    return 0.5 * float(schedule.logsnr(torch.tensor(s, dtype=torch.float64))
                       - schedule.logsnr(torch.tensor(t, dtype=torch.float64)))


def langevin_step(denoise: Denoise, z: Tensor, s: float, schedule: Schedule, delta: float = 0.1,
                  noise: Optional[Tensor] = None) -> Tensor:
    """VDM's Langevin corrector at time s (spec A2): z ← z - ½ δ σ_s ε̂(z) + sqrt(δ) σ_s ε'."""
    if noise is None:
        raise ValueError("langevin_step needs noise")
    a_s, s_s, _ = _coefficients(schedule, torch.tensor(s, dtype=torch.float64))
    x_hat = _check_denoised(z, denoise(z, _batch_time(s, z)))
    eps_hat = eps_from_x(x_hat, z, a_s, s_s)
    return z - 0.5 * delta * s_s * eps_hat + math.sqrt(delta) * s_s * noise


def _batch_time(t: float, z: Tensor) -> Tensor:
    return torch.full((z.shape[0],), t, device=z.device, dtype=torch.float32 if z.dtype != torch.float64 else z.dtype)


def _resolve_times(steps: Optional[int], times: Optional[Tensor], grid: str, schedule: Schedule) -> Tensor:
    if times is None:
        return time_grid(steps if steps is not None else 50, grid, schedule)
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2:
        raise ValueError(f"times must hold at least two values; got {times.tolist()}")
    if bool((times[1:] >= times[:-1]).any()):
        raise ValueError(f"times must be strictly decreasing; got {times.tolist()}")
    if float(times.min()) < 0.0 or float(times.max()) > 1.0:
        raise ValueError(f"times must lie in [0, 1]; got {times.tolist()}")
    return times


def _sample(step_fn, denoise: Denoise, noise: Tensor, schedule: Schedule, times: Tensor, *,
            generator: Optional[torch.Generator], callback: Optional[Callback], progress: bool,
            langevin_steps: int, langevin_delta: float, description: str, noise_sampler: NoiseSampler) -> Tensor:
    if langevin_steps < 0:
        raise ValueError(f"langevin_steps must be 0 or more; got {langevin_steps}")
    z = noise
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist()))
    for i, (t, s) in enumerate(tqdm(pairs, desc=description, disable=not progress, leave=False)):
        x_hat = _check_denoised(z, denoise(z, _batch_time(t, z)))
        z = step_fn(z, x_hat, t, s, generator)
        if s > 0.0:
            for _ in range(langevin_steps):
                z = langevin_step(denoise, z, s, schedule, langevin_delta, noise_sampler(z, generator))
        if callback is not None:
            callback({"i": i, "t": t, "s": s, "z": z, "x_hat": x_hat})
    return z


@torch.no_grad()
def sample_ddim(denoise: Denoise, noise: Tensor, schedule: Schedule, steps: Optional[int] = 50, *,
                eta: float = 0.0, grid: str = "uniform", times: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None, callback: Optional[Callback] = None,
                progress: bool = False, langevin_steps: int = 0, langevin_delta: float = 0.1,
                noise_sampler: Optional[NoiseSampler] = None) -> Tensor:
    """DDIM sampling from `noise` (taken as z at the first grid time, normally t = 1).

    `times` overrides `steps`/`grid` with an explicit decreasing grid. `generator` seeds every noise
    draw (η > 0, Langevin); it must live on the device of `noise`.
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative; got {eta}")

    draw = noise_sampler or randn_like

    def step(z, x_hat, t, s, gen):
        return ddim_step(z, x_hat, t, s, schedule, eta, draw(z, gen) if eta > 0 and s > 0 else None)

    return _sample(step, denoise, noise, schedule, _resolve_times(steps, times, grid, schedule),
                   generator=generator, callback=callback, progress=progress,
                   langevin_steps=langevin_steps, langevin_delta=langevin_delta, description="DDIM",
                   noise_sampler=draw)


@torch.no_grad()
def sample_ancestral(denoise: Denoise, noise: Tensor, schedule: Schedule, steps: Optional[int] = 256, *,
                     gamma: float = 0.1, grid: str = "uniform", times: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None, callback: Optional[Callback] = None,
                     progress: bool = False, langevin_steps: int = 0, langevin_delta: float = 0.1,
                     noise_sampler: Optional[NoiseSampler] = None) -> Tensor:
    """Ancestral sampling (VDM): posterior mean plus noise with log-variance interpolation γ.

    γ = 0 uses the posterior ("small") variance, γ = 1 the forward ("large") one. With
    `langevin_steps=1` each step is followed by VDM's Langevin corrector (predictor-corrector).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1]; got {gamma}")

    draw = noise_sampler or randn_like

    def step(z, x_hat, t, s, gen):
        return ancestral_step(z, x_hat, t, s, schedule, gamma, draw(z, gen) if s > 0 else None)

    return _sample(step, denoise, noise, schedule, _resolve_times(steps, times, grid, schedule),
                   generator=generator, callback=callback, progress=progress,
                   langevin_steps=langevin_steps, langevin_delta=langevin_delta, description="ancestral",
                   noise_sampler=draw)


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoise, noise: Tensor, schedule: Schedule, steps: Optional[int] = 20, *,
                    grid: str = "uniform", times: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                    callback: Optional[Callback] = None, progress: bool = False, langevin_steps: int = 0,
                    langevin_delta: float = 0.1, noise_sampler: Optional[NoiseSampler] = None) -> Tensor:
    """DPM-Solver++(2M) (spec A9b): deterministic, second order in ℓ = λ/2, one network call per step.

    The first step has no history and is first order (DDIM); so is the step into t = 0. The history is the x̂
    of the previous *solver* step: a Langevin corrector step in between (if any) moves z but not the history, and
    guidance wrappers, being part of the denoiser, are part of every x̂ the history holds. `generator` and
    `noise_sampler` serve the corrector only.
    """
    return _multistep(dpmpp_2m_step, denoise, noise, schedule, _resolve_times(steps, times, grid, schedule),
                      generator=generator, callback=callback, progress=progress, langevin_steps=langevin_steps,
                      langevin_delta=langevin_delta, description="DPM-Solver++(2M)", noise_sampler=noise_sampler)


def _multistep(solver_step, denoise, noise, schedule, times, *, noise_sampler, stochastic=False, **keywords):
    """`_sample` with a DPM-Solver++(2M) step: `solver_step(z, x̂, t, s, schedule, previous[, noise])`, the history
    being the previous solver step's (x̂, h) and emptied at t = 0; a stochastic step gets a fresh draw for s > 0."""
    history: list = []  # [(x̂, h)] of the previous step
    draw = noise_sampler or randn_like

    def step(z, x_hat, t, s, gen):
        fresh = (draw(z, gen) if s > 0 else None,) if stochastic else ()
        z_next = solver_step(z, x_hat, t, s, schedule, history[-1] if history else None, *fresh)
        history[:] = [(x_hat, half_logsnr_step(t, s, schedule))] if s > 0 else []
        return z_next

    return _sample(step, denoise, noise, schedule, times, noise_sampler=draw, **keywords)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoise, noise: Tensor, schedule: Schedule, steps: Optional[int] = 20, *,
                        grid: str = "uniform", times: Optional[Tensor] = None,
                        generator: Optional[torch.Generator] = None, callback: Optional[Callback] = None,
                        progress: bool = False, langevin_steps: int = 0, langevin_delta: float = 0.1,
                        noise_sampler: Optional[NoiseSampler] = None) -> Tensor:
    """SDE-DPM-Solver++(2M) (`dpmpp_2m_sde_step`): stochastic, one network call and one noise draw per step.

    History as in `sample_dpmpp_2m` (the previous solver step's x̂, the first step and the step into t = 0 first
    order); the noise comes from `noise_sampler(z, generator)`, the run's noise distribution.
    """
    return _multistep(dpmpp_2m_sde_step, denoise, noise, schedule, _resolve_times(steps, times, grid, schedule),
                      generator=generator, callback=callback, progress=progress, langevin_steps=langevin_steps,
                      langevin_delta=langevin_delta, description="SDE-DPM-Solver++(2M)", noise_sampler=noise_sampler,
                      stochastic=True)


class SamplerEntry(NamedTuple):
    """A `SAMPLERS` row: the solver, and the keyword (a `SampleConfig` field of the same name) that sets its noise
    level, or None for a solver without one (the deterministic ones, and dpmpp-2m-sde at its one noise level).
    Every solver takes (denoise, noise, schedule, steps) and the keywords generator, progress, noise_sampler,
    langevin_steps and langevin_delta."""

    solve: Callable[..., Tensor]
    noise_level: Optional[str]


# The one table of sampler names: sample.sampler's validation, the CLI's --sampler choices and run_sampler read it.
SAMPLERS = {
    "ddim": SamplerEntry(sample_ddim, "eta"),
    "ancestral": SamplerEntry(sample_ancestral, "gamma"),
    "dpmpp-2m": SamplerEntry(sample_dpmpp_2m, None),
    "dpmpp-2m-sde": SamplerEntry(sample_dpmpp_2m_sde, None),
}
