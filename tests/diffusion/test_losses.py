import pytest
import torch

from kinema.diffusion import parameterization as P
from kinema.diffusion.losses import diffusion_loss, sample_times
from kinema.diffusion.schedules import CosineSchedule


def _fixed_x_hat_network(prediction, x_fake, schedule, t):
    """A network whose output means the same x̂ = x_fake in every parameterization."""
    alpha, sigma = schedule.alpha_sigma(t)

    def network(z, level):
        a, s = P.broadcast_like(alpha.to(z.dtype), z), P.broadcast_like(sigma.to(z.dtype), z)
        if prediction == "v":
            return P.v_from_x(x_fake, z, a, s)
        if prediction == "eps":
            return P.eps_from_x(x_fake, z, a, s)
        if prediction == "x":
            return x_fake
        return torch.cat([x_fake, P.eps_from_x(x_fake, z, a, s)], dim=1)  # "both": consistent heads

    return network


@pytest.mark.parametrize("weighting", ["v-mse", "eps-mse", "x-mse", "snr-trunc"])
def test_loss_is_the_same_weighted_x_error_in_every_parameterization(weighting):
    g = torch.Generator().manual_seed(0)
    schedule = CosineSchedule()
    x = torch.rand(5, 2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    x_fake = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    lam = schedule.logsnr(t)
    snr = lam.exp()
    w = {"v-mse": 1 + snr, "eps-mse": snr, "x-mse": torch.ones_like(snr), "snr-trunc": snr.clamp(min=1)}[weighting]
    expected = w * (x_fake - x).pow(2).flatten(1).mean(1)
    for prediction in ["v", "eps", "x", "both"]:
        net = _fixed_x_hat_network(prediction, x_fake, schedule, t)
        loss = diffusion_loss(net, schedule, x, prediction=prediction, weighting=weighting, t=t, noise=noise)
        assert loss.shape == (5,)
        torch.testing.assert_close(loss, expected, rtol=1e-8, atol=0)


def test_v_mse_with_zero_network_is_mean_square_of_v():
    g = torch.Generator().manual_seed(1)
    schedule = CosineSchedule()
    x = torch.rand(3, 1, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x.shape, generator=g)
    t = torch.tensor([0.2, 0.5, 0.8])
    a, s = (P.broadcast_like(c, x) for c in schedule.alpha_sigma(t))
    v = a * noise - s * x
    loss = diffusion_loss(lambda z, level: torch.zeros_like(z), schedule, x, t=t, noise=noise)
    torch.testing.assert_close(loss, v.pow(2).flatten(1).mean(1))


def test_loss_passes_cond_and_checks_shapes():
    schedule = CosineSchedule()
    x = torch.zeros(2, 3, 1, 4, 4)
    seen = {}

    def net(z, level, labels=None):
        seen["labels"] = labels
        return torch.zeros_like(z)

    diffusion_loss(net, schedule, x, cond={"labels": torch.tensor([1, 2])})
    assert seen["labels"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="network output"):
        diffusion_loss(lambda z, level: z[:, :1], schedule, x)
    with pytest.raises(ValueError, match="noise"):
        diffusion_loss(lambda z, level: z, schedule, x, noise=torch.zeros(2, 3, 1, 4, 5))


def test_eps_prediction_with_the_default_weighting_trains_with_eps_mse():
    from kinema.config import config_from_dict

    cfg = config_from_dict({"diffusion": {"prediction": "eps"}})
    assert cfg.diffusion.weighting == "auto"
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 1, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1.0 - 1e-6, 0.5, 0.1], dtype=torch.float64)
    zero = lambda z, level: torch.zeros_like(z)  # noqa: E731
    loss = diffusion_loss(zero, schedule, x, prediction=cfg.diffusion.prediction, weighting=cfg.diffusion.weighting,
                          t=t, noise=noise)
    # ε-MSE on an ε output: the plain mean square of ε, finite at t near 1
    torch.testing.assert_close(loss, noise.pow(2).flatten(1).mean(1), rtol=1e-12, atol=0)
    explicit = diffusion_loss(zero, schedule, x, prediction="eps", weighting="eps-mse", t=t, noise=noise)
    assert torch.equal(loss, explicit)
    # a weighting the user sets is kept
    kept = config_from_dict({"diffusion": {"prediction": "eps", "weighting": "v-mse"}})
    assert kept.diffusion.weighting == "v-mse"


def test_v_prediction_with_auto_weighting_is_v_mse_exactly():
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 2, 2, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x.shape, generator=g)
    t = torch.tensor([0.999, 0.6, 0.3, 0.001])
    net = lambda z, level: 0.5 * z  # noqa: E731
    auto = diffusion_loss(net, schedule, x, prediction="v", weighting="auto", t=t, noise=noise)
    assert torch.equal(auto, diffusion_loss(net, schedule, x, prediction="v", weighting="v-mse", t=t, noise=noise))
    assert torch.equal(auto, diffusion_loss(net, schedule, x, t=t, noise=noise))  # the function's default


def test_a_toml_config_without_a_weighting_field_gets_auto(tmp_path):
    from kinema.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[diffusion]\nprediction = "eps"\n')
    assert load_config(path).diffusion.weighting == "auto"
    path.write_text('[diffusion]\nprediction = "eps"\nweighting = "min-snr"\n')
    assert load_config(path).diffusion.weighting == "min-snr"


def test_stratified_times_cover_every_bin_once():
    t = sample_times(16, generator=torch.Generator().manual_seed(3))
    bins = torch.floor(t.double() * 16).long().sort().values
    assert bins.tolist() == list(range(16))
    plain = sample_times(4096, generator=torch.Generator().manual_seed(3), stratified=False)
    assert 0.45 < plain.mean().item() < 0.55
