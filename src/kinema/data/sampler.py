"""A batch sampler that can resume mid-epoch and splits every global batch across ranks."""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler:
    """Endless batches of dataset keys (index, epoch) for one rank.

    The sample stream is the concatenation of per-epoch permutations seeded by (seed, epoch). Global
    batch b covers stream positions [b·G, (b+1)·G) with G = batch_size · world_size; rank r takes its
    contiguous share. So ranks never overlap, and resuming at `start_batch` continues the exact stream
    (the DistributedSampler equivalent, with a position that survives restarts).
    """

    def __init__(self, length: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_batch: int = 0):
        if length < 1 or batch_size < 1:
            raise ValueError(f"length and batch_size must be positive; got {length}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.length, self.batch_size, self.world_size, self.rank = length, batch_size, world_size, rank
        self.seed, self.start_batch = seed, start_batch
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=g)
        return self._perm

    def batch(self, b: int) -> list[tuple[int, int]]:
        global_size = self.batch_size * self.world_size
        start = b * global_size + self.rank * self.batch_size
        keys = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.length)
            keys.append((int(self._permutation(epoch)[offset]), epoch))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            yield self.batch(b)
            b += 1
