"""Host memory between training steps: keep the heap a step frees for the next step (glibc).

A training step on the CPU allocates its activations and autograd buffers (~120 MB at the bench's
tiny size, batch 8) and frees them all by the end of the step. glibc's malloc returns the free top
of its main heap to the kernel (sbrk) once it exceeds the trim threshold, which glibc itself moves
with the largest block it has freed, up to 64 MB. The next step then grows the heap again and
takes one page fault per 4 KB page, each zeroed by the kernel: about 16,000-25,000 minor faults,
~40 ms, per tiny step under Lightning, ~10% of the step (docs/performance.md).

Whether the top is free at the end of a step is an accident of what outlives it: a plain loop that
keeps the last step's outputs in a variable until the next forward pins the top with their graph
and hardly faults; Lightning releases the step's outputs before the next one, as it should, and
the whole working set goes back to the kernel every step.

`retain_step_memory` fixes glibc's thresholds so it does not: heap blocks up to 32 MB (glibc's own
dynamic maximum) and a free top of up to 2 GB are kept for reuse. The process's peak resident set
is unchanged (every step reaches it anyway); what changes is that the memory stays mapped between
steps instead of being handed back and faulted in again. No value a run computes changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, larger ones are mmap'd (and unmapped when freed):
# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, the largest value mallopt accepts there.
MMAP_THRESHOLD = 32 * 2**20
# Free memory at the top of the heap kept rather than returned to the kernel (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_applied = False


def retain_step_memory() -> bool:
    """Set glibc's trim and mmap thresholds (see the module docstring) once per process.

    Returns whether they are in place; False (and nothing changed) without glibc, e.g. on macOS or
    musl. Setting either threshold turns off glibc's dynamic adjustment of both, hence both are set.
    """
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not _applied:
        log.warning("mallopt refused the heap thresholds; CPU steps may page-fault their memory in again")
    return _applied
