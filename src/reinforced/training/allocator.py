"""Give freed memory back to the operating system (glibc's malloc, through ctypes).

Why: glibc's malloc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB on
64-bit, "dynamic mmap threshold" in mallopt(3)), so after the first step torch's tensors of a few MiB come
from the heap arenas instead, and their freed blocks stay resident. A step's allocation pattern (rollout,
reward, update) then grows the process's resident set step after step: bench/profile_step.py measured a
SmolLM2-135M step at 5.9 GiB peak RSS at the first update and 7.05 GiB at the third
(docs/performance.md). Two standard glibc calls fix it, no allocator library needed:

- ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` at start-up: a fixed threshold (the dynamic one is then off), so
  every block above it is its own mapping, unmapped when torch frees it;
- ``malloc_trim(0)`` after the rollout and after the update: the freed pages left in the arenas are
  returned (madvise) so the next phase starts from the memory it actually holds.

Both cost time (every large block is then freshly mapped and page-faulted), so ``training.release_memory``
is ``none`` by default: measured on SmolLM2-135M (docs/performance.md) the fixed threshold lowers the peak
from 7.03 to 5.66 GiB (3.33 GiB with gradient checkpointing) but slows a forward+backward by about 40%.

Linux with glibc only; elsewhere (macOS, musl) the functions are no-ops that return False. A user's own
``MALLOC_MMAP_THRESHOLD_`` environment variable wins over the start-up setting.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter number in glibc's malloc.h
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed instead of rising


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc's handle, or None where malloc is not glibc's (no mallopt / malloc_trim semantics to rely on)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def fix_mmap_threshold(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Serve every allocation above ``threshold`` bytes from its own mapping from now on (freed at once).

    Returns whether the setting was applied: False off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is set
    (glibc read it at start-up; the user's value stays).
    """
    if threshold <= 0:
        raise ValueError(f"mmap threshold must be a positive number of bytes, got {threshold}")
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))


def release_free_memory() -> bool:
    """Return the arenas' free pages to the OS (``malloc_trim(0)``); True when glibc released any."""
    libc = _glibc()
    return False if libc is None else bool(libc.malloc_trim(ctypes.c_size_t(0)))


def configure_allocator(mode: str) -> bool:
    """Start-up part of ``training.release_memory``: ``mmap`` fixes the threshold; ``none`` / ``trim`` leave
    glibc's dynamic threshold (``trim`` acts around each update, in ``training.step``)."""
    if mode not in ("none", "trim", "mmap"):
        raise ValueError(f"training.release_memory must be none, trim or mmap, got {mode!r}")
    return fix_mmap_threshold() if mode == "mmap" else False
