"""Peak memory of one phase.

CUDA: torch.cuda.max_memory_allocated() over the phase (tensors, weights included), and its rise
over the phase start. CPU: the kernel's peak resident set size (VmHWM), reset at the phase start by
writing 5 to /proc/self/clear_refs, after gc and malloc_trim(0); the rise over the resident size at
the start is reported (it includes allocator slack, as RSS does). Where the reset is not allowed, a
thread samples VmRSS every 2 ms instead (the method is written into the JSON).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading

import torch


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of one phase; see the module docstring for the methods."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._peak_kb = 0

    def __enter__(self) -> "MemoryProbe":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self.base = (_proc_status_kb("VmRSS") or 0) * 1024
        if _reset_peak_rss() and _proc_status_kb("VmHWM") is not None:
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs)"
        else:
            self.method = "peak RSS (VmRSS sampled every 2 ms)"
            self._peak_kb = self.base // 1024
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak_kb = max(self._peak_kb, _proc_status_kb("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = self._peak_kb * 1024
        else:
            self.peak = (_proc_status_kb("VmHWM") or 0) * 1024
        self.delta = max(0, self.peak - self.base)
