"""Progressive distillation as training (kinema.train.distill, `kinema distill`): the rounds, the folders they leave,
sampling the student at its step count, exact resume after an interruption, and one-line errors."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import kinema.train.trainer as trainer
from helpers import micro
from kinema.build import build_schedule, load_model
from kinema.checkpoint import list_checkpoints
from kinema.cli import main
from kinema.config import ConfigError, load_config
from kinema.diffusion import noise_level
from kinema.sample import generate
from kinema.train import EXIT_RESUMABLE, distill, distill_config, train


def _weights(folder: Path, kind: str = "ema") -> dict:
    return load_file(str(folder / f"{kind}.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _distil_cli(teacher: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["distill", str(teacher), "--name", "student", "--out-dir", str(out), "--quiet",
                                     *args])


def _levels_seen(model, cfg, num: int = 1) -> list[float]:
    """The noise levels the network is called with while `generate` samples one batch."""
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(float(args[1][0])))
    generate(model, cfg, num)
    hook.remove()
    return seen


def test_kinema_distill_halves_the_steps_and_kinema_sample_uses_the_students_count(micro_run, tmp_path):
    result = _distil_cli(micro_run, tmp_path, "--start-steps", "4", "--end-steps", "1", "--steps-per-round", "2",
                         "train.checkpoint_every=1")
    assert result.exit_code == 0, result.output
    assert "distilled 4 of 4 steps (steps); the student samples in 1 step" in result.output
    run = tmp_path / "student"
    assert sorted(p.name for p in (run / "rounds").iterdir()) == ["n0001", "n0002", "n0004"]
    for checkpoint, steps, round_ in (("step_000002", 2, 1), ("step_000003", 1, 2), ("step_000004", 1, 2)):
        folder = run / "checkpoints" / checkpoint
        s = load_config(folder / "config.toml").sample
        assert (s.sampler, s.steps, s.eta, s.langevin_steps, s.guidance) == ("ddim", steps, 0.0, 0, 0.0)
        state = json.loads((folder / "state.json").read_text())
        assert (state["round"], state["student_steps"]) == (round_, steps)
    assert [json.loads(line)["student_steps"] for line in (run / "metrics.jsonl").read_text().splitlines()] == \
        [2, 2, 1, 1]
    # the run folder alone samples the finished student in one network call; round 1's student in two, on t = i/2
    schedule = build_schedule(load_config(run / "config.toml").diffusion)
    for folder, times in ((run, [1.0]), (run / "rounds" / "n0002", [1.0, 0.5])):
        cfg, model = load_model(folder)
        expected = noise_level(schedule.logsnr(torch.tensor(times, dtype=torch.float64))).float().tolist()
        assert _levels_seen(model, cfg) == pytest.approx(expected, abs=1e-7)
    assert _same(_weights(run / "rounds" / "n0001"), _weights(run / "checkpoints" / "step_000004"))
    sampled = CliRunner().invoke(main, ["sample", str(run), "--num", "2", "--out", str(tmp_path / "s.npz")])
    assert sampled.exit_code == 0, sampled.output
    assert np.load(tmp_path / "s.npz")["videos"].shape == (2, 4, 16, 16, 3)


def test_the_student_starts_as_a_copy_of_its_teacher(micro_run, tmp_path):
    """With a learning rate of almost nothing, every round's student stays its teacher (θ ← η), not a fresh network."""
    cfg = distill_config(micro_run, name="s", start_steps=4, end_steps=1, steps_per_round=1,
                         overrides=["train.lr=1e-20", "train.warmup_steps=0"])
    distill(cfg, tmp_path / "s", progress=False)
    teacher = _weights(list_checkpoints(micro_run / "checkpoints")[-1])
    assert _same(_weights(tmp_path / "s" / "rounds" / "n0004"), teacher)  # the teacher's copy, in fp32 already
    for folder in ("n0002", "n0001"):
        student = _weights(tmp_path / "s" / "rounds" / folder)
        assert all(torch.allclose(student[k], teacher[k], atol=1e-12) for k in teacher)


def _sigterm_at(monkeypatch, step: int) -> None:
    real = trainer._optimizer_step

    def stepping(cfg, state, *args, **kwargs):
        out = real(cfg, state, *args, **kwargs)
        if state.step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(trainer, "_optimizer_step", stepping)


@pytest.fixture(scope="module")
def guided_teacher(tmp_path_factory):
    """A class-conditional micro run with dropout, sampled with classifier-free guidance w = 1."""
    path = tmp_path_factory.mktemp("guided") / "teacher"
    train(micro("train.steps=2", "train.class_conditional=true", "model.dropout=0.1", "sample.guidance=1.0"), path,
          progress=False)
    return path


def test_an_interrupted_distillation_resumes_bit_identically(guided_teacher, tmp_path, monkeypatch):
    """Stopped at a round's end (max_steps) and by SIGTERM within the next round (exit 75), then resumed: the same
    weights as an uninterrupted run. The guided teacher, dropout and label dropout make every draw count."""
    args = ["--start-steps", "4", "--end-steps", "1", "--steps-per-round", "2"]
    straight = _distil_cli(guided_teacher, tmp_path / "straight", *args)
    assert straight.exit_code == 0, straight.output
    cfg = distill_config(guided_teacher, name="student", start_steps=4, end_steps=1, steps_per_round=2)
    assert cfg.distill.guidance == 1.0 and cfg.sample.guidance == 0.0  # the teacher's w, baked into the student
    assert distill(cfg, tmp_path / "stopped" / "student", progress=False, max_steps=2).step == 2
    _sigterm_at(monkeypatch, 3)
    stopped = _distil_cli(guided_teacher, tmp_path / "stopped", "--resume")
    assert stopped.exit_code == EXIT_RESUMABLE, stopped.output
    assert "distilled 3 of 4 steps (signal SIGTERM)" in stopped.output and "--resume" in stopped.output
    monkeypatch.undo()
    resumed = _distil_cli(guided_teacher, tmp_path / "stopped", "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = (tmp_path / name / "student" for name in ("straight", "stopped"))
    for folder in ("checkpoints/step_000004", "rounds/n0002", "rounds/n0001"):
        assert _same(_weights(a / folder), _weights(b / folder)), folder
    assert _same(_weights(a / "checkpoints/step_000004", "model"), _weights(b / "checkpoints/step_000004", "model"))
    unguided = distill_config(guided_teacher, name="student", start_steps=4, end_steps=1, steps_per_round=2,
                              guidance=0.0)
    distill(unguided, tmp_path / "unguided", progress=False)  # the guidance weight changes what is learnt
    assert not _same(_weights(a / "rounds/n0001"), _weights(tmp_path / "unguided" / "rounds" / "n0001"))


def test_a_bad_teacher_or_setting_is_a_one_line_error_and_touches_nothing(micro_run, tmp_path):
    for args, message in (
        ([str(tmp_path / "nowhere")], "no such run or checkpoint folder"),
        ([str(micro_run), "--start-steps", "12", "--end-steps", "8"], "times a power of two"),
        ([str(micro_run), "train.steps=5"], "rounds are set by"),
        ([str(micro_run), "diffusion.weighting=min-snr"], "must be one of v-mse, snr-trunc"),
        ([str(micro_run), "--guidance", "1"], "this one is unconditional"),
    ):
        result = CliRunner().invoke(main, ["distill", *args, "--name", "s", "--out-dir", str(tmp_path / "runs")])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="is a distillation"):  # training it would silently drop the teacher
        train(distill_config(micro_run, name="s", start_steps=2, end_steps=1, steps_per_round=1), tmp_path / "s")
    eps = tmp_path / "eps"
    train(micro("train.steps=1", "diffusion.prediction=eps"), eps, progress=False)
    with pytest.raises(ConfigError, match="eps cannot be distilled"):
        distill_config(eps, name="s")
