"""Frame conditioning in the networks: known frames and their mask as extra input channels."""

import pytest
import torch

from helpers import randomize_zero_inits
from kinema.models import DiT, DiTConfig, UNet3D, UNet3DConfig
from kinema.train.patterns import PATTERNS, draw_known_masks

SMALL = {"unet3d": lambda **kw: UNet3D(UNet3DConfig(in_channels=1, base_channels=8, channel_mults=(1, 2),
                                                    attention_levels=(1,), head_dim=8, **kw)),
         "dit": lambda **kw: DiT(DiTConfig(in_channels=1, hidden_dim=32, depth=2, heads=2, **kw))}


def _model(backbone: str, **kw):
    """A frame-conditioned model with every zero-initialised weight random, the known-frame inputs included."""
    torch.manual_seed(0)
    model = randomize_zero_inits(SMALL[backbone](frame_conditioning=True, **kw))
    first = model.input_conv if backbone == "unet3d" else model.patch_embedding
    first.weight.data.normal_(0.0, 0.1)  # its known-frame slice starts at 0, which randomize_zero_inits leaves
    return model.eval()


@pytest.mark.parametrize("backbone", sorted(SMALL))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_reaches_the_network_at_exactly_its_known_frames(backbone, pattern):
    model = _model(backbone)
    weights = [float(p == pattern) for p in PATTERNS]
    mask = draw_known_masks(3, 4, weights, torch.Generator().manual_seed(1))
    assert (mask.any() if pattern != "none" else not mask.any()) and not mask.all(dim=1).any()
    z, level = torch.randn(3, 1, 4, 16, 16), torch.full((3,), 0.5)
    frames = torch.randn(3, 1, 4, 16, 16)
    with torch.no_grad():
        base = model(z, level, known_frames=frames, known_mask=mask)
        for f in range(4):
            moved = frames.clone()
            moved[:, :, f] += 1.0
            changed = (model(z, level, known_frames=moved, known_mask=mask) - base).abs().flatten(1).amax(1) > 0
            assert torch.equal(changed, mask[:, f]), (pattern, f)  # a known frame is seen, an unknown one is not


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_a_dropped_condition_is_bit_identical_to_no_condition(backbone):
    model = _model(backbone)
    z, level = torch.randn(2, 1, 4, 16, 16), torch.full((2,), 0.3)
    with torch.no_grad():
        none = model(z, level)
        dropped = model(z, level, known_frames=torch.randn_like(z), known_mask=torch.zeros(2, 4, dtype=torch.bool))
        given = model(z, level, known_frames=torch.randn_like(z), known_mask=torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(none, dropped)
    assert not torch.equal(none, given)


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_the_known_frame_channels_start_silent(backbone):
    torch.manual_seed(0)
    model = randomize_zero_inits(SMALL[backbone](frame_conditioning=True))  # the input layer is only partly zero
    z, level = torch.randn(1, 1, 4, 16, 16), torch.full((1,), 0.5)
    with torch.no_grad():
        assert torch.equal(model(z, level), model(z, level, known_frames=torch.randn_like(z),
                                                   known_mask=torch.ones(1, 4, dtype=torch.bool)))


@pytest.mark.parametrize("backbone", sorted(SMALL))
def test_known_frames_are_refused_by_a_model_without_frame_conditioning(backbone):
    model = SMALL[backbone]()
    z = torch.randn(1, 1, 4, 16, 16)
    with pytest.raises(ValueError, match="trained without frame conditioning"):
        model(z, torch.full((1,), 0.5), known_frames=z, known_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="both known_frames and known_mask"):
        _model(backbone)(z, torch.full((1,), 0.5), known_frames=z)


def test_the_option_changes_only_the_input_layer():
    plain, framed = SMALL["unet3d"](), SMALL["unet3d"](frame_conditioning=True)
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    changed = [k for k, v in framed.state_dict().items() if shapes[k] != v.shape]
    assert changed == ["input_conv.weight"] and framed.input_conv.in_channels == 3  # z, known frame, mask


def test_known_frames_never_cross_into_independent_images():
    """Joint image+video training: the appended images are never known, whatever the pattern."""
    frame_mask = torch.tensor([[True] * 4 + [False] * 2] * 64)
    masks = draw_known_masks(64, 6, [0, 0, 0, 1], torch.Generator().manual_seed(0), frame_mask)
    assert not masks[:, 4:].any() and masks[:, :4].any() and not masks[:, :4].all(dim=1).any()
