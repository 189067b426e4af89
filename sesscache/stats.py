"""Cache counters, per session and server-wide.

:class:`Counters` is the set of numbers Hibernate's Statistics or Redis's
``INFO stats`` would show, plus what only an ORM-aware cache knows: the SQL
statements emitted and the SQL statements hits saved. Increments may come
from the event loop and from worker threads, so they take a lock (cheap when
uncontended).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

_FIELDS = (
    "hits",
    "misses",
    "stores",
    "evictions",
    "expirations",
    "invalidations",
    "sql_statements",
    "sql_statements_saved",
)


@dataclass(slots=True)
class Counters:
    """Counts since :attr:`since` (when made or last reset)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    sql_statements: int = 0
    sql_statements_saved: int = 0
    since: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def add(self, **counts: int) -> None:
        """Add to the named counters, e.g. ``add(hits=1, sql_statements_saved=4)``."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> Counters:
        """A copy, consistent at one instant."""
        with self._lock:
            return Counters(**{name: getattr(self, name) for name in _FIELDS}, since=self.since)

    def reset(self) -> Counters:
        """Zero the counters; return them as they were."""
        with self._lock:
            before = Counters(**{name: getattr(self, name) for name in _FIELDS}, since=self.since)
            for name in _FIELDS:
                setattr(self, name, 0)
            self.since = time.time()
        return before
