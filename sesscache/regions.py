"""The two cache regions sesscache uses, and the relationship options for them.

``local_session``
    The session-local region (:class:`sesscache.backend.SessionLocalBackend`):
    query results cached on the caller's own Session.
``default``
    A region shared by every session, in memory by default, or any
    dogpile.cache backend by configuration (for instance
    ``dogpile.cache.redis`` so several server processes share it). The lazy
    loads of an address's postal code, its city and the city's country are
    cached here (:data:`ADDRESS_BITS`), as the dogpile_caching example's
    ``cache_address_bits`` does. Its values are always serialized (in memory:
    :class:`sesscache.backend.SharedMemoryBackend`): a shared entry must be a snapshot, not
    live objects of the session that stored it, which that session may
    expire or change, and which other threads must not touch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dogpile.cache import make_region
from dogpile.cache.api import CachedValue
from dogpile.cache.backends.redis import RedisBackend
from dogpile.cache.region import CacheRegion
from sqlalchemy.orm import Session

from sesscache.backend import (
    BACKEND_NAME,
    SHARED_BACKEND_NAME,
    SharedMemoryBackend,
    register_backend,
)
from sesscache.caching import RelationshipCache
from sesscache.models import Address, City, PostalCode
from sesscache.store import Description, Entry, RemovalReason

LOCAL_REGION = "local_session"
SHARED_REGION = "default"

#: Cache the lazy loads of postal code, city and country in the shared region.
ADDRESS_BITS = (
    RelationshipCache(Address.postal_code, SHARED_REGION)
    .and_(RelationshipCache(PostalCode.city, SHARED_REGION))
    .and_(RelationshipCache(City.country, SHARED_REGION))
)


@dataclass(frozen=True, slots=True)
class RegionSettings:
    """How to configure the regions.

    ``local_expiration``: seconds a session-local entry stays fresh (None:
    no expiry). ``shared_backend`` / ``shared_arguments``: the dogpile.cache
    backend name and arguments of the ``default`` region.
    ``shared_expiration``: seconds a shared entry stays fresh (None: none).
    """

    local_expiration: float | None = None
    shared_backend: str = "sesscache.memory"
    shared_arguments: Mapping[str, Any] = field(default_factory=dict)
    shared_expiration: float | None = 3600.0


def make_regions(
    current_session: Callable[[], Session], settings: RegionSettings | None = None
) -> dict[str, CacheRegion]:
    """Configure the ``local_session`` and ``default`` regions."""
    settings = settings or RegionSettings()
    register_backend()
    local = make_region(name=LOCAL_REGION).configure(
        BACKEND_NAME,
        expiration_time=settings.local_expiration,
        arguments={"scoped_session": current_session, "region_name": LOCAL_REGION},
    )
    in_process = settings.shared_backend == SHARED_BACKEND_NAME
    shared = make_region(
        name=SHARED_REGION, key_mangler=None if in_process else shared_key
    ).configure(
        settings.shared_backend,
        expiration_time=settings.shared_expiration,
        arguments=dict(settings.shared_arguments),
    )
    return {LOCAL_REGION: local, SHARED_REGION: shared}


#: Prefix of the shared region's keys in an external store (Redis, memcached).
SHARED_KEY_PREFIX = "sesscache:default:"


def shared_key(key: str) -> str:
    """The shared region's key in an external store: prefixed, fixed length."""
    return SHARED_KEY_PREFIX + hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()


def shared_entries(region: CacheRegion) -> list[Entry]:
    """The entries of the shared region, oldest first, read without counting as access.

    In memory, every entry with its metadata; in Redis, each key under
    :data:`SHARED_KEY_PREFIX` with its size (the rest of an entry's metadata
    is not kept there); other backends cannot be listed: none.
    """
    backend = region.backend
    if isinstance(backend, SharedMemoryBackend):
        return backend.entries()
    if not isinstance(backend, RedisBackend):
        return []
    client = backend.writer_client
    keys = sorted(k.decode() for k in client.scan_iter(match=SHARED_KEY_PREFIX + "*", count=500))
    if not keys:
        return []
    with client.pipeline(transaction=False) as pipeline:
        for key in keys:
            pipeline.strlen(key)
        sizes = pipeline.execute()
    return [
        Entry(
            key=key,
            region=SHARED_REGION,
            value=CachedValue(None, {}),
            seq=0,  # not kept in Redis: listings order these by key
            stored_at=0.0,
            expires_at=None,
            description=Description(size=int(size)),
            last_access=0.0,
            size=int(size),
        )
        for key, size in zip(keys, sizes, strict=True)
    ]


def clear_shared(region: CacheRegion) -> list[Entry] | list[str]:
    """Remove every entry of the shared region; return them (external stores: their keys)."""
    backend = region.backend
    if isinstance(backend, SharedMemoryBackend):
        with backend.lock:
            return backend.store.clear(RemovalReason.INVALIDATED)
    if isinstance(backend, RedisBackend):
        client = backend.writer_client
        keys = [k.decode() for k in client.scan_iter(match=SHARED_KEY_PREFIX + "*", count=500)]
        if keys:
            client.delete(*keys)
        return keys
    region.invalidate(hard=True)  # type: ignore[no-untyped-call]
    return []
