"""`attention` takes the explicit product on short sequences and the fused kernel on long ones: both must be
the same function, values and gradients, with float (additive) and boolean masks."""

import pytest
import torch

from kinema.models import attention as attention_module
from kinema.models.attention import attention


def reference(q, k, v, mask=None):
    """softmax(q kᵀ/√d + mask) v in float64, written out independently."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("...id,...jd->...ij", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return torch.einsum("...ij,...jd->...id", scores.softmax(-1), v)


def inputs(tokens, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, tokens, 8, generator=g, requires_grad=True) for _ in range(3))
    if mask_kind == "float":
        mask = torch.randn(3, tokens, tokens, generator=g)
    elif mask_kind == "bool":
        mask = torch.rand(2, 1, tokens, tokens, generator=g) < 0.6
        mask |= torch.eye(tokens, dtype=torch.bool)  # every query may attend to itself
    else:
        mask = None
    return q, k, v, mask


@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
@pytest.mark.parametrize("tokens", [8, 300])  # below and above every explicit threshold
@pytest.mark.parametrize("grad", [True, False])
def test_attention_matches_reference(tokens, mask_kind, grad):
    q, k, v, mask = inputs(tokens, mask_kind)
    with torch.set_grad_enabled(grad):
        out = attention(q, k, v, mask)
    expected = reference(q, k, v, mask)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    if grad:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        ref_grads = torch.autograd.grad((expected * torch.linspace(-1, 1, out.numel()).view_as(out).double()).sum(),
                                        (q, k, v))
        for got, want in zip((q.grad, k.grad, v.grad), ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
def test_explicit_and_fused_paths_agree(monkeypatch, mask_kind):
    """The same inputs through each path (thresholds moved so that 8 tokens go either way)."""
    q, k, v, mask = inputs(8, mask_kind, seed=1)
    explicit = attention(q, k, v, mask)
    for limit in ("EXPLICIT_MAX_TOKENS_TRAIN_16BIT", "EXPLICIT_MAX_TOKENS_TRAIN_FP32", "EXPLICIT_MAX_TOKENS_INFERENCE"):
        monkeypatch.setattr(attention_module, limit, 0)
    fused = attention(q, k, v, mask)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-6)


def test_bf16_training_path_matches_reference():
    """64 tokens with gradients in bf16 take the explicit product (the path tiny16 trains on)."""
    q, k, v, mask = inputs(64, "float", seed=2)
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    assert attention_module._explicit(q16, training=True)
    out = attention(q16, k16, v16, mask.bfloat16())
    torch.testing.assert_close(out.double(), reference(q, k, v, mask), rtol=0.05, atol=0.02)
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q16, k16, v16))
