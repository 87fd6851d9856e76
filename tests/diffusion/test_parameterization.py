import math

import pytest
import torch

from kinema.diffusion import parameterization as P
from kinema.diffusion.schedules import CosineSchedule


def _state(dtype=torch.float64, seed=0, shape=(6, 3, 4, 5, 5), t_range=(0.05, 0.95)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * (t_range[1] - t_range[0]) + t_range[0]
    s = CosineSchedule()
    alpha, sigma = s.alpha_sigma(t)
    a, b = P.broadcast_like(alpha.to(dtype), x), P.broadcast_like(sigma.to(dtype), x)
    return x, eps, a, b, a * x + b * eps, s.logsnr(t)


def test_round_trips_fp32():
    x, eps, a, s, z, _ = _state(torch.float32)
    v = P.v_from_x(x, z, a, s)
    torch.testing.assert_close(P.x_from_v(v, z, a, s), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(P.x_from_eps(P.eps_from_x(x, z, a, s), z, a, s), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(P.eps_from_v(v, z, a, s), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(P.v_from_eps(eps, z, a, s), v, atol=1e-5, rtol=1e-5)


def test_v_definition_and_true_eps():
    x, eps, a, s, z, _ = _state()
    torch.testing.assert_close(P.v_from_x(x, z, a, s), a * eps - s * x)
    torch.testing.assert_close(P.eps_from_x(x, z, a, s), eps)


def test_error_ratios_are_snr_and_one_plus_snr():
    x, eps, a, s, z, lam = _state()
    x_hat = x + 0.1 * torch.randn_like(x)
    dx = (x_hat - x).pow(2).flatten(1).sum(1)
    dv = (P.v_from_x(x_hat, z, a, s) - P.v_from_x(x, z, a, s)).pow(2).flatten(1).sum(1)
    de = (P.eps_from_x(x_hat, z, a, s) - eps).pow(2).flatten(1).sum(1)
    snr = lam.exp()
    torch.testing.assert_close(dv / dx, 1 + snr, rtol=1e-10, atol=0)
    torch.testing.assert_close(de / dx, snr, rtol=1e-10, atol=0)


def test_both_blend_weights_and_exactness():
    x, eps, a, s, z, _ = _state()
    torch.testing.assert_close(P.x_from_both(x, eps, z, a, s), x)
    # Only the x-head is wrong: the error is scaled by sigma^2 = sigmoid(-lambda).
    err = P.x_from_both(x + 1.0, eps, z, a, s) - x
    torch.testing.assert_close(err, (s**2).expand_as(err))
    out = torch.cat([x, eps], dim=1)
    torch.testing.assert_close(P.x_from_output("both", out, z, a, s), x)


@pytest.mark.parametrize("prediction", ["v", "eps", "x", "both"])
@pytest.mark.parametrize("weighting", ["v-mse", "eps-mse", "x-mse", "snr-trunc", "min-snr"])
def test_loss_weight_converts_native_error_to_weighted_x_error(prediction, weighting):
    x, eps, a, s, z, lam = _state(t_range=(0.02, 0.98))
    x_hat = x + 0.05 * torch.randn_like(x)
    native = {
        "v": (P.v_from_x(x_hat, z, a, s), P.v_from_x(x, z, a, s)),
        "eps": (P.eps_from_x(x_hat, z, a, s), eps),
        "x": (x_hat, x),
        "both": (x_hat, x),
    }[prediction]
    dn = (native[0] - native[1]).pow(2).flatten(1).sum(1)
    dx = (x_hat - x).pow(2).flatten(1).sum(1)
    snr = lam.exp()
    w = {
        "v-mse": 1 + snr,
        "eps-mse": snr,
        "x-mse": torch.ones_like(snr),
        "snr-trunc": torch.clamp(snr, min=1.0),
        "min-snr": torch.clamp(snr, max=5.0),
    }[weighting]
    torch.testing.assert_close(P.loss_weight(prediction, weighting, lam) * dn, w * dx, rtol=1e-9, atol=0)


def test_matching_pairs_have_unit_weight_at_extremes():
    lam = torch.tensor([-20.0, 0.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(P.loss_weight("v", "v-mse", lam), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(P.loss_weight("eps", "eps-mse", lam), torch.ones(3, dtype=torch.float64))


def test_auto_weighting_is_the_parameterizations_natural_weighting():
    lam = CosineSchedule().logsnr(torch.tensor([1.0 - 1e-6, 0.999, 0.5, 0.01], dtype=torch.float64))
    # ε-prediction with "auto" is ε-MSE: a unit factor on the native error, finite even at t near 1
    # (v-MSE on an ε output would weigh the noisiest examples by (1 + SNR)/SNR, about 5e8 at t = 1)
    eps_auto = P.loss_weight("eps", "auto", lam)
    assert bool(torch.isfinite(eps_auto).all())
    torch.testing.assert_close(eps_auto, P.loss_weight("eps", "eps-mse", lam), rtol=0, atol=0)
    assert P.loss_weight("eps", "v-mse", lam)[0].item() > 1e8  # what the old default gave
    # v-prediction with "auto" is v-MSE exactly, so existing v runs train the same
    assert torch.equal(P.loss_weight("v", "auto", lam), P.loss_weight("v", "v-mse", lam))
    for prediction in P.PREDICTIONS:
        natural = P.natural_weighting(prediction)
        assert natural in P.WEIGHTINGS and natural != "auto"
        assert torch.equal(P.loss_weight(prediction, "auto", lam), P.loss_weight(prediction, natural, lam))
    assert [P.natural_weighting(p) for p in ("v", "eps", "x", "both")] == ["v-mse", "eps-mse", "x-mse", "v-mse"]
    with pytest.raises(ValueError, match="prediction"):
        P.natural_weighting("score")


def test_noise_level_is_normalised_angle():
    lam = torch.linspace(-20, 20, 41, dtype=torch.float64)
    level = P.noise_level(lam)
    alpha = torch.sigmoid(lam).sqrt()
    torch.testing.assert_close(torch.cos(level * math.pi / 2), alpha, atol=1e-12, rtol=0)
    assert bool((level[1:] < level[:-1]).all())
    assert 0 <= float(level.min()) and float(level.max()) <= 1


def test_denoiser_with_oracle_network_returns_x():
    x, eps, *_ = _state(torch.float32)
    schedule = CosineSchedule()
    t = torch.full((x.shape[0],), 0.3)
    alpha, sigma = schedule.alpha_sigma(t)
    a, s = P.broadcast_like(alpha, x), P.broadcast_like(sigma, x)
    z = a * x + s * eps
    v_true = a * eps - s * x
    seen = {}

    def network(z_in, level):
        seen["level"] = level
        return v_true

    den = P.Denoiser(network, schedule, "v")
    torch.testing.assert_close(den(z, t), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["level"], P.noise_level(schedule.logsnr(t)))


def test_denoiser_rejects_wrong_output_shape():
    den = P.Denoiser(lambda z, level: z[:, :1], CosineSchedule(), "v")
    with pytest.raises(ValueError, match="network output"):
        den(torch.zeros(2, 3, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="prediction"):
        P.Denoiser(lambda z, level: z, CosineSchedule(), "score")
