"""Fused `F.scaled_dot_product_attention` against the explicit softmax(q kᵀ/√d) v, by sequence length.

    python benchmarks/attention.py [--repeats 10]

The shapes are the U-Net's attention layers on a batch of 16 clips of 8 frames (heads of 32 features):
spatial attention over H·W tokens with frames in the batch, temporal attention over 8 frames with positions in
the batch. Each is timed forward only (sampling) and forward + backward (training), in bf16 and fp32, by both
kernels; the ratio is fused time / explicit time (> 1: the explicit product is faster). The last column is
the path `kinema.models.attention.attention` takes (its EXPLICIT_MAX_TOKENS_* thresholds).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from kinema.models import attention as kinema_attention

SHAPES = {  # name: (q shape, additive mask shape or None)
    "spatial 4x4 (128 ch)": ((128, 4, 16, 32), None),
    "spatial 8x8": ((128, 2, 64, 32), None),
    "spatial 16x16": ((128, 2, 256, 32), None),
    "temporal 8 frames @ 8x8": ((16, 64, 2, 8, 32), (2, 8, 8)),
    "temporal 8 frames @ 16x16": ((16, 256, 2, 8, 32), (2, 8, 8)),
}


def fused(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def time_ms(fn, q, k, v, mask, backward: bool, repeats: int) -> float:
    def once():
        if backward:
            fn(q, k, v, mask).sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v, mask)
    for _ in range(2):
        once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| layer | tokens | dtype | pass | fused ms | explicit ms | fused / explicit | kinema takes |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (shape, mask_shape) in SHAPES.items():
        tokens = shape[-2]
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
            mask = torch.randn(*mask_shape, dtype=dtype) if mask_shape else None
            for backward in (False, True):
                a = time_ms(fused, q, k, v, mask, backward, args.repeats)
                b = time_ms(kinema_attention.explicit_attention, q, k, v, mask, backward, args.repeats)
                takes = "explicit" if kinema_attention._explicit(q, training=backward) else "fused"
                print(f"| {name} | {tokens} | {str(dtype).removeprefix('torch.')} | "
                      f"{'fwd+bwd' if backward else 'fwd'} | {a:.2f} | {b:.2f} | {a / b:.2f} | {takes} |")


if __name__ == "__main__":
    main()
