"""Fréchet distance and frame metrics (PSNR, SSIM, best-of-N) against independent references."""

import math

import numpy as np
import pytest
import torch

from kinema.eval import FeatureStats, best_of_n, frechet_distance, frechet_distance_from_features, psnr, ssim


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's computation: a general sqrtm of Σ1 Σ2, real part, offset if singular."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("dim, n", [(4, 500), (32, 400), (64, 200)])
def test_frechet_matches_scipy_reference(dim, n):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    b = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + rng.normal(size=dim)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = scipy_frechet(mu1, s1, mu2, s2)
    assert abs(ours - ref) < 1e-6
    assert frechet_distance_from_features(a, b) == pytest.approx(ours, rel=1e-12)


def test_frechet_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    assert abs(frechet_distance_from_features(x, x)) < 1e-9
    values = [frechet_distance_from_features(x, x + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:]))
    # a pure mean shift adds exactly ‖shift‖² (the covariances are equal)
    assert values[2] == pytest.approx(16 * 1.0 ** 2, rel=1e-9)


def test_frechet_handles_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))  # fewer samples than dimensions: rank 9
    ours = frechet_distance_from_features(a, b)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)),
                                 rel=1e-4)


def test_feature_stats_accumulates_batches_exactly():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(257, 8)) * 100 + 1e4  # large offset: naive sums of squares lose digits here
    stats = FeatureStats()
    for chunk in np.array_split(x, 7):
        stats.update(torch.from_numpy(chunk))
    assert stats.n == 257
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9)
    with pytest.raises(ValueError, match="dimension"):
        stats.update(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------- frame metrics

def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al.'s SSIM of two grey images, window by window, written independently of kinema's."""
    k = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    win = np.outer(k, k) / np.outer(k, k).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (win * a).sum(), (win * b).sum()
            va, vb = (win * (a - ma) ** 2).sum(), (win * (b - mb) ** 2).sum()
            cov = (win * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_window_by_window_reference():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 20, generator=g, dtype=torch.float64) * 2 - 1  # (C, F, H, W)
    pred = (target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    pred[1, 2] = -pred[1, 2]  # one anti-correlated channel/frame
    ours = ssim(pred, target)
    assert ours.shape == (3,)
    for f in range(3):
        ref = np.mean([reference_ssim(pred[c, f].numpy(), target[c, f].numpy(), 2.0) for c in range(2)])
        assert ours[f].item() == pytest.approx(ref, abs=1e-12)
    # float32 input gives the same to float32 precision
    assert torch.allclose(ssim(pred.float(), target.float()).double(), ours, atol=1e-5)


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((24, 24))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0)
    ours = ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range=1.0)
    assert ours.item() == pytest.approx(ref, abs=1e-9)


def test_ssim_closed_forms_and_data_range():
    x = torch.rand(1, 4, 16, 16, dtype=torch.float64) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    # two constant frames: only the luminance term remains, (2ab + C1) / (a² + b² + C1)
    for data_range in (1.0, 2.0):
        a, b = 0.3, -0.2
        c1 = (0.01 * data_range) ** 2
        expected = (2 * a * b + c1) / (a * a + b * b + c1)
        frame_a, frame_b = (torch.full((1, 1, 12, 12), v, dtype=torch.float64) for v in (a, b))
        got = ssim(frame_a, frame_b, data_range=data_range)
        assert got.item() == pytest.approx(expected, rel=1e-12)
    noisy = x + 0.1 * torch.randn_like(x)
    assert (ssim(noisy, x, data_range=2.0) != ssim(noisy, x, data_range=1.0)).all()
    assert torch.allclose(ssim(noisy, x), ssim(x, noisy))  # symmetric
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_psnr_closed_form_and_broadcasting():
    target = torch.zeros(2, 1, 3, 8, 8)  # (B, C, F, H, W)
    pred = target.clone()
    pred[:, :, 0] += 0.1
    pred[:, :, 1] -= 0.5
    values = psnr(pred, target)  # data_range 2 for [-1, 1]
    assert values.shape == (2, 3)
    assert values[0, 0].item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-6)
    assert values[0, 1].item() == pytest.approx(10 * math.log10(4 / 0.25), rel=1e-6)
    assert math.isinf(values[0, 2].item())
    assert psnr(pred, target, data_range=1.0)[0, 0].item() == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-6)
    samples = torch.stack([pred, pred * 2])  # (N=2, B, C, F, H, W) against one target
    assert psnr(samples, target).shape == (2, 2, 3)


def test_best_of_n_picks_the_sample_with_the_best_mean():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 4, 16, 16, generator=g) * 2 - 1
    noise = torch.tensor([0.5, 0.05, 0.3, 0.2]).view(4, 1, 1, 1, 1, 1)
    samples = target + noise * torch.randn((4, *target.shape), generator=g)  # sample 1 is the closest
    scores = psnr(samples, target)  # (N, B, F)
    best, index = best_of_n(scores)
    assert index.tolist() == [1, 1, 1] and torch.equal(best, scores[1])
    worst = best_of_n(scores, higher_is_better=False)
    assert worst.index.tolist() == [0, 0, 0]
    assert best_of_n(ssim(samples, target)).index.tolist() == [1, 1, 1]
