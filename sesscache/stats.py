"""Cache counters, per session and server-wide.

:class:`Counters` is the set of numbers Hibernate's Statistics or Redis's
``INFO stats`` would show, plus what only an ORM-aware cache knows: the SQL
statements emitted and the SQL statements hits saved. Increments may come
from the event loop and from worker threads, so they take a lock (cheap when
uncontended).

Resetting never loses the running totals: :meth:`Counters.reset` moves a
baseline, :meth:`Counters.snapshot` reports counts since it, and
:meth:`Counters.totals` reports counts since the start (what a Prometheus
counter must show: it never goes down).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from sesscache.store import RemovalReason

#: Every counter, with what it counts: the one list. :class:`Snapshot` and
#: :class:`Counters` have these fields, the wire's ``CacheStats`` has them by
#: the same names, and the metrics are ``sesscache_cache_<name>_total``
#: (tests/test_stats.py holds them to it).
COUNTERS: Mapping[str, str] = {
    "hits": "Session cache hits",
    "misses": "Session cache misses",
    "stores": "Entries stored in session caches",
    "evictions": "Entries evicted by per-session limits",
    "expirations": "Entries dropped after expiring",
    "invalidations": "Entries removed by Invalidate, a write or a committed change",
    "sql_statements": "SQL statements emitted by calls",
    "sql_statements_saved": "SQL statements saved by hits",
}
FIELDS = tuple(COUNTERS)

#: The counter each way out of a cache counts in: every reason is listed (a
#: failed call's entry never served anyone; a session end counts as one).
REMOVAL_COUNTERS: Mapping[RemovalReason, str | None] = {
    RemovalReason.EVICTED: "evictions",
    RemovalReason.EXPIRED: "expirations",
    RemovalReason.INVALIDATED: "invalidations",
    RemovalReason.CHANGED: "invalidations",
    RemovalReason.FAILED: None,
    RemovalReason.SESSION_ENDED: None,
}


@dataclass(slots=True)
class Counts:
    """The counters of :data:`COUNTERS`, as fields."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    sql_statements: int = 0
    sql_statements_saved: int = 0

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass(slots=True)
class Snapshot(Counts):
    """Counts at one instant, since :attr:`since` (a value: never changed once made)."""

    since: float = 0.0


@dataclass(slots=True)
class Counters(Counts):
    """Running counts; see :meth:`snapshot`, :meth:`totals`, :meth:`reset`."""

    started: float = field(default_factory=time.time)
    _baseline: Snapshot | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters, e.g. ``add(hits=1, sql_statements_saved=4)``."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def totals(self) -> Snapshot:
        """Counts since the start."""
        with self._lock:
            return self._totals()

    def snapshot(self) -> Snapshot:
        """Counts since the last :meth:`reset` (or the start)."""
        with self._lock:
            return self._since_baseline()

    def reset(self) -> Snapshot:
        """Start counting afresh; return the counts as they were."""
        with self._lock:
            before = self._since_baseline()
            self._baseline = replace(self._totals(), since=time.time())
        return before

    def _totals(self) -> Snapshot:
        return Snapshot(**{name: getattr(self, name) for name in FIELDS}, since=self.started)

    def _since_baseline(self) -> Snapshot:
        base = self._baseline
        if base is None:
            return self._totals()
        return Snapshot(
            **{name: getattr(self, name) - getattr(base, name) for name in FIELDS},
            since=base.since,
        )
