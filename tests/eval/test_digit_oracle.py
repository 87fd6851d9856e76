import numpy as np
import torch

from kinema.data import MovingDigits
from kinema.eval import DigitOracle


def test_oracle_recognises_real_test_clips_and_catches_identity_swaps():
    ds = MovingDigits("test", frames=8, size=32, digit_size=14)
    items = [ds[i] for i in range(64)]
    videos = torch.stack([it["video"] for it in items])
    labels = np.array([int(it["label"]) for it in items])
    oracle = DigitOracle()
    pred = oracle.classify_frames(videos)
    assert (pred == labels[:, None]).mean() > 0.85  # per-frame accuracy on held-out digits
    kept = oracle.identity_kept(videos)
    assert kept.mean() > 0.75
    # swap the digit for another one halfway through: identity must be lost far more often
    swapped = videos.clone()
    for i in range(len(items)):
        other = next(j for j in range(len(items)) if labels[j] != labels[i])
        swapped[i, :, 4:] = videos[other, :, 4:]
    assert oracle.identity_kept(swapped).mean() < kept.mean() - 0.5
    # a blank video has no digit at all
    assert not oracle.identity_kept(-torch.ones(1, 1, 8, 32, 32))[0]
