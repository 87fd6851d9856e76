import numpy as np
import pytest
import torch

from kinema.diffusion import parameterization as P
from kinema.diffusion.guidance import (
    ClassifierFreeGuidance,
    Conditioned,
    Thresholded,
    dynamic_threshold,
    static_threshold,
)
from kinema.diffusion.schedules import CosineSchedule


def _cond_denoiser(calls=None):
    """x̂ depends on z and on a per-example label (a fake class-conditional model)."""

    def denoise(z, t, cond):
        if calls is not None:
            calls.append(z.shape[0])
        lab = cond["labels"].to(z.dtype).view(-1, *([1] * (z.ndim - 1)))
        return 0.4 * z + 0.1 * lab + 0.05 * t.view(-1, *([1] * (z.ndim - 1))).to(z.dtype)

    return denoise


def test_cfg_is_batched_and_follows_vdm_convention():
    calls = []
    den = _cond_denoiser(calls)
    z = torch.randn(3, 2, 2, 4, 4, dtype=torch.float64)
    t = torch.full((3,), 0.5)
    cond, uncond = {"labels": torch.tensor([1, 2, 3])}, {"labels": torch.tensor([10, 10, 10])}
    w = 2.5
    out = ClassifierFreeGuidance(den, cond, uncond, w)(z, t)
    assert calls == [6]  # one batched pass of 2B
    expected = (1 + w) * den(z, t, cond) - w * den(z, t, uncond)
    torch.testing.assert_close(out, expected)


def test_cfg_weight_zero_is_the_conditional_model():
    den = _cond_denoiser()
    z, t = torch.randn(2, 1, 1, 3, 3), torch.full((2,), 0.3)
    cond = {"labels": torch.tensor([4, 5])}
    out = ClassifierFreeGuidance(den, cond, {"labels": torch.tensor([0, 0])}, 0.0)(z, t)
    assert torch.equal(out, Conditioned(den, cond)(z, t))
    with pytest.raises(ValueError, match="guidance weight"):
        ClassifierFreeGuidance(den, cond, cond, -1.0)
    with pytest.raises(ValueError, match="same keys"):
        ClassifierFreeGuidance(den, cond, {"text": torch.zeros(2)}, 1.0)


def test_cfg_is_the_same_in_x_eps_and_v_space():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    x_c, x_u = torch.randn(2, *z.shape, generator=g, dtype=torch.float64)
    alpha, sigma = CosineSchedule().alpha_sigma(torch.linspace(0.1, 0.9, 4, dtype=torch.float64))
    a, s = P.broadcast_like(alpha, z), P.broadcast_like(sigma, z)
    w = 3.0
    x_space = (1 + w) * x_c - w * x_u
    eps_space = (1 + w) * P.eps_from_x(x_c, z, a, s) - w * P.eps_from_x(x_u, z, a, s)
    v_space = (1 + w) * P.v_from_x(x_c, z, a, s) - w * P.v_from_x(x_u, z, a, s)
    torch.testing.assert_close(P.x_from_eps(eps_space, z, a, s), x_space, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(P.x_from_v(v_space, z, a, s), x_space, atol=1e-10, rtol=1e-10)


def test_static_threshold():
    x = torch.tensor([[-3.0, -0.5, 0.2, 1.7]])
    assert static_threshold(x).tolist() == [[-1.0, -0.5, pytest.approx(0.2), 1.0]]


def test_dynamic_threshold_matches_numpy_quantile():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 8, 8, generator=g) * torch.tensor([0.2, 1.5, 4.0]).view(3, 1, 1, 1, 1)
    p = 0.95
    out = dynamic_threshold(x, p)
    for i in range(3):
        a = x[i].numpy()
        s = max(1.0, float(np.quantile(np.abs(a), p, method="inverted_cdf")))
        np.testing.assert_allclose(out[i].numpy(), np.clip(a, -s, s) / s, rtol=1e-6, atol=1e-7)
    assert torch.equal(out[0], x[0])  # already inside [-1, 1]: untouched
    assert out.abs().max() <= 1.0


def test_thresholded_wrapper():
    den = Thresholded(lambda z, t: 3 * z, "static")
    assert den(torch.tensor([[0.5, -0.1]]), torch.zeros(1)).tolist() == [[1.0, pytest.approx(-0.3)]]
    with pytest.raises(ValueError, match="mode"):
        Thresholded(lambda z, t: z, "soft")
