"""A memo bounded in bytes, cheap to read: :class:`Memo`.

Servers remember things per distinct request (the validated form of a
request's bytes, the cache key of a query) to skip redoing work on repeats.
What clients send is unbounded, so the memo is bounded by the bytes its items
hold, not only by their count, and an item too large to be worth keeping is
never kept.

It keeps two generations of plain dictionaries: items go into the young one;
when it holds half the budget, it becomes the old one and the previous old
one is dropped. An item read from the old generation moves back to the young
one, so what is in use stays while one-off items age out, whoever sends them.
A read is one dictionary look-up in the common case.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Remembers ``key -> value`` in at most ``max_bytes``, as ``size(key, value)`` counts.

    Items larger than ``max_item`` bytes are not remembered. Safe to use from
    several threads: a hit in the young generation takes no lock (one dict
    read), everything that moves items takes one.
    """

    def __init__(self, size: Callable[[K, V], int], *, max_bytes: int, max_item: int) -> None:
        self._size = size
        self.max_bytes = max_bytes
        self.max_item = max_item
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._young_bytes = 0
        self._old_bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is None:
            with self._lock:
                value = self._old.pop(key, None)
                if value is not None:
                    size = self._size(key, value)
                    self._old_bytes -= size
                    self._insert(key, value, size)
        return value

    def put(self, key: K, value: V) -> None:
        size = self._size(key, value)
        if size > self.max_item:
            return
        with self._lock:
            if key in self._young:
                return
            if self._old.pop(key, None) is not None:
                self._old_bytes -= size
            self._insert(key, value, size)

    def _insert(self, key: K, value: V, size: int) -> None:
        if self._young_bytes + size > self.max_bytes // 2:
            self._old, self._young = self._young, {}
            self._old_bytes, self._young_bytes = self._young_bytes, 0
        self._young[key] = value
        self._young_bytes += size

    @property
    def bytes(self) -> int:
        """Bytes the remembered items hold, as counted."""
        return self._young_bytes + self._old_bytes

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def clear(self) -> None:
        with self._lock:
            self._young.clear()
            self._old.clear()
            self._young_bytes = self._old_bytes = 0
