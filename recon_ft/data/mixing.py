"""How unpaired rows join the paired training batches.

Every training batch is one list of keys for one DataLoader: the paired batch's `SampleKey`s, then
the `StreamKey`s of the unpaired images and texts this batch draws. Which unpaired items batch n
draws is a pure function of (seed, stream, n, rank), like the noise of a step, so

  - a resumed run draws exactly what the uninterrupted run would have: the stream's position is the
    paired loader's (epoch, batches done), which the checkpoint holds, times the draw size;
  - DDP ranks draw disjoint items: rank r takes positions r, r + world, ... of the stream;
  - the paired stream is untouched: with no unpaired data the keys, hence the batches, are the same.

An unpaired stream is endless: it walks a permutation of its dataset, a new one (seeded with the
pass number) each time it wraps, independent of the paired epochs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset

STREAMS = ("images", "texts")


class StreamKey(NamedTuple):
    stream: str  # "images" | "texts"
    index: int  # position in that stream's dataset


class UnpairedStream:
    """The items of one unpaired dataset that each training batch draws.

    Every `every_n_steps`-th batch (0, n, 2n, ...) draws `batch_size` items on each rank.
    """

    def __init__(self, name: str, data_len: int, batch_size: int, every_n_steps: int = 1, seed: int = 0):
        if name not in STREAMS:
            raise ValueError(f"unpaired stream: expected one of {STREAMS}, got {name!r}")
        if data_len < 1:
            raise ValueError(f"data.unpaired.{name}: the dataset is empty")
        if batch_size < 1 or every_n_steps < 1:
            raise ValueError(f"data.unpaired.batch_size and every_n_steps: expected >= 1, got {batch_size} and "
                             f"{every_n_steps}")
        self.name, self.data_len, self.batch_size, self.every_n_steps = name, data_len, batch_size, every_n_steps
        self.seed = seed
        self._perm: tuple[int, list[int]] | None = None  # (pass, permutation), the last one used

    def draws_before(self, batch_number: int) -> int:
        """How many items this rank has drawn in batches 0 .. batch_number - 1 (its position)."""
        return -(-batch_number // self.every_n_steps) * self.batch_size

    def keys(self, batch_number: int, rank: int = 0, world_size: int = 1) -> list[StreamKey]:
        """The keys batch `batch_number` (counted over the whole run, all epochs) draws on `rank`."""
        if batch_number % self.every_n_steps:
            return []
        start = self.draws_before(batch_number)
        keys = []
        for j in range(start, start + self.batch_size):
            # the rank's j-th item is the stream's item j * world + rank
            wrap, offset = divmod(j * world_size + rank, self.data_len)
            keys.append(StreamKey(self.name, self._permutation(wrap)[offset]))
        return keys

    def _permutation(self, wrap: int) -> list[int]:
        if self._perm is None or self._perm[0] != wrap:
            seed = np.random.SeedSequence([int(self.seed) % 2**63, STREAMS.index(self.name), int(wrap), 0x0B9]
                                          ).generate_state(1, np.uint64)[0] >> 1
            g = torch.Generator().manual_seed(int(seed))
            self._perm = (wrap, torch.randperm(self.data_len, generator=g).tolist())
        return self._perm[1]


class MixedBatchSampler(BatchSampler):
    """A paired batch sampler (over a ResumableSampler) with the unpaired streams' keys appended to
    each batch. Its length, epoch and mid-epoch skip are the paired sampler's."""

    def __init__(self, paired: BatchSampler, streams: list[UnpairedStream]):
        self.paired, self.streams = paired, streams
        self.sampler, self.batch_size, self.drop_last = paired.sampler, paired.batch_size, paired.drop_last

    def __len__(self) -> int:
        return len(self.paired)

    def __iter__(self):
        sampler = self.sampler
        # The batch number over the whole run: the epoch's first batch, plus the batches a resumed
        # epoch skips (the pending skip is consumed when the paired sampler starts iterating).
        first = sampler.epoch * len(self.paired) + sampler.pending_skip // self.batch_size
        rank, world = sampler.rank_world
        for i, batch in enumerate(self.paired):
            yield list(batch) + [k for s in self.streams for k in s.keys(first + i, rank, world)]


class MixedDataset(Dataset):
    """Paired `SampleKey`s go to the paired dataset, `StreamKey`s to the stream's dataset."""

    def __init__(self, paired: Dataset, unpaired: dict[str, Dataset]):
        self.paired, self.unpaired = paired, unpaired

    def __len__(self) -> int:
        return len(self.paired)  # type: ignore[arg-type]

    def __getitem__(self, key: Any):
        if isinstance(key, StreamKey):
            return self.unpaired[key.stream][key]
        return self.paired[key]
