"""Per-call accounting: SQL statements emitted and cache outcomes, for observers.

A :class:`CallTracker` is made current for the duration of one unit of work
(one gRPC call, one test block) with :func:`track`. The engine listener
installed by :func:`sesscache.db.make_engine` counts every statement sent to
the database into the current tracker, and the caching hook records each
cache lookup it makes. Trackers live in a context variable, so work handed to
a thread with :func:`contextvars.copy_context` is still counted.

It observes; it decides nothing: whether a lookup hits or misses, and why,
is the store's answer (:meth:`sesscache.store.SessionStore.lookup`), which
the server reads directly. The lookups recorded here are for library users
and tests that want to see every lookup of a block, the shared region's
included.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    """What one cache lookup did."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"


@dataclass(slots=True)
class Lookup:
    """One cache lookup made by the caching hook."""

    region: str
    key: str
    outcome: Outcome
    rows: int


@dataclass(slots=True)
class CallTracker:
    """What one unit of work did against the database and the caches."""

    sql_statements: int = 0
    lookups: list[Lookup] = field(default_factory=list)


_current: contextvars.ContextVar[CallTracker | None] = contextvars.ContextVar(
    "sesscache_call_tracker", default=None
)


def current() -> CallTracker | None:
    """The tracker of the work under way, or None outside :func:`track`."""
    return _current.get()


@contextmanager
def track() -> Iterator[CallTracker]:
    """Count SQL statements and cache lookups made inside the block."""
    tracker = CallTracker()
    token = _current.set(tracker)
    try:
        yield tracker
    finally:
        _current.reset(token)


def count_statement() -> None:
    """Count one SQL statement against the current tracker, if any."""
    tracker = _current.get()
    if tracker is not None:
        tracker.sql_statements += 1


def record_lookup(region: str, key: str, outcome: Outcome, rows: int) -> None:
    """Record one cache lookup against the current tracker, if any."""
    tracker = _current.get()
    if tracker is not None:
        tracker.lookups.append(Lookup(region, key, outcome, rows))
