"""`with_sample`: the one place where a command's sampling options meet the run's settings."""

import dataclasses

import pytest

from kinema.config import ConfigError, RunConfig, SampleConfig, with_sample


def test_with_sample_applies_given_settings_keeps_the_rest_and_leaves_the_original_alone():
    cfg = RunConfig()
    changed = with_sample(cfg, steps=7, seed=None, sampler="ancestral", gamma=0.5)
    assert (changed.sample.steps, changed.sample.sampler, changed.sample.gamma) == (7, "ancestral", 0.5)
    assert changed.sample.seed == cfg.sample.seed  # None: the run's value
    assert cfg.sample == SampleConfig() and changed.model == cfg.model and changed.data == cfg.data
    assert with_sample(cfg) == cfg


def test_with_sample_refuses_unknown_fields_bad_values_and_a_noise_level_the_sampler_ignores():
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="unknown field 'sample.stpes'.*sample.steps"):
        with_sample(cfg, stpes=3)
    with pytest.raises(ConfigError, match="sample.steps must be positive"):
        with_sample(cfg, steps=0)
    with pytest.raises(ConfigError, match="sample.gamma must lie in"):
        with_sample(cfg, sampler="ancestral", gamma=2.0)
    with pytest.raises(ConfigError, match="sample.gamma .* does not apply to the ddim sampler"):
        with_sample(cfg, gamma=0.3)  # the run's sampler is DDIM
    with pytest.raises(ConfigError, match="sample.eta .* does not apply to the ancestral sampler"):
        with_sample(dataclasses.replace(cfg, sample=SampleConfig(sampler="ancestral")), eta=0.5)
    assert with_sample(cfg, sampler="ancestral", gamma=0.3).sample.gamma == 0.3  # switching sampler and its noise
