"""The oracle's digit classifier: a small CNN on normalised digit crops, shipped with kinema.

A digit is cut out of a frame by its ink mask, its bounding box is squared around its centre, and the masked
pixels are resized to 16×16 and scaled to a maximum of 1 (`digit_crops`). The same function prepares the
training images and every frame the oracle reads, so the classifier sees one kind of input.

Training set: the *train* split of scikit-learn's bundled digits (the images Moving Digits draws from), upscaled
to every size from 8 to 32 pixels, with random affine jitter, brightness, blur and pixel noise. The held-out
*test* split is only scored, never used for any choice. The weights ship as `digit_classifier.safetensors`
(≈130 kB) next to this file; this command rebuilds them, bit for bit with one thread as they were made (about a
minute on one core):

    OMP_NUM_THREADS=1 python -m kinema.eval.digit_classifier [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitNet", "digit_crops", "square_patch", "resize_patches", "load_digit_classifier",
           "train_digit_classifier", "held_out_accuracy", "WEIGHTS_PATH", "CROP_SIZE", "TEST_SIZES"]

CROP_SIZE = 16
EMBED_DIM = 32
WEIGHTS_PATH = Path(__file__).with_name("digit_classifier.safetensors")
RECIPE = "kinema digit classifier v1"
TRAIN_SIZES = tuple(range(8, 33))
TEST_SIZES = (10, 14, 20, 28)
INK_THRESHOLD = 0.25  # in [0, 1] intensity; the oracle's default threshold


class DigitNet(nn.Module):
    """Crops (N, 1, 16, 16) → logits (N, 10); `embed` gives the (N, 32) penultimate features."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.embedding = nn.Linear(32 * 4 * 4, embed_dim)
        self.head = nn.Linear(embed_dim, 10)

    def embed(self, x: Tensor) -> Tensor:
        return F.relu(self.embedding(self.convs(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def square_patch(image: np.ndarray, box) -> np.ndarray:
    """The square of `image` (H, W) around box (y0, y1, x0, x1) (end exclusive), side = the box's longer side,
    centred on the box; zeros where it leaves the image."""
    y0, y1, x0, x1 = (int(v) for v in box)
    side = max(y1 - y0, x1 - x0)
    top, left = y0 - (side - (y1 - y0)) // 2, x0 - (side - (x1 - x0)) // 2
    out = np.zeros((side, side), dtype=image.dtype)
    h, w = image.shape
    sy0, sy1, sx0, sx1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return out


def resize_patches(patches: list[np.ndarray]) -> Tensor:
    """Square digit patches (zero off the digit) → crops (M, 1, 16, 16): resized (bilinear, antialiased) and
    divided by their maximum, so the classifier sees neither the digit's position, nor its size, nor its
    brightness."""
    out = torch.zeros(len(patches), 1, CROP_SIZE, CROP_SIZE)
    by_side: dict[int, list[int]] = {}
    for i, p in enumerate(patches):
        by_side.setdefault(p.shape[0], []).append(i)
    for _side, idx in by_side.items():  # one resize call per patch size
        batch = torch.from_numpy(np.stack([patches[i] for i in idx]).astype(np.float32))[:, None]
        out[idx] = F.interpolate(batch, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False,
                                 antialias=True)
    peak = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out / peak.clamp_min(1e-6)).clamp(0, 1)


def digit_crops(images, boxes: np.ndarray) -> Tensor:
    """Masked digit images (each (H, W), zero off the digit) and their ink boxes (M, 4) → crops (M, 1, 16, 16)."""
    return resize_patches([square_patch(np.asarray(img, dtype=np.float32), box) for img, box in zip(images, boxes)])


def _crops_of_whole_images(images: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[Tensor, np.ndarray]:
    """Single-digit images (N, h, w) → crops of all their ink, and a mask of images that had any ink."""
    masks = images > threshold
    keep = masks.reshape(len(images), -1).any(1)
    boxes = []
    for m in masks[keep]:
        ys, xs = np.nonzero(m)
        boxes.append((ys.min(), ys.max() + 1, xs.min(), xs.max() + 1))
    masked = np.where(masks, images, 0)[keep]
    return digit_crops(masked, np.array(boxes).reshape(-1, 4)), keep


def _augment(images: Tensor, g: torch.Generator) -> Tensor:
    """Random affine jitter, blur, brightness and pixel noise on digit images (N, s, s) in [0, 1]."""
    n, s, _ = images.shape
    pad = s // 4
    x = F.pad(images[:, None], (pad, pad, pad, pad))
    angle = (torch.rand(n, generator=g) - 0.5) * 2 * np.deg2rad(12)
    scale = 1 + (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    shear = (torch.rand(n, generator=g) - 0.5) * 0.3
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / scale[:, 0], (-sin + shear) / scale[:, 0]
    theta[:, 1, 0], theta[:, 1, 1] = sin / scale[:, 1], cos / scale[:, 1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    blur = torch.rand(n, generator=g) < 0.3
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
        x[blur] = F.conv2d(x[blur], kernel, padding=1)
    gain = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    x = x * gain / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return x[:, 0]


def _noisy(crops: Tensor, g: torch.Generator) -> Tensor:
    sigma = 0.1 * torch.rand(len(crops), 1, 1, 1, generator=g)
    on_digit = crops > 0
    return (crops + sigma * torch.randn(crops.shape, generator=g) * on_digit).clamp(0, 1)


def _training_set(copies: int, seed: int, sizes=TRAIN_SIZES) -> tuple[Tensor, Tensor]:
    from ..data.moving_digits import digit_images

    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for size in sizes:
        images, labels = digit_images("train", size)
        images = torch.from_numpy(images)
        for _ in range(copies):
            aug = _augment(images, g).numpy()
            crops, keep = _crops_of_whole_images(aug)
            xs.append(_noisy(crops, g))
            ys.append(torch.from_numpy(labels[keep]))
    return torch.cat(xs), torch.cat(ys)


def train_digit_classifier(copies: int = 2, epochs: int = 6, batch_size: int = 256, lr: float = 3e-3,
                           seed: int = 0, sizes=TRAIN_SIZES, progress: bool = True) -> DigitNet:
    """Train DigitNet on augmented crops of the train split (`copies` augmentations per image and digit size)."""
    from tqdm.auto import tqdm

    x, y = _training_set(copies, seed, sizes)
    torch.manual_seed(seed)
    model = DigitNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed + 1)
    bar = tqdm(total=steps, desc=f"digit classifier ({len(x)} crops)", disable=not progress)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def held_out_accuracy(model: DigitNet, sizes=TEST_SIZES) -> dict[str, float]:
    """Accuracy on the held-out test split of the bundled digits, rendered at each digit size, no augmentation."""
    from ..data.moving_digits import digit_images

    out = {}
    for size in sizes:
        images, labels = digit_images("test", size)
        crops, keep = _crops_of_whole_images(images)
        pred = model(crops).argmax(1).numpy()
        correct = np.zeros(len(images), dtype=bool)
        correct[keep] = pred == labels[keep]  # an image with no ink counts as an error
        out[str(size)] = float(correct.mean())
    return out


@lru_cache(maxsize=1)
def load_digit_classifier(path: str | None = None) -> DigitNet:
    """The shipped classifier (or one at `path`), in evaluation mode, on the CPU."""
    from safetensors.torch import load_file

    path = Path(path) if path else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{path}: digit classifier weights are missing; rebuild them with "
                                "`python -m kinema.eval.digit_classifier`")
    model = DigitNet()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def main() -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()
    start = time.time()
    model = train_digit_classifier()
    accuracy = held_out_accuracy(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"recipe": RECIPE, "test_accuracy": json.dumps(accuracy), "torch": torch.__version__,
            "command": "python -m kinema.eval.digit_classifier"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata=meta)
    print(f"held-out accuracy by digit size: {accuracy}")
    print(f"wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
