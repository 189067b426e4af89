"""The session-local dogpile.cache backend, and the store it keeps on a Session.

:class:`SessionLocalBackend` is a dogpile.cache backend whose storage is a
:class:`SessionStore` kept in the *current* ORM Session's ``Session.info``
dictionary. "Current" is whatever the ``scoped_session`` argument returns:
in sesscache that is the session of the gRPC caller (see
:mod:`sesscache.registry`). Values are stored as they are, never serialized,
so the ORM objects of a cached result are the very objects of the session's
identity map; and when the session is removed, its store goes with it.

The store also answers inspection: every :class:`Entry` carries the metadata
a person wants to see (region, statement, parameters, rows, stored time,
expiry, hits, last access, approximate size), and reading it for inspection
(:meth:`SessionStore.peek`, :meth:`SessionStore.page`) never counts as a hit.

The store can be bounded: ``max_entries`` and ``max_bytes`` evict the least
recently used entries when exceeded. Each eviction and expiry is counted on
the store and logged at debug level.

Usage::

    from dogpile.cache import make_region
    from sesscache.backend import register_backend

    register_backend()
    region = make_region().configure(
        "sesscache.session_local",
        arguments={"scoped_session": Session, "region_name": "local_session"},
    )
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from dogpile.cache import register_backend as _dogpile_register_backend
from dogpile.cache.api import NO_VALUE, CacheBackend, CachedValue, CacheMutex, NoValue
from sortedcontainers import SortedDict
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: The name this backend is registered under with dogpile.cache.
BACKEND_NAME = "sesscache.session_local"

#: The name of the shared, pickling, expiring memory backend.
SHARED_BACKEND_NAME = "sesscache.memory"

#: The ``Session.info`` key holding a session's :class:`SessionStore`.
STORE_INFO_KEY = "sesscache.store"


def register_backend() -> None:
    """Register the backends with dogpile.cache.

    :class:`SessionLocalBackend` as ``sesscache.session_local`` and
    :class:`SharedMemoryBackend` as ``sesscache.memory``.

    Idempotent. (Installed as a package, the ``dogpile.cache`` entry point in
    pyproject.toml registers it too.)
    """
    _dogpile_register_backend(  # type: ignore[no-untyped-call]
        BACKEND_NAME, __name__, "SessionLocalBackend"
    )
    _dogpile_register_backend(  # type: ignore[no-untyped-call]
        SHARED_BACKEND_NAME, __name__, "SharedMemoryBackend"
    )


def digest_of(key: str) -> str:
    """The short, stable digest of a cache key (12 hex characters)."""
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True, slots=True)
class Description:
    """What a cached payload says about itself, for inspection and limits."""

    rows: int = 0
    statement: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    entity: str = ""
    size: int = 0
    expiration_time: float | None = None


class Describable(Protocol):
    """A payload that can describe itself (see :class:`sesscache.caching.CachedResult`).

    The stores read ``describe`` by duck typing (an ``isinstance`` check
    against a runtime protocol costs more than the rest of a store).
    """

    def describe(self) -> Description: ...


@dataclass(slots=True, eq=False)
class Entry:
    """One cached value and its metadata."""

    key: str
    region: str
    value: CachedValue
    seq: int
    stored_at: float
    expires_at: float | None
    description: Description
    last_access: float
    hits: int = 0
    #: Approximate bytes the entry holds: rows, key, SQL, parameters, renderings.
    size: int = 0

    @property
    def digest(self) -> str:
        return digest_of(self.key)

    @property
    def rows(self) -> int:
        return self.description.rows

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until expiry (negative once expired), None if never."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)


#: Called with (entry, reason) when an entry leaves the store other than by
#: delete: reason is "evicted" (a limit) or "expired".
RemovalListener = Callable[[Entry, str], None]

#: Called with (entries added, bytes added) whenever the store's totals change
#: (negative when entries leave), so a registry can total every store in O(1).
SizeListener = Callable[[int, int], None]

#: What an entry costs beyond its rows: the Entry, its CachedValue and metadata,
#: the dictionaries of the store that index it (measured on CPython 3.11).
ENTRY_OVERHEAD = 900


def entry_size(key: str, description: Description) -> int:
    """Approximate bytes an entry holds: its rows, its key, its SQL and parameters.

    The key and the statement are counted in full (a key holds the SQL text
    and the parameter values, so a query with 1,000 ids has a long one), and
    so are the parameter values themselves.
    """
    parameters = sum(
        _STR + len(name) + value_size(value) for name, value in description.parameters.items()
    )
    text = 2 * _STR + len(key) + len(description.statement)
    return ENTRY_OVERHEAD + description.size + text + parameters


_STR = 49


def value_size(value: object) -> int:
    """A cheap estimate of the memory ``value`` holds (numbers, strings, tuples, lists)."""
    kind = type(value)
    if kind is str:
        return _STR + len(value)  # type: ignore[arg-type]
    if isinstance(value, tuple | list):
        return 56 + sum(8 + value_size(item) for item in value)
    return 32


class SessionStore:
    """The entries of one session's cache, in least-recently-used order.

    Not thread-safe by design: a session, and so its store, is used by one
    call at a time (the registry serialises calls per session).
    """

    def __init__(
        self,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        on_removal: RemovalListener | None = None,
        on_size: SizeListener | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.on_removal = on_removal
        self.on_size = on_size
        self._lru: OrderedDict[str, Entry] = OrderedDict()
        self._by_seq: SortedDict = SortedDict()
        self._next_seq = 1
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    # -- dogpile's side -----------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, counted as a hit (hits, last access, recency)."""
        entry = self._lru.get(key)
        if entry is not None:
            entry.hits += 1
            entry.last_access = time.time()
            self._lru.move_to_end(key)
        return entry

    def put(self, key: str, value: CachedValue, region: str) -> Entry:
        """Store ``value`` under ``key`` (replacing any entry), then apply the limits."""
        self.delete(key)
        describe = getattr(value.payload, "describe", None)
        description = describe() if describe is not None else Description()
        stored_at = value.metadata.get("ct", time.time()) if value.metadata else time.time()
        expires_at = (
            stored_at + description.expiration_time
            if description.expiration_time is not None and description.expiration_time >= 0
            else None
        )
        entry = Entry(
            key=key,
            region=region,
            value=value,
            seq=self._next_seq,
            stored_at=stored_at,
            expires_at=expires_at,
            description=description,
            last_access=stored_at,
            size=entry_size(key, description),
        )
        self._next_seq += 1
        self._lru[key] = entry
        self._by_seq[entry.seq] = entry
        self.bytes += entry.size
        if self.on_size is not None:
            self.on_size(1, entry.size)
        self._enforce_limits(keep=entry)
        return entry

    def grow(self, entry: Entry, size: int) -> None:
        """Count ``size`` more bytes for ``entry`` (say, a rendering kept with it), then
        apply the limits."""
        if self._lru.get(entry.key) is not entry:
            return
        entry.size += size
        self.bytes += size
        if self.on_size is not None:
            self.on_size(0, size)
        self._enforce_limits(keep=entry)

    def delete(self, key: str) -> Entry | None:
        """Remove and return the entry for ``key``, if any."""
        entry = self._lru.pop(key, None)
        if entry is not None:
            del self._by_seq[entry.seq]
            self.bytes -= entry.size
            if self.on_size is not None:
                self.on_size(-1, -entry.size)
        return entry

    # -- inspection and upkeep ------------------------------------------------

    def peek(self, key: str) -> Entry | None:
        """The entry for ``key`` without counting it as an access."""
        return self._lru.get(key)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __iter__(self) -> Iterator[Entry]:
        """Entries in the order they were stored, oldest first."""
        return iter(self._by_seq.values())

    def page(self, *, after_seq: int = 0, limit: int) -> list[Entry]:
        """Up to ``limit`` entries stored after sequence number ``after_seq``, oldest first.

        Costs O(log n + limit), whatever the position of the page.
        """
        keys = self._by_seq.irange(minimum=after_seq, inclusive=(False, True))
        page: list[Entry] = []
        for seq in keys:
            if len(page) == limit:
                break
            page.append(self._by_seq[seq])
        return page

    def clear(self) -> list[Entry]:
        """Remove every entry; return them."""
        removed = list(self._by_seq.values())
        if self.on_size is not None and removed:
            self.on_size(-len(removed), -self.bytes)
        self._lru.clear()
        self._by_seq.clear()
        self.bytes = 0
        return removed

    def expire(self, now: float | None = None) -> list[Entry]:
        """Remove every entry whose expiry time has passed; return them."""
        now = time.time() if now is None else now
        expired = [
            e for e in self._lru.values() if e.expires_at is not None and e.expires_at <= now
        ]
        for entry in expired:
            self.delete(entry.key)
            self.expirations += 1
            self._removed(entry, "expired")
        return expired

    def _enforce_limits(self, *, keep: Entry) -> None:
        while self._lru and (
            (self.max_entries is not None and len(self._lru) > self.max_entries)
            or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            oldest = next(iter(self._lru.values()))
            if oldest is keep:
                # A single entry larger than the whole budget is still kept:
                # the call that stored it is about to use it.
                break
            self.delete(oldest.key)
            self.evictions += 1
            self._removed(oldest, "evicted")

    def _removed(self, entry: Entry, reason: str) -> None:
        log.debug("cache entry %s %s (region %s)", entry.digest, reason, entry.region)
        if self.on_removal is not None:
            self.on_removal(entry, reason)


class _NoLock(CacheMutex):
    """A mutex that is always free: see :meth:`SessionLocalBackend.get_mutex`."""

    def acquire(self, wait: bool = True) -> bool:
        return True

    def release(self) -> None:
        return None

    def locked(self) -> bool:
        return False


_NO_LOCK = _NoLock()


def store_for(session: Session, *, create: bool = True) -> SessionStore | None:
    """The :class:`SessionStore` kept in ``session.info`` (made on first use)."""
    store = session.info.get(STORE_INFO_KEY)
    if store is None and create:
        store = session.info[STORE_INFO_KEY] = SessionStore()
    return store


class SessionLocalBackend(CacheBackend):
    """A dogpile.cache backend storing values on the current ORM Session.

    Arguments (the ``arguments`` dictionary of ``region.configure``):

    ``scoped_session`` (required)
        A callable returning the current :class:`~sqlalchemy.orm.Session`,
        typically a :class:`~sqlalchemy.orm.scoped_session`. Each call of the
        backend works on the store of the session it returns.
    ``region_name`` (optional, default ``"local_session"``)
        The region name recorded on each entry, shown by inspection.

    The backend stores values unserialized, so a cached ORM result holds the
    session's own objects. :attr:`holds_session_objects` tells the caching
    hook that merging a hit back into the session is unnecessary.
    """

    #: Values read from this backend are already objects of the current session.
    holds_session_objects = True

    def get_mutex(self, key: str) -> CacheMutex:
        """No cross-session lock: each session has its own store, and a session
        is used by one call at a time, so two sessions missing the same key
        never wait for each other (dogpile's default lock is per region)."""
        return _NO_LOCK

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.scoped_session: Callable[[], Session] = arguments["scoped_session"]
        self.region_name: str = arguments.get("region_name", "local_session")

    def store(self) -> SessionStore:
        """The store of the current session."""
        store = store_for(self.scoped_session())
        assert store is not None
        return store

    def get(self, key: str) -> CachedValue | NoValue:
        entry = self.store().get(key)
        return NO_VALUE if entry is None else entry.value

    def get_multi(self, keys: Iterable[str]) -> list[CachedValue | NoValue]:
        store = self.store()
        found = (store.get(key) for key in keys)
        return [NO_VALUE if entry is None else entry.value for entry in found]

    def set(self, key: str, value: CachedValue | bytes) -> None:
        self.store().put(key, _unserialized(value), self.region_name)

    def set_multi(self, mapping: Mapping[str, CachedValue | bytes]) -> None:
        store = self.store()
        for key, value in mapping.items():
            store.put(key, _unserialized(value), self.region_name)

    def delete(self, key: str) -> None:
        self.store().delete(key)

    def delete_multi(self, keys: Iterable[str]) -> None:
        store = self.store()
        for key in keys:
            store.delete(key)


def _unserialized(value: CachedValue | bytes) -> CachedValue:
    if isinstance(value, bytes):
        raise TypeError(
            "the session-local backend stores values unserialized; "
            "configure its region without a serializer"
        )
    return value


@dataclass(frozen=True, slots=True)
class _Pickled:
    """A pickled payload that still describes itself."""

    data: bytes
    description: Description

    def describe(self) -> Description:
        return self.description


class SharedMemoryBackend(CacheBackend):
    """An in-process backend shared by every session: pickled, bounded, expiring.

    Like ``dogpile.cache.memory_pickle``, values are stored pickled, so what
    a reader gets is a snapshot, never objects another session (or thread)
    is using. Unlike it, entries whose expiry has passed are dropped by
    :meth:`sweep` (the server calls it periodically) instead of being kept
    forever, the store can be bounded, and entries can be inspected like a
    session's (:attr:`store`).

    Arguments:

    ``region_name`` (optional, default ``"default"``)
        The region name recorded on each entry.
    ``max_entries`` / ``max_bytes`` (optional, default unbounded)
        Least recently used entries are evicted beyond these.
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.region_name: str = arguments.get("region_name", "default")
        self.store = SessionStore(
            max_entries=arguments.get("max_entries"), max_bytes=arguments.get("max_bytes")
        )
        self.lock = threading.Lock()

    def get(self, key: str) -> CachedValue | NoValue:
        with self.lock:
            entry = self.store.get(key)
        if entry is None:
            return NO_VALUE
        pickled = entry.value.payload
        return CachedValue(pickle.loads(pickled.data), entry.value.metadata)  # noqa: S301

    def get_multi(self, keys: Iterable[str]) -> list[CachedValue | NoValue]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: CachedValue | bytes) -> None:
        value = _unserialized(value)
        payload = value.payload
        describe = getattr(payload, "describe", None)
        description = describe() if describe is not None else Description()
        description = replace(
            description, size=len(data := pickle.dumps(payload, pickle.HIGHEST_PROTOCOL))
        )
        with self.lock:
            self.store.put(
                key, CachedValue(_Pickled(data, description), value.metadata), self.region_name
            )

    def set_multi(self, mapping: Mapping[str, CachedValue | bytes]) -> None:
        for key, value in mapping.items():
            self.set(key, value)

    def delete(self, key: str) -> None:
        with self.lock:
            self.store.delete(key)

    def delete_multi(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def sweep(self, now: float | None = None) -> list[Entry]:
        """Drop expired entries; return them."""
        with self.lock:
            return self.store.expire(now)

    def entries(self) -> list[Entry]:
        """A snapshot of the entries, oldest first."""
        with self.lock:
            return list(self.store)
