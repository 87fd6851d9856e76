"""Sampling a network with the run's settings: the sampler table, and what the solver receives."""

import numpy as np
import pytest
import torch

from helpers import micro
from kinema.config import with_sample
from kinema.diffusion import samplers
from kinema.diffusion.samplers import SAMPLERS, SamplerEntry
from kinema.sample import run_sampler, sampler_keywords, sampling_record


def test_a_sampler_added_to_the_table_is_validated_and_run_with_its_settings(monkeypatch):
    """Adding a sampler is its function and one SAMPLERS entry: config validation and run_sampler read the table."""
    received = {}

    def sample_toy(denoise, noise, schedule, steps, **kwargs):  # a deterministic solver: no noise level
        received.update(kwargs, steps=steps)
        return denoise(noise, torch.ones(noise.shape[0]))

    cfg = micro()
    with pytest.raises(ValueError, match="sample.sampler must be one of"):
        with_sample(cfg, sampler="toy")
    monkeypatch.setitem(SAMPLERS, "toy", SamplerEntry(sample_toy, None))
    cfg = with_sample(cfg, sampler="toy", steps=5, langevin_steps=2)
    out = run_sampler(lambda z, t: 0.5 * z, torch.ones(1, 1, 2, 4, 4), cfg)
    assert torch.equal(out, torch.full((1, 1, 2, 4, 4), 0.5))
    assert {k: received[k] for k in ("steps", "langevin_steps", "langevin_delta")} == {
        "steps": 5, "langevin_steps": 2, "langevin_delta": cfg.sample.langevin_delta}
    assert "eta" not in received and "gamma" not in received  # no noise level for a sampler without one
    with pytest.raises(ValueError, match="does not apply to the toy sampler"):
        with_sample(cfg, eta=0.5)


def test_the_record_names_exactly_what_the_solver_receives():
    cfg = with_sample(micro(), sampler="ancestral", gamma=0.4, langevin_steps=0)
    assert sampler_keywords(cfg.sample) == {"steps": 3, "gamma": 0.4, "langevin_steps": 0}
    corrected = with_sample(cfg, langevin_steps=1)
    assert sampler_keywords(corrected.sample)["langevin_delta"] == corrected.sample.langevin_delta
    record = sampling_record(cfg.sample)
    assert record == {"sampler": "ancestral", "steps": 3, "gamma": 0.4, "langevin_steps": 0,
                      "guidance": cfg.sample.guidance, "seed": cfg.sample.seed, "precision": cfg.sample.precision}
    assert samplers.SAMPLERS["ddim"].noise_level == "eta" and samplers.SAMPLERS["ancestral"].noise_level == "gamma"


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-2m-sde"])
def test_every_sampling_command_accepts_dpm_solver_by_name(micro_run, tmp_path, sampler):
    """DPM-Solver++(2M) and its SDE form landed as functions and SAMPLERS entries: every command takes them by name."""
    from click.testing import CliRunner

    from kinema.cli import main

    runner = CliRunner()
    clip, low = tmp_path / "clip.npz", tmp_path / "low.npz"
    np.savez(low, videos=np.zeros((1, 4, 8, 8, 1), np.uint8))  # a quarter of the micro model's pixels
    result = runner.invoke(main, ["sample", str(micro_run), "--num", "2", "--sampler", sampler, "--steps", "3",
                                  "--out", str(clip)])
    assert result.exit_code == 0, result.output
    for command in (["predict", "--context", str(clip), "--frames", "2"], ["extend", "--length", "6", "--num", "1"],
                    ["interpolate", "--video", str(clip), "--factor", "2"], ["upsample", "--video", str(low)]):
        result = runner.invoke(main, [command[0], str(micro_run), *command[1:], "--sampler", sampler, "--steps", "3",
                                      "--out", str(tmp_path / f"{command[0]}.npz")])
        assert result.exit_code == 0, (command, result.output)
    result = runner.invoke(main, ["eval", str(micro_run), "--num", "2", "--sampler", sampler, "--steps", "2",
                                  "--quiet", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["sample", str(micro_run), "--num", "1", "--sampler", sampler, "--gamma", "0.5"])
    assert result.exit_code == 1 and f"does not apply to the {sampler} sampler" in result.output
