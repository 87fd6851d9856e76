"""Training with frame conditioning: the patterns drawn, the loss over unknown frames only, the config."""

import pytest
import torch

from helpers import micro, moving_glyph_clips
from kinema.config import ConfigError
from kinema.diffusion import CosineSchedule, Denoiser, diffusion_loss
from kinema.train.patterns import PATTERNS, draw_known_masks, known_mask
from kinema.train.trainer import Objective


def per_frame(z, level, **cond):
    return 0.5 * z  # each output frame depends on its own input frame only


def test_the_loss_ignores_the_target_at_known_frames():
    schedule, g = CosineSchedule(), torch.Generator().manual_seed(0)
    x, noise, t = torch.randn(2, 1, 4, 8, 8), torch.randn(2, 1, 4, 8, 8), torch.tensor([0.3, 0.7])
    counted = torch.tensor([[False, True, True, True], [False, False, False, True]])
    perturbed = x.clone()
    perturbed[:, :, 0] += 5.0
    perturbed[1, :, 1:3] -= 3.0  # only frames the mask leaves out
    kw = dict(t=t, noise=noise, generator=g)
    loss = diffusion_loss(per_frame, schedule, x, loss_frames=counted, **kw)
    assert torch.equal(loss, diffusion_loss(per_frame, schedule, perturbed, loss_frames=counted, **kw))
    assert not torch.equal(diffusion_loss(per_frame, schedule, x, **kw), diffusion_loss(per_frame, schedule, perturbed,
                                                                                          **kw))
    full = diffusion_loss(per_frame, schedule, x, loss_frames=torch.ones(2, 4, dtype=torch.bool), **kw)
    assert torch.allclose(full, diffusion_loss(per_frame, schedule, x, **kw))  # all counted: the plain mean


def test_the_default_objective_masks_the_known_frames():
    cfg = micro("model.frame_conditioning=true")
    objective, x = Objective(cfg), torch.randn(2, 1, 4, 16, 16)
    cond = {"known_mask": torch.tensor([[True, True, False, False]] * 2), "known_frames": x}
    perturbed = x.clone()
    perturbed[:, :, :2] += 4.0
    a = objective.loss(per_frame, x, cond, torch.Generator().manual_seed(0))
    b = objective.loss(per_frame, perturbed, cond, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no frame to count"):
        objective.loss(per_frame, x, {"known_mask": torch.ones(2, 4, dtype=torch.bool)}, torch.Generator())


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_draws_its_shape(pattern):
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([known_mask(pattern, 8, g) for _ in range(200)])
    assert not masks.all(dim=1).any()
    if pattern == "none":
        assert not masks.any()
    elif pattern == "prefix":
        assert all(bool(m[: int(m.sum())].all()) for m in masks) and set(masks.sum(1).tolist()) == set(range(1, 8))
    elif pattern == "first_last":
        assert (masks.sum(1) == 2).all() and masks[:, 0].all() and masks[:, -1].all()
    else:
        assert len({tuple(m.tolist()) for m in masks}) > 50  # many subsets, prefixes and gaps among them


def test_pattern_weights_set_the_frequencies():
    masks = draw_known_masks(2000, 8, [1, 3, 0, 0], torch.Generator().manual_seed(0))
    assert abs((~masks.any(1)).float().mean() - 0.25) < 0.04 and masks[:, 0].float().mean() > 0.7


def test_config_checks():
    with pytest.raises(ConfigError, match="train.frame_patterns"):
        micro("train.frame_patterns=0,0,0,0")
    with pytest.raises(ConfigError, match="at least 2 frames"):
        micro("model.frame_conditioning=true", "data.frames=1")
    cfg = micro("model.frame_conditioning=true", dit=True)
    assert cfg.model.frame_conditioning and cfg.train.frame_patterns == (0.1, 0.5, 0.2, 0.2)


def test_the_trainer_draws_known_frames_for_a_frame_conditioned_network_only():
    from types import SimpleNamespace

    from kinema.train.trainer import _conditioning

    state = SimpleNamespace(network=SimpleNamespace(null_class=None), generator=torch.Generator().manual_seed(0))
    video, cpu = torch.randn(16, 1, 4, 16, 16), torch.device("cpu")
    cond = _conditioning({"video": video}, micro("model.frame_conditioning=true", "train.frame_patterns=0,1,0,0"),
                         state, None, cpu)
    mask = cond["known_mask"]
    assert torch.equal(cond["known_frames"], video) and mask.shape == (16, 4)
    assert mask[:, 0].all() and not mask[:, -1].any() and len(set(mask.sum(1).tolist())) > 1  # prefixes of 1..3
    assert "known_mask" not in _conditioning({"video": video}, micro(), state, None, cpu)


@pytest.mark.slow
def test_a_tiny_frame_conditioned_model_overfits_a_batchs_continuation():
    """Four clips whose first frames tell them apart: trained with prefix conditioning, x̂ of the unknown frames at
    high noise given the first two frames is closer to the truth than without them (unconditioned, z_t at
    t = 0.9 tells the four apart only partly)."""
    from kinema.build import build_model, build_schedule

    cfg = micro("model.frame_conditioning=true", "train.frame_patterns=0.2,0.8,0,0")
    torch.manual_seed(0)
    model = build_model(cfg)
    schedule, objective = build_schedule(cfg.diffusion), Objective(cfg)
    x = moving_glyph_clips(4, 4, 16, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        mask = draw_known_masks(4, 4, cfg.train.frame_patterns, g)
        loss = objective.loss(model, x, {"known_frames": x, "known_mask": mask}, g).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    denoise, z = Denoiser(model, schedule), schedule.alpha_sigma(torch.tensor(0.9))
    zt = z[0] * x + z[1] * torch.randn(x.shape, generator=g)
    mask = torch.tensor([[True, True, False, False]] * 4)
    with torch.no_grad():
        given = denoise(zt, torch.full((4,), 0.9), {"known_frames": x, "known_mask": mask})
        alone = denoise(zt, torch.full((4,), 0.9))
    err_given = (given - x)[:, :, 2:].pow(2).mean()
    err_alone = (alone - x)[:, :, 2:].pow(2).mean()
    assert err_given < 0.8 * err_alone, (float(err_given), float(err_alone))
