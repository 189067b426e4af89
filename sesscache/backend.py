"""The session-local dogpile.cache backend, and the store it keeps on a Session.

:class:`SessionLocalBackend` is a dogpile.cache backend whose storage is a
:class:`SessionStore` kept in the *current* ORM Session's ``Session.info``
dictionary. "Current" is whatever the ``scoped_session`` argument returns:
in sesscache that is the session of the gRPC caller (see
:mod:`sesscache.registry`). Values are stored as they are, never serialized,
so the ORM objects of a cached result are the very objects of the session's
identity map; and when the session is removed, its store goes with it.

The store itself (:class:`sesscache.store.SessionStore`: lookup, limits,
removal reasons, inspection) is the cache core; the backends here are the
thin dogpile.cache side of it.

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

import logging
import pickle
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from dogpile.cache import register_backend as _dogpile_register_backend
from dogpile.cache.api import NO_VALUE, CacheBackend, CachedValue, CacheMutex, NoValue
from sqlalchemy.orm import Session

from sesscache.store import (
    Describable,
    Description,
    Entry,
    Hit,
    RemovalReason,
    SessionStore,
)

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
    session's own objects (the caching hook, seeing this backend, neither
    merges a hit into the session nor goes through the region: it uses
    :meth:`store` directly).
    """

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
        # dogpile decides expiry (and may serve a stale value on request).
        found = self.store().lookup(key, expire=False)
        return found.entry.value if isinstance(found, Hit) else NO_VALUE

    def get_multi(self, keys: Iterable[str]) -> list[CachedValue | NoValue]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: CachedValue | bytes) -> None:
        self.store().put(key, _unserialized(value), self.region_name)

    def set_multi(self, mapping: Mapping[str, CachedValue | bytes]) -> None:
        store = self.store()
        for key, value in mapping.items():
            store.put(key, _unserialized(value), self.region_name)

    def delete(self, key: str) -> None:
        self.store().remove(key, RemovalReason.INVALIDATED)

    def delete_multi(self, keys: Iterable[str]) -> None:
        store = self.store()
        for key in keys:
            store.remove(key, RemovalReason.INVALIDATED)


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
            found = self.store.lookup(key, expire=False)
        if not isinstance(found, Hit):
            return NO_VALUE
        entry = found.entry
        pickled = entry.value.payload
        return CachedValue(pickle.loads(pickled.data), entry.value.metadata)  # noqa: S301

    def get_multi(self, keys: Iterable[str]) -> list[CachedValue | NoValue]:
        return [self.get(key) for key in keys]

    def set(self, key: str, value: CachedValue | bytes) -> None:
        value = _unserialized(value)
        payload = value.payload
        description = payload.describe() if isinstance(payload, Describable) else Description()
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
            self.store.remove(key, RemovalReason.INVALIDATED)

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
