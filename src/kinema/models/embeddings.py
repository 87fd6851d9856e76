"""Embeddings of the noise level and of conditioning (class labels, text)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "NoiseLevelEmbedding", "ClassEmbedding", "TextPooling", "conditioning_embedding"]


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sin/cos features of shape (B, dim) for values of shape (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class NoiseLevelEmbedding(nn.Module):
    """Noise level in [0, 1] -> sinusoidal features (scaled by 1000, as the PD reference code) -> MLP."""

    def __init__(self, feature_dim: int, emb_dim: int, mlp_layers: int = 2):
        super().__init__()
        if mlp_layers < 1:
            raise ValueError(f"emb_mlp_layers must be at least 1; got {mlp_layers}")
        layers: list[nn.Module] = [nn.Linear(feature_dim, emb_dim)]
        for _ in range(mlp_layers - 1):
            layers += [nn.SiLU(), nn.Linear(emb_dim, emb_dim)]
        self.feature_dim, self.mlp = feature_dim, nn.Sequential(*layers)

    def forward(self, noise_level: Tensor) -> Tensor:
        features = sinusoidal_embedding(1000.0 * noise_level, self.feature_dim)  # float32 for precision
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """Class labels with one extra learned "null" class (index `num_classes`) for classifier-free guidance."""

    def __init__(self, num_classes: int, emb_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, emb_dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, labels: Optional[Tensor], batch: int, device) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.null_class, device=device, dtype=torch.long)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},); got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}")
        if bool((labels < 0).any()) or bool((labels > self.null_class).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class)")
        return self.table(labels)


class TextPooling(nn.Module):
    """Attention pooling of a text embedding into one vector that is *added* to the noise embedding.

    We chose pooled addition over cross-attention: VDM conditions on BERT embeddings through
    attention pooling added into every residual block, and it costs nothing per pixel, which
    matters on a CPU. Input: a pooled embedding (B, D) or a sequence (B, L, D) with an optional
    padding mask (B, L) (True = real token). Examples with no real token (the classifier-free
    guidance "null" text) get a learned null vector.
    """

    def __init__(self, text_dim: int, emb_dim: int):
        super().__init__()
        self.text_dim = text_dim
        self.key = nn.Linear(text_dim, emb_dim)
        self.value = nn.Linear(text_dim, emb_dim)
        self.query = nn.Parameter(torch.randn(emb_dim) / math.sqrt(emb_dim))
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, text: Optional[Tensor], text_mask: Optional[Tensor], batch: int, device) -> Tensor:
        if text is None:
            return self.null.expand(batch, -1)
        if text.ndim == 2:
            text = text[:, None]
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.text_dim:
            raise ValueError(f"text must have shape ({batch}, {self.text_dim}) or ({batch}, L, {self.text_dim}); "
                             f"got {tuple(text.shape)}")
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must have shape {tuple(text.shape[:2])}; got {tuple(text_mask.shape)}")
        scores = self.key(text) @ self.query / math.sqrt(self.query.numel())  # (B, L)
        scores = scores.masked_fill(~text_mask, float("-inf"))
        has_text = text_mask.any(dim=1, keepdim=True)
        weights = torch.softmax(torch.where(has_text, scores, torch.zeros_like(scores)), dim=1)
        pooled = (weights[..., None] * self.value(text)).sum(1)
        return torch.where(has_text, pooled, self.null.expand(batch, -1))


def conditioning_embedding(noise_level: Tensor, batch: int, device, noise_embedding: NoiseLevelEmbedding,
                           class_embedding: Optional[ClassEmbedding], text_pooling: Optional[TextPooling],
                           labels: Optional[Tensor], text: Optional[Tensor], text_mask: Optional[Tensor]) -> Tensor:
    """The one conditioning vector (B, E) every backbone adds into its blocks: noise level + class + pooled text.

    Shared by the U-Net and the DiT so that both accept and reject conditioning identically;
    a model built without class (text) conditioning passes None for that module.
    """
    if noise_level.ndim == 0:
        noise_level = noise_level.expand(batch)
    if noise_level.shape != (batch,):
        raise ValueError(f"noise_level must have shape ({batch},); got {tuple(noise_level.shape)}")
    emb = noise_embedding(noise_level)
    if class_embedding is not None:
        emb = emb + class_embedding(labels, batch, device)
    elif labels is not None:
        raise ValueError("labels were given but the model has no class conditioning (num_classes = 0)")
    if text_pooling is not None:
        emb = emb + text_pooling(text, text_mask, batch, device)
    elif text is not None:
        raise ValueError("text was given but the model has no text conditioning (text_dim = 0)")
    return emb
