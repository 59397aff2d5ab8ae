"""Small helpers shared across the package."""

from __future__ import annotations

import os


def is_rank_zero() -> bool:
    """True on the main process, also before torch.distributed is initialized (launchers set RANK)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0
