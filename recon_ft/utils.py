"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import subprocess
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def git_commit() -> str | None:
    """The short hash of the checked-out commit, or None outside a git checkout (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (what `sha256sum` prints), computed once per path, size and
    modification time in a process (an evaluation asks for the same weights file several times)."""
    stat = os.stat(path)
    return _file_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_rank_zero() -> bool:
    """True on the main process, also before torch.distributed is initialized (launchers set RANK)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


def dataclass_from(cls: type[T], cfg: Mapping[str, Any] | None, section: str) -> T:
    """cls(**cfg) for a config block; an unknown key is a short error naming `section` and the
    options there are."""
    cfg = dict(cfg or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(cfg) - names
    if unknown:
        raise ValueError(f"{section}: unknown options {sorted(unknown)}; available: {sorted(names)}")
    return cls(**cfg)


def expect(ok: bool, option: str, expected: str, value) -> None:
    """ValueError "<option>: expected <expected>, got <value>" unless ok."""
    if not ok:
        raise ValueError(f"{option}: expected {expected}, got {value!r}")


@contextlib.contextmanager
def eval_mode(module):
    """Every submodule of a torch module in eval mode, each one's own mode restored after (frozen
    bases may be in eval mode while their adapters train)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
