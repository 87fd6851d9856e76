"""Guidance wrappers: classifier-free guidance, thresholding, and replacement, reconstruction and super-resolution
guidance (spec A7, A8)."""

import numpy as np
import pytest
import torch

from helpers import randomize_zero_inits
from kinema.diffusion import (
    ClassifierFreeGuidance,
    Conditioned,
    CosineSchedule,
    Denoiser,
    MeasurementGuidance,
    ReconstructionGuidance,
    Replacement,
    SuperResolutionGuidance,
    area_downsample,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
)
from kinema.diffusion import parameterization as P
from kinema.diffusion.guidance import Thresholded, dynamic_threshold, static_threshold
from kinema.models import UNet3D, UNet3DConfig

SCHEDULE = CosineSchedule()
TINY = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_levels=(1,), head_dim=8)


def _network(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return randomize_zero_inits(UNet3D(UNet3DConfig(**{**TINY, **kw})), seed=seed).to(dtype).eval()


# A Gaussian "video": one pixel, F frames, correlation ρ^|i-j| across time. Its optimal denoiser
# and the exact conditional p(x^b | x^a) are closed forms, so conditional samplers can be scored.
FRAMES, RHO = 6, 0.9
_i = torch.arange(FRAMES, dtype=torch.float64)
COV = RHO ** (_i[:, None] - _i[None, :]).abs()


def gaussian_denoise(z, t):
    alpha, sigma = SCHEDULE.alpha_sigma(t[:1])
    a, s = float(alpha), float(sigma)
    gain = a * COV @ torch.linalg.inv(a * a * COV + s * s * torch.eye(FRAMES, dtype=torch.float64))
    return (z.reshape(z.shape[0], FRAMES) @ gain.T).reshape(z.shape)


def exact_conditional(x_known, positions):
    rest = [i for i in range(FRAMES) if i not in positions]
    s_aa, s_ba = COV[positions][:, positions], COV[rest][:, positions]
    mean = s_ba @ torch.linalg.solve(s_aa, x_known)
    cov = COV[rest][:, rest] - s_ba @ torch.linalg.solve(s_aa, s_ba.T)
    return rest, mean, cov


def _conditional_samples(method_weight, positions, x_known, n=2000, sampler="ddim", langevin=0):
    known = x_known.view(1, 1, -1, 1, 1).expand(n, 1, len(positions), 1, 1)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 1, FRAMES, 1, 1, generator=gen, dtype=torch.float64)
    den = ReconstructionGuidance(gaussian_denoise, SCHEDULE, known, positions, method_weight,
                                 generator=torch.Generator().manual_seed(2))
    if sampler == "ddim":
        return sample_ddim(den, noise, SCHEDULE, 50, generator=gen, langevin_steps=langevin)
    if sampler == "dpmpp-2m":  # its history holds the guided x̂ of each step
        return sample_dpmpp_2m(den, noise, SCHEDULE, 25, generator=gen, langevin_steps=langevin)
    return sample_ancestral(den, noise, SCHEDULE, 100, gamma=0.0, generator=gen, langevin_steps=langevin)


def test_reconstruction_guidance_beats_replacement_on_a_gaussian_with_exact_conditional():
    positions, x_known = [0, 1], torch.tensor([1.5, 1.2], dtype=torch.float64)
    rest, mean, _ = exact_conditional(x_known, positions)
    errors = {}
    for w in (0.0, 5.0):
        out = _conditional_samples(w, positions, x_known).reshape(-1, FRAMES)
        assert torch.equal(out[:, positions], x_known.expand(out.shape[0], -1))  # known frames are returned
        errors[w] = float((out[:, rest].mean(0) - mean).abs().max())
    # Replacement samples E[x^b | z_t], not E[x^b | z_t, x^a]: its conditional mean is far off.
    assert errors[0.0] > 0.4, errors
    assert errors[5.0] < 0.15, errors


def test_known_frames_are_honoured_ever_more_closely_as_t_goes_to_zero():
    """The network's own reconstruction x̂^a_θ(z_t) of the known frames approaches x^a along the trajectory."""
    positions, x_known, n = [1, 3], torch.tensor([1.2, -0.9], dtype=torch.float64), 256
    record = []

    def recording(z, t):
        x_hat = gaussian_denoise(z, t)
        record.append((float(t[0]), float((x_hat.detach()[:, 0, positions, 0, 0] - x_known).square().mean())))
        return x_hat

    known = x_known.view(1, 1, -1, 1, 1).expand(n, 1, 2, 1, 1)
    for w in (0.0, 5.0):
        record.clear()
        den = ReconstructionGuidance(recording, SCHEDULE, known, positions, w,
                                     generator=torch.Generator().manual_seed(0))
        sample_ddim(den, torch.randn(n, 1, FRAMES, 1, 1, dtype=torch.float64), SCHEDULE, 40)
        times, errors = zip(*record)
        assert errors[-1] < 0.02 * errors[0], (w, errors[0], errors[-1])
        late = [e for t, e in record if t <= 0.3]
        assert all(b <= a * 1.05 for a, b in zip(late, late[1:])), late  # shrinking as t -> 0


# The best w_r depends on the sampler (measured: DDIM 5, ancestral 2; too large a w_r overshoots).
@pytest.mark.parametrize("sampler,langevin,weight", [("ddim", 0, 5.0), ("ancestral", 0, 2.0), ("ancestral", 1, 2.0),
                                                     ("dpmpp-2m", 0, 5.0), ("dpmpp-2m", 1, 5.0)])
def test_guided_sampling_works_with_every_sampler(sampler, langevin, weight):
    # Any subset of frames, not a prefix: first and last known, the middle is in-filled.
    positions, x_known = [0, 5], torch.tensor([1.0, -0.8], dtype=torch.float64)
    rest, mean, _ = exact_conditional(x_known, positions)
    plain = _conditional_samples(0.0, positions, x_known, n=1500, sampler=sampler, langevin=langevin)
    guided = _conditional_samples(weight, positions, x_known, n=1500, sampler=sampler, langevin=langevin)
    err = {name: float((out.reshape(-1, FRAMES)[:, rest].mean(0) - mean).abs().max())
           for name, out in (("replacement", plain), ("guided", guided))}
    assert err["guided"] < 0.5 * err["replacement"], err
    assert err["guided"] < 0.2, err


def _manual_replacement_ddim(network_denoise, noise, known, positions, steps, seed):
    """An independent replacement sampler: DDIM on z^b, z^a re-drawn from q(z^a_t | x^a) each step."""
    gen = torch.Generator().manual_seed(seed)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    z = noise.clone()
    for t, s in zip(times[:-1], times[1:]):
        a_t, s_t = (float(v) for v in SCHEDULE.alpha_sigma(t))
        t_net = torch.full((z.shape[0],), float(t))  # the sampler hands the denoiser float32 times
        a_net, s_net = (float(v) for v in SCHEDULE.alpha_sigma(t_net[:1]))
        z_in = z.clone()
        z_in[:, :, positions] = a_net * known + s_net * torch.randn(known.shape, generator=gen, dtype=z.dtype)
        x_hat = network_denoise(z_in, t_net)
        x_hat[:, :, positions] = known
        if s == 0:
            return x_hat
        a_s, s_s = (float(v) for v in SCHEDULE.alpha_sigma(s))
        z = a_s * x_hat + s_s * (z - a_t * x_hat) / s_t
    return z


def test_weight_zero_is_exactly_replacement():
    denoiser = Conditioned(Denoiser(_network(), SCHEDULE, "v"))
    noise = torch.randn(2, 1, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    known = torch.rand(2, 1, 2, 8, 8) * 2 - 1
    positions = [3, 1]
    reference = _manual_replacement_ddim(denoiser, noise, known, positions, steps=6, seed=5)
    outs = [sample_ddim(cls(denoiser, SCHEDULE, known, positions, *w, generator=torch.Generator().manual_seed(5)),
                        noise, SCHEDULE, 6)
            for cls, w in ((ReconstructionGuidance, (0.0,)), (Replacement, ()))]
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], reference, rtol=1e-5, atol=1e-5)
    # and a positive weight does change the b-part
    guided = sample_ddim(ReconstructionGuidance(denoiser, SCHEDULE, known, positions, 3.0,
                                                generator=torch.Generator().manual_seed(5)), noise, SCHEDULE, 6)
    assert not torch.allclose(guided, outs[0])
    assert torch.equal(guided[:, :, positions], known)


def _fixed_noise_replacement(denoiser, known, positions, seed=7):
    """The known-frame noise of a replacement is re-drawn per call; a fixed seed makes the loss a function."""
    return lambda: Replacement(denoiser, SCHEDULE, known, positions, generator=torch.Generator().manual_seed(seed))


def test_reconstruction_gradient_matches_finite_differences():
    denoiser = Conditioned(Denoiser(_network(seed=3, dtype=torch.float64), SCHEDULE, "v"))
    z = torch.randn(1, 1, 4, 8, 8, dtype=torch.float64)
    known = torch.rand(1, 1, 2, 8, 8, dtype=torch.float64) * 2 - 1
    positions, t, w = [0, 2], torch.full((1,), 0.6), 2.0
    a_t = float(SCHEDULE.alpha_sigma(t)[0])
    guided = ReconstructionGuidance(denoiser, SCHEDULE, known, positions, w, generator=torch.Generator().manual_seed(7))
    plain = _fixed_noise_replacement(denoiser, known, positions)
    with torch.no_grad():
        correction = guided(z, t) - plain()(z, t)
    grad = correction / (-0.5 * w * a_t)  # = ∇_{z^b} ‖x^a − x̂^a‖²
    assert torch.equal(correction[:, :, positions], torch.zeros_like(correction[:, :, positions]))

    def loss(zz):
        rep = plain()
        with torch.no_grad():
            return float((known - denoiser(rep.replace(zz, t), t)[:, :, positions]).square().sum())

    gen = torch.Generator().manual_seed(11)
    h = 1e-5
    for _ in range(2):
        direction = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        direction[:, :, positions] = 0
        numeric = (loss(z + h * direction) - loss(z - h * direction)) / (2 * h)
        assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-6, abs=1e-8)
    # A change in the known part of z does nothing: it is replaced before the network sees it.
    moved = z.clone()
    moved[:, :, positions] += 1.0
    assert loss(moved) == loss(z)


def test_measurement_guidance_with_a_linear_operator_is_its_closed_form():
    # x̂ = c·z and A a matrix on the flattened video: ∇_z ‖y − A c z‖² = −2c Aᵀ(y − A c z), so
    # x̃ = c z + w α c Aᵀ(y − A c z) exactly
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 3, 4, 4, generator=gen, dtype=torch.float64)
    A = torch.randn(5, 48, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    c, w, t = 0.7, 2.0, torch.full((2,), 0.3)
    alpha = float(SCHEDULE.alpha_sigma(t)[0][0])
    guided = MeasurementGuidance(lambda zz, tt: c * zz, SCHEDULE, y, w, lambda x: x.flatten(1) @ A.T)(z, t)
    flat = z.flatten(1)
    expected = c * flat + w * alpha * c * (y - c * flat @ A.T) @ A
    torch.testing.assert_close(guided.flatten(1), expected)
    assert torch.equal(MeasurementGuidance(lambda zz, tt: c * zz, SCHEDULE, y, 0.0, lambda x: x)(z, t), c * z)
    with pytest.raises(ValueError, match=r"maps x̂ of shape \(2, 1, 3, 4, 4\) to \(2, 48\).*\(2, 5\)"):
        MeasurementGuidance(lambda zz, tt: c * zz, SCHEDULE, y, w, lambda x: x.flatten(1))(z, t)
    with pytest.raises(ValueError, match="measurement guidance weight"):
        MeasurementGuidance(lambda zz, tt: zz, SCHEDULE, y, -1.0, lambda x: x)


def test_super_resolution_gradient_matches_finite_differences_and_pulls_toward_low_res():
    denoiser = Conditioned(Denoiser(_network(seed=4, dtype=torch.float64), SCHEDULE, "v"))
    z = torch.randn(1, 1, 3, 8, 8, dtype=torch.float64)
    low = torch.rand(1, 1, 3, 4, 4, dtype=torch.float64) * 2 - 1
    t, w = torch.full((1,), 0.5), 1.5
    a_t = float(SCHEDULE.alpha_sigma(t)[0])
    with torch.no_grad():
        grad = (SuperResolutionGuidance(denoiser, SCHEDULE, low, w)(z, t) - denoiser(z, t)) / (-0.5 * w * a_t)

    @torch.no_grad()
    def loss(zz):
        return float((low - area_downsample(denoiser(zz, t), (4, 4))).square().sum())

    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = 1e-5
    numeric = (loss(z + h * direction) - loss(z - h * direction)) / (2 * h)
    assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-6)


def test_super_resolution_guidance_matches_low_res_on_a_gaussian_and_composes_with_replacement():
    # Pixels of one frame, correlated in space: an exact linear denoiser on 4×4 frames.
    torch.manual_seed(0)
    n, size = 400, 4
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    cov = torch.exp(-torch.cdist(coords, coords) ** 2 / 4.0)

    def denoise(z, t):
        a, s = (float(v) for v in SCHEDULE.alpha_sigma(t[:1]))
        gain = a * cov @ torch.linalg.inv(a * a * cov + s * s * torch.eye(size * size, dtype=torch.float64))
        return (z.reshape(z.shape[0], -1) @ gain.T).reshape(z.shape)

    low = torch.randn(1, 1, 1, 2, 2, dtype=torch.float64).expand(n, 1, 1, 2, 2) * 0.8
    noise = torch.randn(n, 1, 1, size, size, dtype=torch.float64)
    def sample(w):
        return sample_ddim(SuperResolutionGuidance(denoise, SCHEDULE, low, w), noise, SCHEDULE, 40)

    errors = [float((area_downsample(sample(w), (2, 2)) - low).square().mean()) for w in (0.0, 2.0, 8.0)]
    assert errors[0] > 3 * errors[1] > 3 * errors[2], errors

    # Composed with a Replacement (known high-res frame 0), the gradient flows through to frame 1.
    known = torch.rand(n, 1, 1, size, size, dtype=torch.float64)
    low2 = low.expand(n, 1, 2, 2, 2)
    inner = Replacement(lambda z, t: denoise(z.transpose(1, 2).reshape(-1, 1, 1, size, size), t.repeat_interleave(2))
                        .reshape(n, 2, 1, size, size).transpose(1, 2), SCHEDULE, known, [0],
                        generator=torch.Generator().manual_seed(0))
    out = sample_ddim(SuperResolutionGuidance(inner, SCHEDULE, low2, 8.0),
                      torch.randn(n, 1, 2, size, size, dtype=torch.float64), SCHEDULE, 40)
    assert torch.equal(out[:, :, 0], known[:, :, 0])
    assert float((area_downsample(out, (2, 2))[:, :, 1] - low2[:, :, 1]).square().mean()) < errors[1]


def test_reconstruction_guidance_composes_with_classifier_free_guidance():
    net = _network(seed=5, num_classes=3)
    denoiser = Denoiser(net, SCHEDULE, "v")
    cond, uncond = {"labels": torch.tensor([0, 2])}, {"labels": torch.tensor([3, 3])}
    z = torch.randn(2, 1, 4, 8, 8)
    known = torch.rand(2, 1, 1, 8, 8)
    t = torch.full((2,), 0.4)

    def guided(inner):
        guided = ReconstructionGuidance(inner, SCHEDULE, known, [0], 2.0, generator=torch.Generator().manual_seed(0))
        return guided(z, t)

    cfg0 = guided(ClassifierFreeGuidance(denoiser, cond, uncond, 0.0))
    torch.testing.assert_close(cfg0, guided(Conditioned(denoiser, cond)))
    cfg2 = guided(ClassifierFreeGuidance(denoiser, cond, uncond, 2.0))
    assert not torch.allclose(cfg2, cfg0)
    assert torch.equal(cfg2[:, :, [0]], known)


def test_bad_known_frames_are_rejected():
    den = Conditioned(Denoiser(_network(), SCHEDULE, "v"))
    z, t = torch.randn(1, 1, 4, 8, 8), torch.full((1,), 0.5)
    with pytest.raises(ValueError, match="positions given for"):
        Replacement(den, SCHEDULE, torch.zeros(1, 1, 2, 8, 8), [0])
    with pytest.raises(ValueError, match="distinct"):
        Replacement(den, SCHEDULE, torch.zeros(1, 1, 2, 8, 8), [1, 1])
    with pytest.raises(ValueError, match="outside the 4 frames"):
        Replacement(den, SCHEDULE, torch.zeros(1, 1, 1, 8, 8), [4])(z, t)
    with pytest.raises(ValueError, match="height and width must match"):
        Replacement(den, SCHEDULE, torch.zeros(1, 1, 1, 16, 16), [0])(z, t)
    with pytest.raises(ValueError, match="weight must be"):
        ReconstructionGuidance(den, SCHEDULE, torch.zeros(1, 1, 1, 8, 8), [0], -1.0)
    with pytest.raises(ValueError, match="frames must match"):
        SuperResolutionGuidance(den, SCHEDULE, torch.zeros(1, 1, 3, 4, 4), 1.0)(z, t)


class _DeviceFreeSchedule:
    """α_t = cos(πt/2), σ_t = sin(πt/2) without the schedule's value checks (which read tensors back),
    so the wrappers can run on the "meta" device: a stand-in, on CPU, for z on an accelerator."""

    def alpha_sigma(self, t):
        return torch.cos(0.5 * torch.pi * t), torch.sin(0.5 * torch.pi * t)


def test_guidance_wrappers_move_known_frames_and_low_res_video_to_zs_device():
    schedule = _DeviceFreeSchedule()
    z, t = torch.randn(2, 1, 4, 4, 4, device="meta"), torch.full((2,), 0.5, device="meta")
    known, low = torch.rand(2, 1, 2, 4, 4), torch.rand(2, 1, 4, 2, 2)  # given on the CPU
    seen = []

    def denoise(zz, tt):
        seen.append(zz.device)
        return 0.5 * zz

    wrappers = {
        "replacement": Replacement(denoise, schedule, known, [0, 2]),
        "reconstruction": ReconstructionGuidance(denoise, schedule, known, [0, 2], 2.0),
        "super-resolution": SuperResolutionGuidance(denoise, schedule, low, 2.0),
        "super-resolution over replacement": SuperResolutionGuidance(Replacement(denoise, schedule, known, [0, 2]),
                                                                     schedule, low, 2.0),
    }
    for name, wrapper in wrappers.items():
        seen.clear()
        out = wrapper(z, t)
        assert out.device == z.device and out.shape == z.shape and out.dtype == z.dtype, name
        assert seen and all(d == z.device for d in seen), name


def test_guidance_wrappers_cast_known_frames_of_another_dtype_to_zs_dtype():
    denoiser = Conditioned(Denoiser(_network(seed=6), SCHEDULE, "v"))
    z, t = torch.randn(2, 1, 4, 8, 8), torch.full((2,), 0.6)
    known, low = torch.rand(2, 1, 2, 8, 8) * 2 - 1, torch.rand(2, 1, 4, 4, 4) * 2 - 1
    for make, given in ((lambda k: ReconstructionGuidance(denoiser, SCHEDULE, k, [1, 3], 3.0,
                                                          generator=torch.Generator().manual_seed(1)), known),
                        (lambda k: SuperResolutionGuidance(denoiser, SCHEDULE, k, 3.0), low)):
        out = make(given.double())(z, t)  # float64 data with a float32 z
        assert out.dtype == z.dtype
        torch.testing.assert_close(out, make(given)(z, t), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reconstruction_guidance_runs_on_cuda_with_known_frames_on_the_cpu():
    denoiser = Conditioned(Denoiser(_network(seed=7).cuda(), SCHEDULE, "v"))
    z, t = torch.randn(2, 1, 4, 8, 8, device="cuda"), torch.full((2,), 0.6, device="cuda")
    known = torch.rand(2, 1, 2, 8, 8) * 2 - 1

    def guided(k):
        return ReconstructionGuidance(denoiser, SCHEDULE, k, [0, 2], 3.0,
                                      generator=torch.Generator("cuda").manual_seed(2))(z, t)

    out = guided(known)
    assert out.device == z.device
    torch.testing.assert_close(out, guided(known.cuda()))
    torch.testing.assert_close(out[:, :, [0, 2]].cpu(), known)


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
