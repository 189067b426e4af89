"""Giving memory back to the system after a burst of sessions.

What a burst of thousands of sessions leaves, once they end, is measured
(tracemalloc, 3,000 sessions of one entry each: +106 MiB at the peak) as:

- reference cycles (an ORM Person and its Addresses refer to each other):
  garbage that waits for the next full collection, about a quarter of it;
- free memory the allocators keep: pymalloc keeps an arena while any one
  object in it lives, and glibc keeps freed pages in its arenas, one per
  thread that ever allocated. Live Python objects after the burst: +0.8 MiB.

So the server runs with ``PYTHONMALLOC=malloc`` (:mod:`sesscache_server.__main__`
re-executes itself with it unless PYTHONMALLOC is set), at most two glibc
arenas (:func:`limit_arenas`, before any thread starts), and, once a burst is
over, :func:`release`: a full garbage collection, then ``malloc_trim(0)``.

The glibc calls do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


def settle() -> None:
    """Once started: collect, then move every object alive now (modules, mappers,
    compiled statements...) out of the collector's sight (``gc.freeze``), so the
    full collections that calls' garbage cycles trigger scan only what calls made."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Collect garbage cycles, then hand free pages back (after a burst is over)."""
    collected = gc.collect()
    trimmed = trim()
    log.debug("memory released: %d objects collected, pages returned: %s", collected, trimmed)
