"""What the file-backed datasets share: items indexed once at construction, and the samples that
indexing left out (an empty caption, say), counted and reported instead of failing later."""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class IndexedCaptions(Dataset):
    items: list
    bad_at_index: list[tuple[str, str]]  # (source, reason)

    def report_left_out(self, name: str, what: str) -> None:
        if self.bad_at_index:
            log.warning("%s: left out %d %s (first: %s)", name, len(self.bad_at_index), what, self.bad_at_index[0][0])

    @property
    def num_bad_at_index(self) -> int:
        return len(self.bad_at_index)

    def __len__(self) -> int:
        return len(self.items)
