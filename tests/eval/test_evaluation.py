"""`kinema eval`: sampling a checkpoint, scoring against held-out clips, eval.json + eval.html, clear errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from helpers import micro
from kinema.cli import main
from kinema.config import DataConfig
from kinema.eval.evaluation import reference_clips, score
from kinema.eval.i3d import InceptionI3d
from kinema.eval.rows import find_row
from kinema.train import train


@pytest.fixture
def run(micro_run):
    return micro_run


@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in InceptionI3d().state_dict().items()}, str(path))
    return path


def test_eval_writes_json_and_html(run):
    result = CliRunner().invoke(main, ["eval", str(run), "--num", "4", "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "identity consistency" in result.output and "FVD: not computed" in result.output
    out = run / "eval" / "step_000003"
    data = json.loads((out / "eval.json").read_text())
    assert data["num"] == 4 and data["step"] == 3 and data["sampling"]["steps"] == 2
    assert data["reference"]["split"] == "test" and data["reference"]["num"] == 4
    rows = data["metrics"]
    assert {"recognisability", "identity_consistency", "count_consistency", "motion_plausibility"} <= {
        row["key"] for row in rows}
    assert all(set(row) == {"key", "name", "samples", "real", "format", "meaning"} for row in rows)
    fd = find_row(rows, "oracle_fd")
    assert find_row(rows, "identity_consistency")["real"] == 1.0 and fd["samples"] >= 0 and fd["real"] >= 0
    faults = [row for row in rows if row["key"].startswith("motion_fault/")]  # adding up to what motion misses
    motion = find_row(rows, "motion_plausibility")
    assert sum(row["samples"] for row in faults) == pytest.approx(1 - motion["samples"])
    assert sum(row["real"] for row in faults) == pytest.approx(1 - motion["real"])
    assert not any(row["key"] == "fvd" for row in rows) and any("--fvd-weights" in note for note in data["notes"])
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
    fvd = find_row(data["metrics"], "fvd")
    assert fvd["name"] == "FVD4" and data["details"]["fvd"]["frames"] == 4
    assert np.isfinite(fvd["samples"]) and fvd["samples"] > 0
    assert data["sampling"] == {"samples_file": str(samples)}
    assert "FVD4" in result.output


def test_scoring_real_clips_against_themselves():
    data = DataConfig(frames=4, height=16, width=16, digit_size=8)
    real = reference_clips(data, "test", 6)
    rows, notes, _ = score(real, real, data, real_baseline=reference_clips(data, "test", 6, offset=6))
    fd = find_row(rows, "oracle_fd")
    assert all(row.samples == row.real for row in rows if row.key != "oracle_fd")
    assert find_row(rows, "identity_consistency")["real"] == 1.0
    assert fd["samples"] == pytest.approx(0, abs=1e-5)  # rank-5 covariances: the square root of rounding errors
    assert fd["real"] > 0.01
    assert any(note.startswith("FVD") for note in notes)


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
    assert result.exit_code == 1 and "do not apply to --samples" in result.output
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
        result = runner.invoke(main, ["sample", str(run), "--num", "2", "--steps", "3", "--seed", "1",
                                      "--out", str(out),
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
    result = runner.invoke(main, ["sample", str(run), "--num", "1", "--sampler", "ancestral", "--eta", "0.5"])
    assert result.exit_code == 1 and "does not apply to the ancestral sampler" in result.output


def test_langevin_corrector_is_a_sample_setting_an_option_and_recorded(run, tmp_path):
    from kinema.config import ConfigError, apply_overrides, load_config, with_sample
    from kinema.sample import run_sampler

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
        run_sampler(den, noise, with_sample(pc, langevin_steps=override), generator=torch.Generator().manual_seed(1))
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
    assert result.exit_code == 1 and "langevin" in result.output and "do not apply to --samples" in result.output
    out = tmp_path / "ev"
    corrected = {"langevin_steps": 1, "langevin_delta": 0.1}
    for args, recorded in (((), {"langevin_steps": 0}), (("--langevin", "1"), corrected)):
        result = runner.invoke(main, ["eval", str(run), "--num", "2", "--steps", "2", "--quiet", "--out", str(out),
                                      *args])
        assert result.exit_code == 0, result.output
        sampling = json.loads((out / "eval.json").read_text())["sampling"]
        assert {k: v for k, v in sampling.items() if k.startswith("langevin")} == recorded


def test_eval_json_records_the_settings_the_sampler_received(run, tmp_path, monkeypatch):
    """The sampling record is what reached the solver, for the run's settings and for overrides, sample and eval."""
    from kinema.diffusion import samplers

    received = []
    for name, row in list(samplers.SAMPLERS.items()):
        def spy(*args, _solve=row.solve, **kwargs):
            received.append({k: v for k, v in kwargs.items() if k not in ("generator", "progress", "noise_sampler")})
            return _solve(*args, **kwargs)
        monkeypatch.setitem(samplers.SAMPLERS, name, row._replace(solve=spy))
    runner = CliRunner()
    cases = [[], ["--sampler", "ancestral", "--gamma", "0.4", "--langevin", "1"], ["--eta", "0.5", "--steps", "2"]]
    for i, args in enumerate(cases):
        received.clear()
        out = tmp_path / f"e{i}"
        result = runner.invoke(main, ["eval", str(run), "--num", "2", "--quiet", "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        sampling = json.loads((out / "eval.json").read_text())["sampling"]
        assert len(received) == 1 and received[0] == {k: sampling[k] for k in received[0]}
        assert set(received[0]) == set(sampling) - {"sampler", "guidance", "seed", "precision", "labels", "device",
                                                    "seconds", "seconds_per_video", "weights"}
    assert received[0] == {"steps": 2, "eta": 0.5, "langevin_steps": 0}
    received.clear()
    result = runner.invoke(main, ["sample", str(run), "--num", "1", "--steps", "2", "--sampler", "ancestral",
                                  "--gamma", "0.2", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    assert received == [{"steps": 2, "gamma": 0.2, "langevin_steps": 0}]
