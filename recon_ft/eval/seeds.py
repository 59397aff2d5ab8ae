"""Seeds of the evaluation: a pure function of (run seed, item id, stream, candidate number).

Every random draw of the evaluation (nucleus samples, initial diffusion noise) takes its seed from
here, never from a global RNG stream, so an item gets the same captions and images whatever its
batch, its rank, the number of ranks or the items evaluated before it.
"""

from __future__ import annotations

import hashlib


def item_seed(seed: int, item_id, stream: str, j: int = 0) -> int:
    """A 63-bit seed for candidate `j` of `stream` ("sample", "t2i", "i2t2i") of item `item_id`."""
    key = f"{int(seed)}/{type(item_id).__name__}:{item_id}/{stream}/{int(j)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)
