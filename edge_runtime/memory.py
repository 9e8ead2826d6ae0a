"""Keeping a long-running daemon's memory flat: glibc's allocator settings and ``malloc_trim``.

Measured with ``bench/soak.py --kills 0`` (bench/README.md, tuning log): with glibc's defaults each
worker thread gets a malloc arena of its own and large buffers move from
``mmap`` into those arenas once freed, so a daemon's RSS climbs during a burst and stays high after it.
:func:`settle_allocator` caps the arenas at two and keeps buffers of 256 KiB and more (decoded scans,
probability maps, inference buffers) on ``mmap``, which returns them to the OS when freed.
:func:`release_free_memory` trims what is left once a burst is over. Both are no-ops where the C
library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENA_MAX = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
            return libc
    return None  # musl or another C library: leave it be


def settle_allocator() -> bool:
    """Set glibc's allocator up for a long-running process; call before the worker threads start."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_ARENA_MAX, ARENA_MAX) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the daemon's allocator settings; memory may grow after bursts")
    return ok


def release_free_memory() -> None:
    """Hand memory freed after a burst back to the OS (glibc's ``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
