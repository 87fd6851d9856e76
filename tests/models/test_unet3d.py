import pytest
import torch

from helpers import excess_loss_probe, frame_jacobian, moving_glyph_clips, randomize_zero_inits
from kinema.diffusion import CosineSchedule, diffusion_loss
from kinema.models import UNET_PRESETS, UNet3D, UNet3DConfig, temporal_attention_mask

SMALL = dict(base_channels=16, channel_mults=(1, 2), blocks_per_level=1, attention_levels=(0, 1), head_dim=8)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_zero_inits(UNet3D(UNet3DConfig(**{**SMALL, **kw})), seed=seed).eval()


@pytest.mark.parametrize("frames", [1, 4, 9, 16])
@pytest.mark.parametrize("hw", [(8, 8), (8, 12)])
def test_output_shape_equals_input_shape(frames, hw):
    model = _model()
    z = torch.randn(2, 3, frames, *hw)
    assert model(z, torch.rand(2)).shape == z.shape


def test_output_layer_is_zero_initialised():
    model = UNet3D(UNet3DConfig(**SMALL))
    assert torch.equal(model(torch.randn(2, 3, 4, 8, 8), torch.rand(2)), torch.zeros(2, 3, 4, 8, 8))


def test_factorization_without_temporal_attention_is_exactly_framewise():
    z = torch.randn(2, 3, 5, 8, 8)
    per_frame = _model(temporal_attention=False)
    for i in range(5):
        g = frame_jacobian(per_frame, z, i)
        others = torch.cat([g[:, :i], g[:, i + 1:]], dim=1)
        assert torch.all(others == 0) and torch.all(g[:, i] > 0)
    g = frame_jacobian(_model(temporal_attention=True), z, 2)
    assert torch.all(g > 0)  # with temporal attention every frame reaches frame 2


def test_temporal_conv_mixes_only_frames_within_its_receptive_field():
    """Without temporal attention, frames meet only through the temporal convs: 5 of them (one down block,
    two middle, two up) with kernel 3 reach ±5 frames and no further."""
    model = _model(temporal_attention=False, temporal_conv=3, channel_mults=(1,), attention_levels=())
    g = frame_jacobian(model, torch.randn(1, 3, 13, 8, 8), 6)[0]
    assert torch.all(g[1:12] > 0) and g[0] == 0 and g[12] == 0


def test_temporal_conv_starts_as_the_identity():
    plain = UNet3D(UNet3DConfig(**SMALL))
    randomize_zero_inits(plain)  # give the plain network non-trivial outputs
    with_conv = UNet3D(UNet3DConfig(**SMALL, temporal_conv=3))
    missing, unexpected = with_conv.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("temporal_conv" in k for k in missing)
    z, lv = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
    torch.testing.assert_close(with_conv(z, lv), plain(z, lv))


def test_temporal_conv_kernel_must_be_odd():
    with pytest.raises(ValueError, match="temporal_conv"):
        UNet3DConfig(temporal_conv=2)


@pytest.mark.parametrize("temporal_conv", [0, 3])
def test_joint_training_mask_isolates_image_frames_exactly(temporal_conv):
    model = _model(temporal_conv=temporal_conv)
    frame_mask = torch.tensor([[True, True, True, False, False, True],
                               [False, False, False, False, False, False]])
    z = torch.randn(2, 3, 6, 8, 8)
    for i in range(6):
        g = frame_jacobian(model, z, i, frame_mask=frame_mask)
        for b in range(2):
            if frame_mask[b, i]:  # a video frame sees every video frame and no image
                assert torch.all(g[b, frame_mask[b]] > 0)
                assert torch.all(g[b, ~frame_mask[b]] == 0)
            else:  # an image frame sees only itself
                assert g[b, i] > 0
                assert torch.all(torch.cat([g[b, :i], g[b, i + 1:]]) == 0)


@pytest.mark.parametrize("temporal_conv", [0, 3])
def test_all_true_frame_mask_equals_no_mask(temporal_conv):
    model = _model(temporal_conv=temporal_conv)
    z = torch.randn(2, 3, 4, 8, 8)
    lv = torch.rand(2)
    torch.testing.assert_close(model(z, lv, frame_mask=torch.ones(2, 4, dtype=torch.bool)), model(z, lv))


def test_temporal_attention_mask_definition():
    m = temporal_attention_mask(torch.tensor([[True, False, True]]))
    assert m[0].tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_relative_positions_make_a_time_shift_invisible():
    model = _model()
    clip = torch.randn(1, 3, 5, 8, 8)
    lv = torch.tensor([0.4])
    alone = model(clip, lv)
    # The same clip at absolute frame indices 2..6, behind two unrelated images.
    shifted = torch.cat([torch.randn(1, 3, 2, 8, 8), clip], dim=2)
    mask = torch.tensor([[False, False, True, True, True, True, True]])
    torch.testing.assert_close(model(shifted, lv, frame_mask=mask)[:, :, 2:], alone, atol=1e-5, rtol=1e-5)


def test_reversing_time_changes_output_unless_bias_is_symmetric():
    model = _model()
    z, lv = torch.randn(1, 3, 6, 8, 8), torch.tensor([0.3])
    rev = lambda x: x.flip(2)  # noqa: E731
    assert (model(rev(z), lv) - rev(model(z, lv))).abs().max() > 1e-3
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "position_bias"):
                b = module.position_bias.bias
                b.copy_(0.5 * (b + b.flip(1)))  # symmetric in the offset
    torch.testing.assert_close(model(rev(z), lv), rev(model(z, lv)), atol=1e-5, rtol=1e-5)


def test_relative_bias_works_beyond_its_clip_distance():
    model = _model(max_relative_distance=3)
    z = torch.randn(1, 3, 12, 8, 8)
    assert model(z, torch.rand(1)).shape == z.shape


def test_class_and_text_conditioning():
    model = _model(num_classes=10, text_dim=6)
    z, lv = torch.randn(2, 3, 3, 8, 8), torch.rand(2)
    a = model(z, lv, labels=torch.tensor([1, 2]))
    b = model(z, lv, labels=torch.tensor([3, 2]))
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.allclose(a[1], b[1], atol=1e-6)
    null = torch.full((2,), model.null_class)
    torch.testing.assert_close(model(z, lv), model(z, lv, labels=null))
    text = torch.randn(2, 4, 6)
    with_text = model(z, lv, text=text)
    assert (with_text - model(z, lv)).abs().max() > 1e-4
    # padding tokens are ignored; an all-padding text is the learned null text
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    changed = text.clone()
    changed[0, 2:] = 100.0
    torch.testing.assert_close(model(z, lv, text=text, text_mask=mask), model(z, lv, text=changed, text_mask=mask))
    none_mask = torch.zeros(2, 4, dtype=torch.bool)
    torch.testing.assert_close(model(z, lv, text=text, text_mask=none_mask), model(z, lv))
    assert model(z, lv, text=torch.randn(2, 6)).shape == z.shape  # pooled embedding


def test_unconditional_model_rejects_conditioning_and_bad_inputs():
    model = _model()
    z, lv = torch.randn(2, 3, 3, 8, 8), torch.rand(2)
    with pytest.raises(ValueError, match="labels"):
        model(z, lv, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 3, 8, 8), lv)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 3, 3, 7, 8), lv)
    with pytest.raises(ValueError, match="frame_mask"):
        model(z, lv, frame_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="head_dim"):
        UNet3DConfig(base_channels=20, head_dim=8, attention_levels=(0,))


@pytest.mark.parametrize("temporal_conv", [0, 3])
def test_gradient_checkpointing_gives_the_same_gradients(temporal_conv):
    z, lv = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
    grads = []
    for ckpt in (False, True):
        model = _model(gradient_checkpointing=ckpt, temporal_conv=temporal_conv).train()
        model(z, lv).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_dropout_is_active_only_in_training():
    model = _model(dropout=0.5)
    z, lv = torch.randn(1, 3, 2, 8, 8), torch.rand(1)
    assert torch.equal(model(z, lv), model(z, lv))
    model.train()
    assert not torch.equal(model(z, lv), model(z, lv))


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_presets_build(name):
    with torch.device("meta"):
        model = UNet3D(UNET_PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) > 1e6


@pytest.mark.slow
def test_tiny_overfits_one_batch():
    """The v-loss above the Bayes optimum (which is > 0 at high noise: 4 clips are ambiguous) falls ≥ 10×."""
    torch.manual_seed(0)
    model = UNet3D(UNET_PRESETS["tiny"], in_channels=1)
    schedule = CosineSchedule()
    x = moving_glyph_clips(4, 4, 16)
    g = torch.Generator().manual_seed(1)
    excess_loss = excess_loss_probe(model, schedule, x, g)
    optimum = excess_loss.optimum

    before = excess_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    for _ in range(300):
        loss = diffusion_loss(model, schedule, x, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = excess_loss()
    assert after < before / 10, (before, after, optimum.item())
