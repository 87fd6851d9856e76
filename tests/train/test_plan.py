"""`kinema plan` and the trainer's MFU: counted FLOPs against a hand count, the memory estimate against a measured
peak, the verdict on a config that cannot fit, and the log's MFU against its own definition."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from helpers import MICRO, micro
from kinema.cli import main
from kinema.train import cost, train
from kinema.train.cost import memory_estimate, peak_flops, step_cost, trace_step
from kinema.train.plan import TrainerStep, plan

CPU = torch.device("cpu")


class OneConv(nn.Module):
    """A 3×3 convolution of every frame: the network contract (z, noise_level) -> shaped like z."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, z, noise_level):
        b, c, f, h, w = z.shape
        frames = z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return self.conv(frames).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def test_flops_of_one_conv_equal_a_hand_count():
    b, c, f, h, w = 2, 4, 3, 8, 8
    flops, saved, _ = trace_step(lambda: OneConv(c), lambda: (torch.randn(b, c, f, h, w), torch.rand(b), {}), CPU,
                                 "fp32")
    forward = 2 * (b * f * h * w) * c * (c * 3 * 3)  # 2 FLOPs per multiply-add, one per output element and tap
    # backward: the weight gradient costs a forward again; z needs no gradient, so no input gradient is computed
    assert flops == 2 * forward
    assert saved >= b * c * f * h * w * 4  # the conv's input is kept for the weight gradient


def test_cost_scales_with_the_batch():
    small, large = (step_cost(micro(f"train.batch_size={n}"), CPU, "fp32") for n in (4, 8))
    assert small.parameters == large.parameters
    assert large.flops == pytest.approx(2 * small.flops, rel=0.01)
    assert large.saved_bytes == pytest.approx(2 * small.saved_bytes, rel=0.05)
    assert step_cost(micro("train.batch_size=8", "train.grad_accum=2"), CPU, "fp32").flops == pytest.approx(
        large.flops, rel=0.01)  # two micro-batches of 4 do the work of one of 8


def test_bf16_halves_what_autocast_saves():
    fp32, bf16 = (step_cost(micro("train.batch_size=4"), CPU, p) for p in ("fp32", "bf16"))
    # (FLOPs may differ: attention takes a per-precision path, models/attention.py, and the count follows it)
    assert bf16.saved_bytes < 0.8 * fp32.saved_bytes  # the casts kept for matmuls and convs are 2-byte


def _peak_bytes(step: TrainerStep) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(2):
            step()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    return max(itertools.accumulate(m for _, m in events)) + step.weight_bytes()


def test_memory_estimate_is_within_a_quarter_of_the_measured_peak():
    cfg = micro("train.batch_size=8", "model.base_channels=16")
    estimate = memory_estimate(step_cost(cfg, CPU, "fp32")).total
    assert 0.75 < estimate / _peak_bytes(TrainerStep(cfg, CPU)) < 1.25


def test_plan_times_real_steps_and_the_wall_clock_follows():
    result = plan(micro("train.steps=1000", "train.time_limit_minutes=10"), CPU, warmup=1, timed=2)
    assert result.fits and result.step_s > 0
    text = "\n".join(result.lines())
    assert "step time" in text and "1,000 steps" in text
    assert f"10 min ≈ {int(600 / result.step_s):,} steps" in text


def test_a_config_that_cannot_fit_says_so_untimed():
    huge = micro("train.batch_size=2048", "data.frames=16", "data.height=128", "data.width=128",
                 "data.digit_size=28", "model.base_channels=64")
    result = plan(huge, CPU)  # timing it would need more memory than any host has, so plan must not try
    assert result.memory.total > 2**40 and not result.fits and result.step_s is None
    assert any("DOES NOT FIT" in line for line in result.lines())


def test_kinema_plan_command():
    out = CliRunner().invoke(main, ["plan", "--preset", "tiny16", "--timed", "0", *MICRO])
    assert out.exit_code == 0, out.output
    assert "FLOPs/step" in out.output and "memory" in out.output
    bad = CliRunner().invoke(main, ["plan", "--preset", "nope"])
    assert bad.exit_code != 0 and "unknown preset" in bad.output


def test_peak_table_and_override(monkeypatch):
    gpu = torch.device("cuda")
    for name, expected in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                           ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla T4", None)]:
        monkeypatch.setattr(cost, "_device_name", lambda device, name=name: name)
        assert peak_flops(gpu, "bf16") == expected
    monkeypatch.setattr(cost, "_device_name", lambda device: "Some CPU/64/AVX512")
    assert peak_flops(CPU, "fp32") is None  # an unknown CPU: no MFU rather than a guess
    monkeypatch.setattr(cost, "_device_name", lambda device: "AMD EPYC/2/AVX512")
    assert peak_flops(CPU, "fp32") == 210e9 and peak_flops(CPU, "bf16") == 920e9  # the reference machine
    monkeypatch.setattr(cost, "_device_name", lambda device: "AMD EPYC/2/AVX2")
    assert peak_flops(CPU, "fp32") is None  # the same name on cores without AVX-512 is another machine
    monkeypatch.setenv(cost.PEAK_FLOPS_ENV, "2.5e11")
    assert peak_flops(CPU, "fp32") == 2.5e11
    monkeypatch.setenv(cost.PEAK_FLOPS_ENV, "fast")
    with pytest.raises(ValueError, match=cost.PEAK_FLOPS_ENV):
        peak_flops(CPU, "fp32")


def test_log_reports_mfu_as_counted_flops_times_rate_over_peak(tmp_path, monkeypatch):
    monkeypatch.setenv(cost.PEAK_FLOPS_ENV, "1e11")
    cfg = micro("train.steps=2")
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    flops = step_cost(cfg, CPU, "fp32").flops
    for record in records:
        assert record["mfu"] == pytest.approx(flops * record["steps_per_s"] / 1e11)


def test_log_leaves_mfu_out_on_an_unknown_device(tmp_path, monkeypatch):
    monkeypatch.delenv(cost.PEAK_FLOPS_ENV, raising=False)
    monkeypatch.setattr(cost, "_device_name", lambda device: "Some CPU/64/AVX2")
    train(micro("train.steps=1"), tmp_path / "run", progress=False)
    assert "mfu" not in json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])


def test_gpu_benchmark_runs_its_cpu_smoke_mode(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script), "--smoke", "--models", "small", "dit-s-2", "--batch", "2", "2",
                          "--warmup", "0", "--timed", "1", "--out", str(tmp_path / "rows.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["model"] for r in rows] == ["small", "dit-s-2"] and all(r["step_s"] > 0 for r in rows)
    assert "| `small` |" in out.stdout
