"""Keep freed memory for reuse instead of handing it back to the operating system (glibc only).

Every training step allocates and frees the same large tensors: the gradients and Adam's
temporaries of a 23.4M-parameter MLP are 11–36 MB each. glibc serves any allocation above its
mmap threshold (at most 32 MiB, adjusted dynamically) with a fresh ``mmap`` and returns it with
``munmap`` when freed, and trims the top of its heap above 128 KiB: so the next step's tensor of
the same size is new memory again, and every page of it is a page fault (minor, but on the VM
this was measured on each costs several µs: half of a heat-2d epoch's process time was system
time). :func:`keep_freed_memory` raises both thresholds, so large tensors come from the heap and
freed ones are reused by the next step. Numbers do not change (only where the bytes live); the
process keeps its peak memory until it exits instead of returning it between steps.

The trainer calls it once per process. ``PDEACCEL_ALLOCATOR=system`` turns it off, and it leaves
the allocator alone when the process was started with glibc's own settings
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``). Elsewhere than on glibc it does nothing.
Measured in ``benchmarks/epoch_cost.py`` (``benchmarks/results/epoch_cost.md``).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: allocations up to this size come from the heap (larger ones are still mapped on their own)
MMAP_THRESHOLD = 1 << 30
#: freed memory at the top of the heap is kept up to this size (the C int maximum)
TRIM_THRESHOLD = (1 << 31) - 1
_ENV_OFF = "PDEACCEL_ALLOCATOR"
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); whether they are now raised."""
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get(_ENV_OFF, "").strip().lower() == "system" or any(v in os.environ for v in _GLIBC_ENV):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl has no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _state
