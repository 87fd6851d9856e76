"""Exported (inference-only) checkpoints and the pretrained model shipped inside the package."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from kinema.build import load_model
from kinema.checkpoint import PRETRAINED, export_weights, pretrained_dir, resolve_checkpoint
from kinema.cli import main
from kinema.config import with_sample
from kinema.models import BACKBONES
from kinema.sample import generate, uses_frame_conditioning


@pytest.fixture
def run(micro_run):
    return micro_run


def test_export_writes_half_precision_ema_weights_that_sample_like_the_checkpoint(run, tmp_path):
    out = export_weights(run, tmp_path / "exported", command="kinema train ...")
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "ema.safetensors", "state.json"]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable by all, as package files must be
    weights = load_file(str(out / "ema.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 3 and state["command"] == "kinema train ..."
    cfg, exported = load_model(out)
    _, original = load_model(run)
    assert next(exported.parameters()).dtype == torch.float32
    for (name, a), b in zip(original.state_dict().items(), exported.state_dict().values()):
        torch.testing.assert_close(a.half().float(), b, msg=name)  # exactly the fp16 rounding, nothing else
    cfg = with_sample(cfg, steps=3)
    a, b = generate(original, cfg, 2), generate(exported, cfg, 2)
    assert (a - b).abs().max() < 1e-2
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        load_model(out, weights="model")


def test_export_refuses_to_overwrite_and_cli_reports_the_size(run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="busy"):
        export_weights(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "small"), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "MB" in result.output and (tmp_path / "small" / "ema.safetensors").is_file()


def test_export_sets_sampling_defaults_and_nothing_else(run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "anc"),
                                       "sample.sampler=ancestral", "sample.steps=7"])
    assert result.exit_code == 0, result.output
    cfg, _ = load_model(tmp_path / "anc")
    original, _ = load_model(run)
    assert (cfg.sample.sampler, cfg.sample.steps) == ("ancestral", 7)
    assert (cfg.model, cfg.data, cfg.diffusion) == (original.model, original.data, original.diffusion)
    assert json.loads((tmp_path / "anc" / "state.json").read_text())["sample_overrides"] == [
        "sample.sampler=ancestral", "sample.steps=7"]
    for bad, match in ((["model.base_channels=16"], "sampling settings only"), (["sample.sampler=euler"], "sampler")):
        result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "bad"), *bad])
        assert result.exit_code != 0 and match in result.output, result.output
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_shipped_models_are_small_complete_and_sample_by_name(name, tmp_path, monkeypatch):
    folder = pretrained_dir(name)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 10e6, f"{name} is {size / 1e6:.1f} MB; the package ships at most 10 MB"
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] > 0 and state["command"].startswith(("kinema train", "python benchmarks/"))
    monkeypatch.chdir(tmp_path)  # by name from anywhere; a run of the same name in the cwd would win
    assert resolve_checkpoint(name) == folder
    result = CliRunner().invoke(main, ["sample", name, "--num", "2", "--steps", "2", "--out", "s.npz"])
    assert result.exit_code == 0, result.output
    import numpy as np

    cfg, model = load_model(name)
    assert uses_frame_conditioning(model) == cfg.model.frame_conditioning == (name == "moving-digits-frames")
    assert np.load(tmp_path / "s.npz")["videos"].shape[:4] == (2, cfg.data.frames, cfg.data.height, cfg.data.width)
    listing = CliRunner().invoke(main, ["presets"])
    assert name in listing.output
    result = CliRunner().invoke(main, ["eval", name, "--num", "2", "--steps", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "eval" / name / "eval.json").is_file()  # never into the installed package
    assert sorted(p.name for p in folder.iterdir()) == ["config.toml", "ema.safetensors", "state.json"]


def test_unknown_names_list_the_shipped_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sample", "no-such-model", "--num", "1"])
    assert result.exit_code != 0 and "no-such-model" in result.output and "moving-digits" in result.output


@pytest.mark.parametrize("fixture", ["micro_run", "micro_dit_run"])
def test_a_run_of_either_backbone_samples_and_scores_from_its_folder(fixture, request, tmp_path):
    run = request.getfixturevalue(fixture)
    cfg, model = load_model(run)
    assert type(model) is BACKBONES[cfg.model.backbone].network and model.config == cfg.model
    samples = tmp_path / "s.npz"
    result = CliRunner().invoke(main, ["sample", str(run), "--num", "2", "--steps", "2", "--out", str(samples)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", str(run), "--samples", str(samples), "--num", "2", "--quiet",
                                       "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "motion plausibility" in result.output
