"""Which float format `auto` means on a device, and the autocast context for a resolved format."""

import pytest
import torch

from kinema import precision
from kinema.precision import autocast, resolve_precision


@pytest.mark.parametrize("capability, expected", [("AVX512", "bf16"), ("avx512_bf16", "bf16"), ("AVX2", "fp32"),
                                                  ("DEFAULT", "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_avx512(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch):
    for supported, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_precision("auto", torch.device("cuda")) == expected


def test_an_explicit_precision_is_kept_and_an_unknown_one_is_an_error():
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, torch.device("cpu")) == name
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16; got 'half'"):
        resolve_precision("half", torch.device("cpu"))
    assert precision.PRECISIONS == ("auto", "fp32", "bf16", "fp16")


def test_autocast_runs_matrix_products_in_the_resolved_format_and_fp32_untouched():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    cpu = torch.device("cpu")
    with autocast("bf16", cpu):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", cpu):
        assert (a @ b).dtype == torch.float32
