"""Giving memory back to the system after a burst (glibc's allocator).

Python frees the objects of an ended session at once, but glibc keeps the
freed pages in its arenas, one arena per thread that ever allocated (up to
8 per core): after a burst of thousands of sessions the process keeps its
peak size, though nothing holds that memory. Two measures bring it back:

- :func:`limit_arenas`, at start-up before any worker thread exists: two
  arenas, so freed memory is pooled instead of spread over one arena per
  database worker thread;
- :func:`trim`, now and then after sessions end: ``malloc_trim(0)`` hands
  free pages back to the system.

Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Use at most ``arenas`` malloc arenas; call before starting threads."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return free heap pages to the system; True if some were."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
