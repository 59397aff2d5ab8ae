"""Reuse of frozen computations across epochs: VAE posteriors of training images and text-encoder
states of training captions.

Both are functions of frozen weights and of the sample alone, so from the second epoch on they can
be looked up instead of recomputed:

  - `latents`: the VAE posterior's parameters (mean, log-variance), (2C, h, w) per image, keyed by
    the sample's `id`. The generator's image view has no random augmentation, so an id always
    gives the same image. The latent is still *sampled* each step, z0 = s (mean + std eps) with the
    step's generator, so a cached step draws exactly what an uncached one draws.
  - `text_states`: the text encoder's last hidden state, (77, D) per caption, keyed by the caption
    string (a sample's caption may change between epochs). Only with a frozen text encoder.

Entries live in host memory (`device: cpu`) or beside the model (`device: model`), per process:
under DDP each rank caches what its shards showed it. Once `max_gb` is reached new entries are
computed and not stored; `stats()` counts hits, misses and what was left out. Nothing is written
to checkpoints: a resumed run refills the cache as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from recon_ft.utils import dataclass_from

KINDS = ("latents", "text_states")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CacheConfig:
    latents: bool = False
    text_states: bool = False
    max_gb: float = 4.0  # both kinds together, per process
    dtype: str = "float32"  # storage; float32 gives exactly the uncached values, bfloat16 / float16 half the memory
    device: str = "cpu"  # cpu (host memory) | model (the model's device: no copies, costs accelerator memory)

    @classmethod
    def coerce(cls, cfg) -> "CacheConfig":
        if isinstance(cfg, cls):
            return cfg
        out = dataclass_from(cls, cfg, "frozen_cache")
        if out.dtype not in DTYPES:
            raise ValueError(f"frozen_cache.dtype: expected one of {sorted(DTYPES)}, got {out.dtype!r}")
        if out.device not in ("cpu", "model"):
            raise ValueError(f"frozen_cache.device: expected cpu or model, got {out.device!r}")
        if out.max_gb < 0:
            raise ValueError(f"frozen_cache.max_gb: expected >= 0, got {out.max_gb}")
        return out

    @property
    def enabled(self) -> bool:
        return self.latents or self.text_states


class FrozenCache:
    """Per-key tensors of the frozen computations named by a CacheConfig."""

    def __init__(self, cfg: CacheConfig | dict | None = None):
        self.cfg = CacheConfig.coerce(cfg)
        self._store: dict[str, dict[Hashable, torch.Tensor]] = {kind: {} for kind in KINDS}
        self._out_dtype: dict[str, torch.dtype] = {}  # dtype each kind was computed in
        self._counts = {kind: {"hits": 0, "misses": 0, "not_stored": 0} for kind in KINDS}
        self.nbytes = 0

    def enabled(self, kind: str) -> bool:
        return bool(getattr(self.cfg, kind))

    def lookup(
        self, kind: str, keys: Sequence[Hashable], compute: Callable[[list[int]], torch.Tensor], device
    ) -> torch.Tensor:
        """Rows for `keys`, (B, ...) on `device`: stored rows where present, `compute(missing
        positions)` -> (len(missing), ...) for the rest, which are then stored while room lasts."""
        store, counts = self._store[kind], self._counts[kind]
        missing = [i for i, key in enumerate(keys) if key not in store]
        counts["hits"] += len(keys) - len(missing)
        counts["misses"] += len(missing)
        fresh = compute(missing) if missing else None
        if fresh is not None:
            self._out_dtype.setdefault(kind, fresh.dtype)
            if len(missing) == len(keys):
                self._put(kind, list(keys), fresh.detach())
                return fresh
        dtype = self._out_dtype[kind]
        rows = [store[key].to(device, dtype, non_blocking=True) if key in store else None for key in keys]
        if fresh is not None:
            self._put(kind, [keys[i] for i in missing], fresh.detach())
            for j, i in enumerate(missing):
                rows[i] = fresh[j].to(dtype)
        return torch.stack(rows)

    def _put(self, kind: str, keys: list[Hashable], values: torch.Tensor) -> None:
        dtype = DTYPES[self.cfg.dtype]
        where = values.device if self.cfg.device == "model" else torch.device("cpu")
        budget = self.cfg.max_gb * 1024**3
        row_bytes = values[0].numel() * dtype.itemsize if len(values) else 0
        store = self._store[kind]
        values = values.to(where, dtype)  # one device-to-host copy for the batch, not one per row
        for key, value in zip(keys, values):
            if key in store:  # a key twice in one batch
                continue
            if self.nbytes + row_bytes > budget:
                self._counts[kind]["not_stored"] += 1
                continue
            store[key] = value.clone()  # its own storage, not a view keeping the whole batch alive
            self.nbytes += row_bytes

    def stats(self) -> dict[str, float]:
        """Counters since the start of the process: `<kind>_hits`, `_misses`, `_not_stored`,
        `_entries`, and `gb` (memory held)."""
        out: dict[str, float] = {"gb": self.nbytes / 1024**3}
        for kind in KINDS:
            if self.enabled(kind):
                for name, value in self._counts[kind].items():
                    out[f"{kind}_{name}"] = float(value)
                out[f"{kind}_entries"] = float(len(self._store[kind]))
        return out

    def clear(self) -> None:
        for store in self._store.values():
            store.clear()
        self.nbytes = 0
