"""The Fréchet distance between two Gaussians fitted to feature sets (FID, FVD and the oracle's FD).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})

The trace of the matrix square root is computed from the symmetric matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which has the
same eigenvalues as Σ₁ Σ₂ (AB and BA share eigenvalues), by two symmetric eigendecompositions in float64. Unlike
a general `sqrtm` of the non-symmetric Σ₁ Σ₂ this needs no imaginary-part clean-up and no diagonal offset when a
covariance is singular (fewer samples than dimensions): eigenvalues that round below zero are set to zero.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeatureStats", "frechet_distance", "frechet_distance_from_features"]


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); means (D,), covariances (D, D)."""
    mu1, mu2, sigma1, sigma2 = map(_as_float64, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be vectors of one length; got {mu1.shape} and {mu2.shape}")
    d = len(mu1)
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}); got {sigma1.shape} and {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class FeatureStats:
    """Running mean and covariance of feature vectors, accumulated batch by batch in float64.

    Batches are merged with the parallel update of Chan et al. (exact, and stable where summing raw second
    moments would cancel). The covariance uses N − 1 in the denominator, as `numpy.cov` and pytorch-fid do.
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features) -> "FeatureStats":
        """Add a batch of features (B, D) (numpy or torch)."""
        x = _as_float64(features)
        if x.ndim != 2:
            raise ValueError(f"features must have shape (B, D); got {x.shape}")
        if self._mean is not None and x.shape[1] != len(self._mean):
            raise ValueError(f"feature dimension changed from {len(self._mean)} to {x.shape[1]}")
        if len(x) == 0:
            return self
        mean = x.mean(0)
        centred = x - mean
        m2 = centred.T @ centred
        if self._mean is None:
            self.n, self._mean, self._m2 = len(x), mean, m2
            return self
        n, nb = self.n, len(x)
        delta = mean - self._mean
        self._mean = self._mean + delta * nb / (n + nb)
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * n * nb / (n + nb)
        self.n = n + nb
        return self

    @classmethod
    def of(cls, features) -> "FeatureStats":
        return cls().update(features)

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("no features accumulated")
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors; have {self.n}")
        return self._m2 / (self.n - 1)

    def frechet_distance(self, other: "FeatureStats") -> float:
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


def frechet_distance_from_features(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Na, D) and (Nb, D)."""
    return FeatureStats.of(a).frechet_distance(FeatureStats.of(b))
