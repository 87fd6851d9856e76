import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from helpers import excess_loss_probe, frame_jacobian, moving_glyph_clips, randomize_zero_inits
from kinema.build import load_model
from kinema.cli import main
from kinema.config import RUN_PRESETS, ConfigError, RunConfig, apply_overrides, load_config, save_config
from kinema.diffusion import CosineSchedule, diffusion_loss
from kinema.models import DIT_PRESETS, DiT, DiTConfig, UNet3DConfig
from kinema.models.dit import patchify, unpatchify
from kinema.models.positions import apply_rope, rope_angles

SMALL = dict(hidden_dim=32, depth=2, heads=2, patch_size=(1, 2, 2))
LAYOUTS = [(attention, position) for attention in ("interleaved", "full") for position in ("sincos", "rope")]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_zero_inits(DiT(DiTConfig(**{**SMALL, **kw})), seed=seed).eval()


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 2, 2), (2, 4, 1), (1, 1, 1)])
def test_patchify_round_trip_is_exact(patch):
    x = torch.randn(2, 3, 4, 8, 12)
    tokens = patchify(x, patch)
    p_t, p_h, p_w = patch
    grid = (4 // p_t, 8 // p_h, 12 // p_w)
    assert tokens.shape == (2, grid[0], grid[1] * grid[2], p_t * p_h * p_w * 3)
    # token (f', h', w') holds exactly the pixels of its patch, channels last
    f, h, w = 1, grid[1] - 1, 0
    patch_pixels = x[1, :, f * p_t:(f + 1) * p_t, h * p_h:(h + 1) * p_h, w * p_w:(w + 1) * p_w]
    assert torch.equal(tokens[1, f, h * grid[2] + w], patch_pixels.permute(1, 2, 3, 0).flatten())
    assert torch.equal(unpatchify(tokens, patch, grid), x)


def test_sizes_that_do_not_divide_name_the_dimension():
    model = _model(patch_size=(2, 4, 4))
    level = torch.rand(1)
    for shape, name in [((1, 3, 3, 8, 8), "frames F = 3"), ((1, 3, 4, 6, 8), "height H = 6"),
                        ((1, 3, 4, 8, 6), "width W = 6")]:
        with pytest.raises(ValueError, match=name):
            model(torch.randn(shape), level)


@pytest.mark.parametrize("attention,position", LAYOUTS)
def test_every_block_starts_as_the_identity(attention, position):
    torch.manual_seed(0)
    model = DiT(DiTConfig(**{**SMALL, "depth": 4, "attention": attention, "position": position}))
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(torch.equal(out, args[0])))
    z = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(model(z, torch.rand(2)), torch.zeros_like(z))  # zero-initialised final layer
    assert seen == [True] * 4
    seen.clear()
    randomize_zero_inits(model)(z, torch.rand(2))  # with the gates opened, blocks do change their input
    assert seen == [False] * 4


@pytest.mark.parametrize("position", ["sincos", "rope"])
@pytest.mark.parametrize("attention", ["interleaved", "full"])
def test_output_shapes_and_sampling_at_another_size(attention, position):
    model = _model(attention=attention, position=position).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # "train" at 4 frames of 8×8
        loss = diffusion_loss(model, CosineSchedule(), torch.randn(2, 3, 4, 8, 8)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for shape in [(2, 3, 4, 8, 8), (1, 3, 1, 8, 8), (1, 3, 9, 8, 12), (1, 3, 8, 16, 24)]:
        z = torch.randn(shape)
        out = model(z, torch.rand(shape[0]))
        assert out.shape == z.shape and torch.isfinite(out).all() and out.std() > 0
    tubelets = _model(attention=attention, position=position, patch_size=(2, 4, 2))
    z = torch.randn(1, 3, 6, 8, 12)
    assert tubelets(z, torch.rand(1)).shape == z.shape


@pytest.mark.parametrize("attention,position", LAYOUTS)
def test_joint_training_mask_isolates_image_frames_exactly(attention, position):
    model = _model(attention=attention, position=position)
    frame_mask = torch.tensor([[True, True, False, True, False], [False, False, False, False, False]])
    z = torch.randn(2, 3, 5, 8, 8)
    for i in range(5):
        g = frame_jacobian(model, z, i, frame_mask=frame_mask)
        for b in range(2):
            if frame_mask[b, i]:  # a video frame sees every video frame and no image
                assert torch.all(g[b, frame_mask[b]] > 0)
                assert torch.all(g[b, ~frame_mask[b]] == 0)
            else:  # an image frame sees only itself
                assert g[b, i] > 0
                assert torch.all(torch.cat([g[b, :i], g[b, i + 1:]]) == 0)


@pytest.mark.parametrize("attention,position", LAYOUTS)
def test_an_image_frames_output_does_not_depend_on_the_slot_it_occupies(attention, position):
    model = _model(seed=1, attention=attention, position=position)
    frame_mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 3 + [False] * 5])
    z, level = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(2)), torch.rand(2)
    swapped = z[:, :, [0, 1, 2, 3, 4, 6, 5, 7]]  # the images at slots 5 and 6 trade places
    with torch.no_grad():
        out = model(z, level, frame_mask=frame_mask)
        out_swapped = model(swapped, level, frame_mask=frame_mask)
        # each image is denoised as a one-frame clip, wherever it sits
        alone = model(z[:, :, 5:7].transpose(1, 2).reshape(4, 3, 1, 8, 8), level.repeat_interleave(2))
        clips = model(z[:1, :, :5], level[:1])  # the first example's clip without its images
    torch.testing.assert_close(out_swapped[:, :, 6], out[:, :, 5], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_swapped[:, :, 5], out[:, :, 6], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_swapped, out[:, :, [0, 1, 2, 3, 4, 6, 5, 7]], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, 5:7].transpose(1, 2).reshape(4, 3, 1, 8, 8), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:1, :, :5], clips, atol=1e-5, rtol=0)  # video frames: as without images
    assert out[:, :, 5:7].abs().max() > 1e-2  # not vacuous: the images' outputs are not zero


def test_all_true_frame_mask_equals_no_mask_and_tubelets_refuse_images():
    for attention in ("interleaved", "full"):
        model = _model(attention=attention)
        z, level = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
        torch.testing.assert_close(model(z, level, frame_mask=torch.ones(2, 4, dtype=torch.bool)), model(z, level))
    with pytest.raises(ValueError, match="p_t = 1"):
        _model(patch_size=(2, 2, 2))(z, level, frame_mask=torch.tensor([[True] * 3 + [False]] * 2))
    with pytest.raises(ValueError, match="frame_mask"):
        model(z, level, frame_mask=torch.ones(2, 3, dtype=torch.bool))


def _token_jacobian(block, x, c, index):
    """|∂ block(x)[index] / ∂ x| summed over channels, shape (F', S)."""
    x = x.clone().requires_grad_(True)
    out = block(x, c, None, None)
    (out[index] * torch.randn_like(out[index])).sum().backward()
    return x.grad.abs().sum(dim=-1)[0]


def test_spatial_blocks_stay_in_their_frame_and_temporal_blocks_at_their_position():
    interleaved, full = _model(attention="interleaved", depth=4), _model(attention="full")
    assert [b.attn.layout for b in interleaved.blocks] == ["spatial", "temporal", "spatial", "temporal"]
    x, c = torch.randn(1, 4, 16, 32), F.silu(torch.randn(1, 32))
    g = _token_jacobian(interleaved.blocks[0], x, c, (0, 2))  # output frame 2 of a spatial block
    assert torch.all(g[2] > 0) and torch.all(g[[0, 1, 3]] == 0)
    g = _token_jacobian(interleaved.blocks[1], x, c, (0, slice(None), 5))  # position 5 of a temporal block
    assert torch.all(g[:, 5] > 0) and g.sum() == g[:, 5].sum()
    g = _token_jacobian(full.blocks[0], x, c, (0, 2, 5))  # one token of a full block sees every token
    assert torch.all(g > 0)


def test_rope_scores_depend_only_on_relative_position():
    grid, head_dim = (6, 7, 8), 14
    angles = rope_angles(grid, head_dim).reshape(*grid, head_dim // 2)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(head_dim, generator=g, dtype=torch.float64)

    def score(p, r):
        a, b = angles[p].double(), angles[r].double()
        return float(apply_rope(q, a.cos(), a.sin()) @ apply_rope(k, b.cos(), b.sin()))

    p, r = (1, 2, 0), (3, 1, 4)
    for shift in [(1, 0, 0), (0, 3, 0), (0, 0, 2), (2, 3, 3)]:
        moved = tuple(x + s for x, s in zip(p, shift)), tuple(x + s for x, s in zip(r, shift))
        assert math.isclose(score(*moved), score(p, r), rel_tol=1e-9, abs_tol=1e-9)
    for axis in range(3):  # every axis has rotary channels: changing the offset along it changes the score
        other = tuple(x + (axis == i) for i, x in enumerate(r))
        assert abs(score(p, other) - score(p, r)) > 1e-3
    # at equal positions the rotation cancels: the score is the plain dot product
    assert math.isclose(score(r, r), float(q @ k), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("attention,position", LAYOUTS)
def test_positions_break_token_permutation_symmetry(attention, position):
    """Without positions a transformer is equivariant to permuting tokens; rolling whole patches is such a
    permutation, so each position option must make the output depend on where a patch is."""
    model = _model(attention=attention, position=position)
    z, level = torch.randn(1, 3, 4, 8, 8), torch.rand(1)
    for dims, shift in [((4,), 2), ((3,), 2), ((2,), 1)]:  # one patch along W, H, F
        rolled = model(torch.roll(z, shift, dims), level)
        assert (rolled - torch.roll(model(z, level), shift, dims)).abs().max() > 1e-4


def test_class_and_text_conditioning():
    model = _model(num_classes=10, text_dim=6)
    z, level = torch.randn(2, 3, 2, 8, 8), torch.rand(2)
    a, b = model(z, level, labels=torch.tensor([1, 2])), model(z, level, labels=torch.tensor([3, 2]))
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.allclose(a[1], b[1], atol=1e-6)
    torch.testing.assert_close(model(z, level), model(z, level, labels=torch.full((2,), model.null_class)))
    assert (model(z, level, text=torch.randn(2, 4, 6)) - model(z, level)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="labels"):
        _model()(z, level, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 2, 8, 8), level)
    assert _model().null_class is None


def test_config_checks():
    with pytest.raises(ValueError, match="even depth"):
        DiTConfig(depth=3)
    DiTConfig(depth=3, attention="full")
    with pytest.raises(ValueError, match="multiple of heads"):
        DiTConfig(hidden_dim=30, heads=4)
    with pytest.raises(ValueError, match="RoPE"):
        DiTConfig(hidden_dim=36, heads=12, position="rope")  # head_dim 3
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(patch_size=(1, 0, 2))


def test_gradient_checkpointing_gives_the_same_gradients():
    z, level = torch.randn(2, 3, 4, 8, 8), torch.rand(2)
    grads = []
    for ckpt in (False, True):
        model = _model(gradient_checkpointing=ckpt, position="rope").train()
        model(z, level).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# Parameter counts of DiT's Table 1 (its 4-channel latents, 1000 classes); ours: 3 channels, no classes.
PAPER_PARAMS = {"dit-s-2": 33e6, "dit-b-2": 130e6, "dit-l-2": 458e6, "dit-xl-2": 675e6}


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_presets_build_at_the_papers_sizes(name):
    with torch.device("meta"):
        params = sum(p.numel() for p in DiT(DIT_PRESETS[name]).parameters())
    if name == "dit-tiny":
        assert 2e6 < params < 4e6
    else:
        assert abs(params / PAPER_PARAMS[name] - 1) < 0.03, params


@pytest.mark.slow
def test_dit_tiny_overfits_one_batch():
    """As the U-Net `tiny` test: the v-loss above the Bayes optimum must fall, here ≥ 5× in 250 steps.

    A transformer has no convolutional prior and fits more slowly early on; a cosine-decayed
    learning rate gets it there within the CPU budget of a test.
    """
    torch.manual_seed(0)
    model = DiT(DIT_PRESETS["dit-tiny"], in_channels=1)
    schedule = CosineSchedule()
    x = moving_glyph_clips(4, 4, 16)
    g = torch.Generator().manual_seed(1)
    excess_loss = excess_loss_probe(model, schedule, x, g)
    optimum = excess_loss.optimum

    before = excess_loss()
    steps = 250
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        loss = diffusion_loss(model, schedule, x, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    after = excess_loss()
    assert after < before / 5, (before, after, optimum.item())


MICRO_DIT = ["model.hidden_dim=32", "model.depth=2", "model.heads=2", "data.frames=4", "data.height=16",
             "data.width=16", "data.digit_size=8", "train.batch_size=2", "train.warmup_steps=2",
             "train.sample_every=0", "train.log_every=1", "sample.steps=3", "train.precision=fp32"]


def test_cli_trains_and_samples_dit_tiny(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--preset", "dit-tiny", "--quiet", "--out-dir", str(tmp_path), *MICRO_DIT,
                                  "train.steps=2", "train.class_conditional=true"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "dit-tiny"
    assert 'backbone = "dit"' in (run / "config.toml").read_text()
    cfg, model = load_model(run)
    assert isinstance(model, DiT) and model.null_class == 10 and cfg.model.hidden_dim == 32
    result = runner.invoke(main, ["sample", str(run), "--num", "2", "--steps", "2", "--guidance", "1", "--label", "3",
                                  "--frames", "6", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    videos = np.load(tmp_path / "s.npz")["videos"]
    assert videos.shape == (2, 6, 16, 16, 3) and videos.dtype == np.uint8
    result = runner.invoke(main, ["presets"])
    assert result.exit_code == 0 and "dit-tiny" in result.output and "dit-xl-2" in result.output


def test_config_round_trip_and_backbone_switching(tmp_path):
    cfg = apply_overrides(copy.deepcopy(RUN_PRESETS["dit-tiny"]),
                          ["model.position=rope", "model.attention=full", "model.patch_size=2,2,2", "model.depth=3"])
    assert cfg.model == DiTConfig(hidden_dim=128, depth=3, heads=4, position="rope", attention="full",
                                  patch_size=(2, 2, 2))
    save_config(cfg, tmp_path / "dit.toml")
    assert load_config(tmp_path / "dit.toml") == cfg

    # a config.toml written before the backbone field existed is a U-Net
    save_config(RunConfig(), tmp_path / "unet.toml")
    old = (tmp_path / "unet.toml").read_text().replace('backbone = "unet3d"\n', "")
    assert "backbone" not in old
    (tmp_path / "old.toml").write_text(old)
    assert load_config(tmp_path / "old.toml") == RunConfig() and isinstance(RunConfig().model, UNet3DConfig)

    # a model table without `backbone` keeps the base's; naming the other one starts from its defaults
    (tmp_path / "deeper.toml").write_text("[model]\ndepth = 4\n")
    assert load_config(tmp_path / "deeper.toml", base=copy.deepcopy(RUN_PRESETS["dit-tiny"])).model.depth == 4
    assert apply_overrides(RunConfig(), ["model.backbone=dit"]).model == DiTConfig()

    with pytest.raises(ConfigError, match="model.base_channels' is a field of the unet3d backbone"):
        apply_overrides(copy.deepcopy(RUN_PRESETS["dit-tiny"]), ["model.base_channels=8"])
    with pytest.raises(ConfigError, match="model.backbone must be one of unet3d, dit"):
        apply_overrides(RunConfig(), ["model.backbone=vit"])
    with pytest.raises(ConfigError, match="model.heads must be an integer"):
        apply_overrides(copy.deepcopy(RUN_PRESETS["dit-tiny"]), ["model.heads=many"])
    with pytest.raises(ConfigError, match="unknown field 'model.hiden_dim'.*model.hidden_dim"):
        apply_overrides(copy.deepcopy(RUN_PRESETS["dit-tiny"]), ["model.hiden_dim=64"])
