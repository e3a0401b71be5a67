"""The process's own memory: freed heap goes back to the OS after each large build; its size.

A poll or a snapshot swap frees tens of megabytes at once (at 10,000 datasets); glibc keeps
such memory in its heap, so the resident size would stay at the peak. ``malloc_trim`` returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_name = ctypes.util.find_library("c")
if _name:
    _libc = ctypes.CDLL(_name)
    _trim = getattr(_libc, "malloc_trim", None)  # glibc only (not musl, not macOS)


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS where the C library can (glibc); else nothing."""
    if _trim is not None:
        _trim(0)


def resident_bytes() -> float:
    """The calling process's resident memory in bytes (Linux ``/proc``); NaN if unreadable."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return math.nan
    return float(pages * os.sysconf("SC_PAGE_SIZE"))
