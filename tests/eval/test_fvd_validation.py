"""FVD validated as a metric: the appearance corruptions do what they say, and with the Kinetics-400 I3D each clear
corruption of real clips scores worse than real vs real (benchmarks/fvd_validation.py measures the whole table)."""

import numpy as np
import pytest
import torch

from kinema.eval.corruptions import APPEARANCE, GENERIC, blurred, corrupt, digit_sets, fvd_table, noised
from kinema.eval.i3d import load_i3d
from kinema.eval.i3d_weights import converted_weights


def test_blur_and_noise_grow_with_their_strength():
    torch.manual_seed(0)
    video = torch.rand(3, 4, 24, 24) * 2 - 1
    flat = torch.full((1, 2, 8, 8), 0.3)
    assert torch.allclose(blurred(flat, 2.0), flat)  # a constant frame stays constant, edges included
    detail = [(blurred(video, s) - video).abs().mean().item() for s in (0.5, 1.0, 2.0)]
    assert 0 < detail[0] < detail[1] < detail[2]
    rng = np.random.default_rng(0)
    grey = torch.zeros(1, 8, 32, 32)  # mid-grey: no clipping, so the noise's σ shows in [0, 1] units
    assert [round((noised(grey, s, rng) / 2).std().item(), 2) for s in (0.05, 0.1, 0.2)] == [0.05, 0.1, 0.2]
    assert noised(torch.ones(1, 2, 4, 4), 0.2, rng).max() <= 1
    assert len(APPEARANCE) == 6


def test_generic_corruptions_need_only_the_video_and_the_others_say_so():
    items = [{"video": torch.rand(3, 6, 8, 8) * 2 - 1} for _ in range(2)]
    held = corrupt(None, items, "held")
    assert held.shape == (2, 3, 6, 8, 8) and torch.equal(held[:, :, 5], held[:, :, 0])
    assert torch.equal(held[:, :, 0], torch.stack([it["video"][:, 0] for it in items]))
    assert {"shuffled", "held", "blur σ=1", "noise σ=0.1"} <= set(GENERIC)
    with pytest.raises(ValueError, match="swapped corruption redraws Moving Digits"):
        corrupt(None, items, "swapped")
    with pytest.raises(ValueError, match="unknown corruption 'blurry'"):
        corrupt(None, items, "blurry")


CLEAR = ("shuffled", "frozen", "jumping", "blur σ=1", "blur σ=2", "noise σ=0.05")


@pytest.mark.slow
def test_fvd_scores_each_clear_corruption_worse_than_real_vs_real(installed_i3d, tmp_path):
    # 8 sets of 16 clips (8×32×32) through I3D at 224×224: one to two minutes on 2 CPU cores. FVD cannot see a
    # swapped digit and barely the mildest blur (RESULTS.md, FVD validation: N = 64 and 128), so they are not asserted
    i3d = load_i3d(converted_weights(installed_i3d, cache=tmp_path))
    sets, reference = digit_sets(16, 8, 32, 1, 14, (1.0, 3.0), seed=0, kinds=CLEAR)
    table = fvd_table(i3d, sets, reference)
    assert all(table[kind] > 1.2 * table["real"] for kind in CLEAR), table
