"""The index sampler used by every loader, single-process or DDP.

One order of the dataset (a permutation seeded by ``seed + epoch`` when shuffling) is cut into global
batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th contiguous slice of each global batch.
So a DDP run of W processes with per-process batch b sees, step by step, exactly the samples that one
process with batch b and ``accumulation_steps = W`` sees, in the same micro-batches: the property the
DDP-agreement test checks.

Training pads the order (repeating its beginning, like ``DistributedSampler``) to a multiple of the world
size, so every rank runs the same number of steps. Evaluation does not pad: every video is counted
exactly once, and the metrics, summed over ranks, equal the single-process ones.
"""
from __future__ import annotations

from typing import Iterator, List

import torch
from torch.utils.data import Sampler

__all__ = ["ShardedSampler"]


class ShardedSampler(Sampler[int]):
    """Indices of one process; see the module docstring.

    Args:
        n_samples: dataset length.
        batch_size: samples per process per batch.
        rank, world_size: this process and the number of processes.
        shuffle: draw a new permutation each epoch (``set_epoch``), else the natural order.
        seed: base seed of the permutations.
        pad_to_world: repeat samples so that all ranks get the same number (training).
    """

    def __init__(self, n_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = False,
                 seed: int = 0, pad_to_world: bool = True):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad_to_world = pad_to_world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> List[int]:
        """The order of all samples this epoch, padded to the world size when ``pad_to_world``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_samples, generator=g).tolist()
        else:
            order = list(range(self.n_samples))
        if self.pad_to_world and self.n_samples % self.world_size:
            extra = self.world_size - self.n_samples % self.world_size
            order += (order * (extra // len(order) + 1))[:extra]
        return order

    def _mine(self) -> List[int]:
        order = self.global_order()
        per_global = self.batch_size * self.world_size
        mine = []
        for start in range(0, len(order), per_global):
            chunk = order[start : start + per_global]
            if len(chunk) == per_global:
                share = self.batch_size
            else:  # last, partial global batch: equal shares when padded, else fill ranks in turn
                share = len(chunk) // self.world_size if self.pad_to_world else self.batch_size
            mine += chunk[self.rank * share : (self.rank + 1) * share]
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())
