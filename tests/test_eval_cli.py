"""`kinema eval`: sampling a checkpoint, scoring against held-out clips, eval.json + eval.html, clear errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from test_train import micro

from kinema.cli import main
from kinema.config import DataConfig
from kinema.eval.i3d import InceptionI3d
from kinema.evaluate import reference_clips, score
from kinema.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    train(micro("train.steps=2"), path, progress=False)
    return path


@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in InceptionI3d().state_dict().items()}, str(path))
    return path


def test_eval_writes_json_and_html(run):
    result = CliRunner().invoke(main, ["eval", str(run), "--num", "4", "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "identity_consistency" in result.output and "FVD not computed" in result.output
    out = run / "eval" / "step_000002"
    data = json.loads((out / "eval.json").read_text())
    assert data["num"] == 4 and data["step"] == 2 and data["sampling"]["steps"] == 2
    assert data["reference"]["split"] == "test" and data["reference"]["num"] == 4
    oracle = data["metrics"]["oracle"]
    assert set(oracle["samples"]) == set(oracle["real"]) >= {"recognisability", "identity_consistency",
                                                             "count_consistency", "motion_plausibility"}
    assert oracle["real"]["identity_consistency"] == 1.0 and oracle["fd"] >= 0 and oracle["fd_real_vs_real"] >= 0
    faults = oracle["motion_faults"]  # why motion fails, adding up to what motion plausibility misses
    assert sum(faults["samples"].values()) == pytest.approx(1 - oracle["samples"]["motion_plausibility"])
    assert sum(faults["real"].values()) == pytest.approx(1 - oracle["real"]["motion_plausibility"])
    assert data["metrics"]["fvd"]["value"] is None and "--fvd-weights" in data["metrics"]["fvd"]["note"]
    page = (out / "eval.html").read_text()
    assert "motion plausibility" in page and "implausible motion: jump" in page and "samples_strip.png" in page
    for name in ("samples_strip.png", "real_strip.png", "samples.gif", "real.gif"):
        assert (out / name).is_file()


def test_eval_scores_saved_samples_with_fvd(run, i3d_weights, tmp_path):
    samples = tmp_path / "s.npz"
    result = CliRunner().invoke(main, ["sample", str(run), "--num", "2", "--steps", "2", "--out", str(samples)])
    assert result.exit_code == 0
    result = CliRunner().invoke(main, ["eval", str(run), "--samples", str(samples), "--num", "2", "--quiet",
                                       "--fvd-weights", str(i3d_weights), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    fvd = data["metrics"]["fvd"]
    assert fvd["name"] == "FVD4" and fvd["frames"] == 4 and np.isfinite(fvd["value"]) and fvd["value"] > 0
    assert data["sampling"] == {"samples_file": str(samples)}
    assert "FVD4 =" in result.output


def test_scoring_real_clips_against_themselves():
    data = DataConfig(frames=4, height=16, width=16, digit_size=8)
    real = reference_clips(data, "test", 6)
    metrics = score(real, real, data, real_baseline=reference_clips(data, "test", 6, offset=6))
    oracle = metrics["oracle"]
    assert oracle["samples"] == oracle["real"] and oracle["real"]["identity_consistency"] == 1.0
    assert oracle["fd"] == pytest.approx(0, abs=1e-5)  # rank-5 covariances: the square root of rounding errors
    assert oracle["fd_real_vs_real"] > 0.01
    assert metrics["fvd"]["value"] is None


def test_eval_errors_are_one_clear_line(run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--fvd-weights", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1 and "no such I3D weights file" in result.output
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--steps", "1", "--quiet", "--fvd-weights", str(bad),
                                  "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "missing keys" in result.output and "unexpected keys 1: fc.weight" in result.output
    result = runner.invoke(main, ["eval", str(tmp_path / "absent"), "--num", "2"])
    assert result.exit_code == 1 and "no such run or checkpoint" in result.output
    np.savez(tmp_path / "wrong.npz", other=np.zeros(3))
    result = runner.invoke(main, ["eval", str(run), "--samples", str(tmp_path / "wrong.npz"), "--num", "2"])
    assert result.exit_code == 1 and "'videos'" in result.output


def test_eval_label_chooses_the_class_and_is_checked(run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--steps", "1", "--label", "3", "--quiet"])
    assert result.exit_code == 1 and "label" in result.output  # an unconditional model takes no labels
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--label", "3", "--samples", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "does not apply to --samples" in result.output
    cond = tmp_path / "cond"
    train(micro("train.steps=2", "train.class_conditional=true"), cond, progress=False)
    for label in (3, 10):  # 10 = the null class: unconditional samples of a class-conditional model
        out = tmp_path / f"e{label}"
        result = runner.invoke(main, ["eval", str(cond), "--num", "2", "--steps", "1", "--label", str(label),
                                      "--quiet", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "eval.json").read_text())["sampling"]["labels"] == label


def test_gamma_overrides_the_ancestral_noise_and_is_recorded(run, tmp_path):
    runner = CliRunner()

    def sample(*args):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        result = runner.invoke(main, ["sample", str(run), "--num", "2", "--steps", "3", "--seed", "1", "--out", str(out),
                                      *args])
        assert result.exit_code == 0, result.output
        return np.load(out)["videos"]

    default = sample("--sampler", "ancestral")
    assert np.array_equal(sample("--sampler", "ancestral", "--gamma", "0.1"), default)  # the run's sample.gamma
    assert not np.array_equal(sample("--sampler", "ancestral", "--gamma", "1"), default)
    result = runner.invoke(main, ["sample", str(run), "--num", "1", "--sampler", "ddim", "--gamma", "0.5"])
    assert result.exit_code == 1 and "does not apply to the ddim sampler" in result.output
    result = runner.invoke(main, ["sample", str(run), "--num", "1", "--gamma", "2"])
    assert result.exit_code == 2 and "--gamma" in result.output
    out = tmp_path / "ev"
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--steps", "2", "--sampler", "ancestral",
                                  "--gamma", "0.3", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sampling = json.loads((out / "eval.json").read_text())["sampling"]
    assert sampling["sampler"] == "ancestral" and sampling["gamma"] == 0.3 and "eta" not in sampling


def test_langevin_corrector_is_a_sample_setting_an_option_and_recorded(run, tmp_path):
    from kinema.config import ConfigError, apply_overrides, load_config
    from kinema.pipeline import run_sampler

    cfg = load_config(run / "config.toml")
    with pytest.raises(ConfigError, match="sample.langevin_steps"):
        apply_overrides(cfg, ["sample.langevin_steps=-1"])
    with pytest.raises(ConfigError, match="sample.langevin_delta"):
        apply_overrides(cfg, ["sample.langevin_delta=0"])
    calls = []

    def den(z, t):
        calls.append(t[0].item())
        return 0.5 * z

    noise = torch.randn(1, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for setting, override, expected in ((2, None, 4 + 3 * 2), (2, 0, 4), (0, 1, 4 + 3)):  # no corrector after t = 0
        calls.clear()
        pc = apply_overrides(cfg, ["sample.sampler=ancestral", "sample.steps=4", f"sample.langevin_steps={setting}"])
        run_sampler(den, noise, pc, langevin_steps=override, generator=torch.Generator().manual_seed(1))
        assert len(calls) == expected, (setting, override)

    runner = CliRunner()

    def sample(*args):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
        result = runner.invoke(main, ["sample", str(run), "--num", "2", "--steps", "3", "--seed", "1",
                                      "--out", str(out), "--sampler", "ancestral", *args])
        assert result.exit_code == 0, result.output
        return np.load(out)["videos"]

    default = sample()
    assert np.array_equal(sample("--langevin", "0"), default)  # the run's sample.langevin_steps
    assert not np.array_equal(sample("--langevin", "1"), default)
    result = runner.invoke(main, ["sample", str(run), "--num", "1", "--langevin", "-1"])
    assert result.exit_code == 2 and "--langevin" in result.output
    result = runner.invoke(main, ["eval", str(run), "--num", "2", "--langevin", "1",
                                  "--samples", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "--langevin" in result.output and "does not apply to --samples" in result.output
    out = tmp_path / "ev"
    corrected = {"langevin_steps": 1, "langevin_delta": 0.1}
    for args, recorded in (((), {"langevin_steps": 0}), (("--langevin", "1"), corrected)):
        result = runner.invoke(main, ["eval", str(run), "--num", "2", "--steps", "2", "--quiet", "--out", str(out),
                                      *args])
        assert result.exit_code == 0, result.output
        sampling = json.loads((out / "eval.json").read_text())["sampling"]
        assert {k: v for k, v in sampling.items() if k.startswith("langevin")} == recorded
