"""Samplers that shard over ranks themselves, and the keys they hand to datasets.

The trainer runs with `use_distributed_sampler=False`, so these samplers do the rank sharding.
`ResumableSampler` yields `SampleKey(index, epoch)` instead of a bare index: a dataset can then
choose "one random reference caption per image per epoch" as a pure function of
(seed, index, epoch), identical in the main process and in every worker process, and therefore
identical again after a resume. Datasets accept a plain int too (read as epoch 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    index: int
    epoch: int


def unpack_key(key: Any) -> tuple[int, int]:
    """SampleKey -> (index, epoch); an int (or 0-d tensor / numpy integer) -> (index, 0)."""
    if isinstance(key, SampleKey):
        return int(key.index), int(key.epoch)
    if isinstance(key, tuple) and len(key) == 2:  # a SampleKey that lost its type (e.g. pickled as tuple)
        return int(key[0]), int(key[1])
    return int(key), 0


def pick_reference(references: Sequence[str], seed: int, index: int, epoch: int) -> str:
    """One of `references`, a pure function of (seed, index, epoch) (uniform over epochs)."""
    if len(references) == 1:
        return references[0]
    # The trailing constant separates this stream from the synthetic generator's per-item stream.
    rng = np.random.default_rng([int(seed) % 2**63, int(index), int(epoch), 0x5EF])
    return references[int(rng.integers(len(references)))]


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; else torch.distributed's if initialized; else (0, 1)."""
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class ResumableSampler(Sampler[SampleKey]):
    """Per-epoch shuffled, rank-sharded sampler that can start an epoch part-way.

    Same index semantics as torch's DistributedSampler (so the same seed gives the same order):
    the epoch's permutation comes from a torch.Generator seeded with seed + epoch; without
    drop_last it is padded by repeating its head so every rank gets num_samples indices, with
    drop_last the tail is cut; rank r takes positions r, r + world, r + 2 world, ...

    `skip(n)` makes the next iteration start at position n of this rank's shard (mid-epoch
    resume); it is consumed when that iteration starts (`iter()`), later epochs are whole.
    `len()` is the number of indices the next iteration yields (num_samples - pending skip);
    `num_samples` is the whole epoch's count.

    rank / world_size default to torch.distributed's, looked up at each use, so a sampler built
    before the process group exists still shards correctly.
    """

    def __init__(self, data_len: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        if data_len < 0:
            raise ValueError(f"data_len must be >= 0, got {data_len}")
        self.data_len, self.seed, self.shuffle, self.drop_last = data_len, seed, shuffle, drop_last
        self._rank, self._world_size = rank, world_size
        self.epoch = 0
        self._skip = 0

    @property
    def rank_world(self) -> tuple[int, int]:
        return dist_rank_world(self._rank, self._world_size)

    @property
    def num_samples(self) -> int:
        world = self.rank_world[1]
        if self.drop_last:
            return self.data_len // world
        return math.ceil(self.data_len / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"cannot skip a negative number of indices ({n})")
        self._skip = int(n)

    @property
    def pending_skip(self) -> int:
        return min(self._skip, self.num_samples)

    def shard(self) -> list[int]:
        """This rank's indices for the current epoch, all num_samples of them (no skip)."""
        rank, world = self.rank_world
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.data_len, generator=g).tolist()
        else:
            indices = list(range(self.data_len))
        total = self.num_samples * world
        if total > len(indices) and indices:  # pad by repeating the head, as DistributedSampler
            indices += (indices * math.ceil(total / len(indices)))[: total - len(indices)]
        return indices[:total][rank:total:world]

    def __iter__(self) -> Iterator[SampleKey]:
        start, self._skip = self.pending_skip, 0
        epoch = self.epoch
        keys = [SampleKey(i, epoch) for i in self.shard()[start:]]
        return iter(keys)

    def __len__(self) -> int:
        return self.num_samples - self.pending_skip


class EvalShardSampler(Sampler[int]):
    """Sequential evaluation sampler: rank r gets r, r + world, ... with no padding.

    Every item is evaluated exactly once over all ranks, so metrics need no de-duplication; the
    price is that ranks may get one item (hence possibly one batch) fewer than others, so no
    collective operation may run per evaluation step (gather predictions and `sync_dist` at
    epoch end instead).
    """

    def __init__(self, data_len: int, rank: int | None = None, world_size: int | None = None):
        self.data_len = data_len
        self._rank, self._world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        rank, world = dist_rank_world(self._rank, self._world_size)
        return iter(range(rank, self.data_len, world))

    def __len__(self) -> int:
        rank, world = dist_rank_world(self._rank, self._world_size)
        return len(range(rank, self.data_len, world))
