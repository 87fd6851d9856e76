"""Shared fixtures: a trained micro checkpoint per backbone, made once per test session.

Tests that only read these runs may share them; a test that writes into a run folder (other than `kinema eval`'s
own eval/ subfolder) must train its own. Slow tests (DDP, SIGKILL, overfitting, end-to-end CLI fault and
bad-input cases) carry `@pytest.mark.slow` (registered in pyproject.toml); `pytest -m "not slow"` is the edit loop,
`make test` runs everything.
"""

import pytest

from helpers import micro


def _trained(tmp_path_factory, name: str, *overrides: str, **kwargs):
    from kinema.train import train

    path = tmp_path_factory.mktemp(name) / "run"
    train(micro("train.steps=3", *overrides, **kwargs), path, progress=False)
    return path


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """A U-Net micro run trained 3 steps (one checkpoint, step_000003)."""
    return _trained(tmp_path_factory, "micro-unet")


@pytest.fixture(scope="session")
def micro_dit_run(tmp_path_factory):
    """A DiT micro run trained 3 steps."""
    return _trained(tmp_path_factory, "micro-dit", dit=True)


@pytest.fixture(scope="session", params=["unet3d", "dit"])
def framecond_run(request, tmp_path_factory):
    """A micro run of each backbone trained 3 steps with model.frame_conditioning (every pattern)."""
    return _trained(tmp_path_factory, f"micro-framecond-{request.param}", "model.frame_conditioning=true",
                    dit=request.param == "dit")
