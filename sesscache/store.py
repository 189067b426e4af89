"""A session's cache: its entries, lookup, store, limits, and why entries leave.

A :class:`SessionStore` holds the entries of one session's cache (and, in
the shared memory backend, of the shared region) in least-recently-used
order. It is the one place where:

- a lookup is decided: :meth:`SessionStore.lookup` returns a :class:`Hit`
  (counted on the entry) or a :class:`Miss` carrying its :class:`MissReason`,
  expiry included;
- an entry is stored (:meth:`SessionStore.put`), sized (:func:`entry_size`,
  :meth:`SessionStore.grow` for what is kept with it) and limited
  (``max_entries``, ``max_bytes``: the least recently used entries go);
- an entry leaves, always with a :class:`RemovalReason` (:meth:`SessionStore.remove`),
  told to ``on_removal`` and kept in a small bounded record of recent
  removals, so a later miss of the same key says why.

Not thread-safe by design: a session, and so its store, is used by one call
at a time (the registry serialises calls per session); the shared memory
backend locks around it.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dogpile.cache.api import CachedValue

log = logging.getLogger(__name__)


class RemovalReason(enum.Enum):
    """Why an entry left a cache: every way out, listed once."""

    #: A limit (entries or bytes per session) made room for newer entries.
    EVICTED = "evicted"
    #: Its expiry time passed.
    EXPIRED = "expired"
    #: A client asked (``Invalidate``, or a library user's delete).
    INVALIDATED = "invalidated"
    #: A committed change in the database could alter its result.
    CHANGED = "change"
    #: The call that stored it failed, so it was taken back.
    FAILED = "failed"
    #: Its session ended (every entry goes with it).
    SESSION_ENDED = "session_end"


class MissReason(enum.Enum):
    """Why a lookup missed: never stored, or how the entry left (by name)."""

    #: Nothing was ever stored in this session.
    NEW_SESSION = "new_session"
    #: This session never stored this key (or its removal is no longer recorded).
    NEVER_STORED = "never_stored"
    EVICTED = "evicted"
    EXPIRED = "expired"
    INVALIDATED = "invalidated"
    CHANGED = "change"
    FAILED = "failed"
    SESSION_ENDED = "session_end"


#: The miss reason a removal leaves behind (same names, by construction).
MISS_REASON_OF: Mapping[RemovalReason, MissReason] = {
    reason: MissReason[reason.name] for reason in RemovalReason
}


#: Characters of a key's digest.
DIGEST_LENGTH = 12


def digest_of(key: str) -> str:
    """The short, stable digest of a cache key (12 hex characters)."""
    return hashlib.blake2b(key.encode(), digest_size=DIGEST_LENGTH // 2).hexdigest()


@dataclass(frozen=True, slots=True)
class Description:
    """What a cached payload says about itself, for inspection and limits."""

    rows: int = 0
    statement: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    entity: str = ""
    size: int = 0
    expiration_time: float | None = None


@runtime_checkable
class Describable(Protocol):
    """A payload that describes itself (see :class:`sesscache.caching.CachedResult`)."""

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
    #: The change-log position the entry is current as of (0: not followed).
    fresh_as_of: int = 0

    @property
    def digest(self) -> str:
        return digest_of(self.key)

    @property
    def rows(self) -> int:
        return self.description.rows

    @property
    def payload(self) -> Any:
        return self.value.payload

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until expiry (negative once expired), None if never."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Removal:
    """How and when an entry left: ``change`` is the change-log position that
    caused it (reason CHANGED), ``detail`` a short note (table and row, say)."""

    reason: RemovalReason
    at: float
    change: int = 0
    detail: str = ""
    #: The changed row (reason CHANGED by one change): its table and id.
    table: str = ""
    row_id: int = 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A lookup that found a live entry (counted on it)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Miss:
    """A lookup that found nothing, and why; ``removal`` when the key was stored
    here before and its leaving is still on record."""

    reason: MissReason
    removal: Removal | None = None


#: What :meth:`SessionStore.lookup` returns.
Found = Hit | Miss

#: Called with (entry, how it left) whenever an entry leaves the store.
RemovalListener = Callable[[Entry, Removal], None]

#: Called with (entries added, bytes added) whenever the store's totals change
#: (negative when entries leave), so a registry can total every store in O(1).
SizeListener = Callable[[int, int], None]

#: What an entry costs beyond its rows: the Entry, its CachedValue and metadata,
#: the dictionaries of the store that index it (measured on CPython 3.11).
ENTRY_OVERHEAD = 900

#: Removals a store remembers (by key digest) to explain later misses, and
#: the bytes one of them holds (digest, record, its slot; tracemalloc).
REMOVALS_KEPT = 32
REMOVAL_SIZE = 240

_STR = 49

_NO_REMOVALS: Mapping[str, Removal] = {}


def entry_size(key: str, description: Description) -> int:
    """Approximate bytes an entry holds: its rows, its key, its SQL and parameters.

    The key and the statement are counted in full, and so are the parameter
    values themselves (a query with 1,000 ids has long ones).
    """
    parameters = sum(
        _STR + len(name) + value_size(value) for name, value in description.parameters.items()
    )
    text = 2 * _STR + len(key) + len(description.statement)
    return ENTRY_OVERHEAD + description.size + text + parameters


def value_size(value: object) -> int:
    """A cheap estimate of the memory ``value`` holds (numbers, strings, tuples, lists)."""
    kind = type(value)
    if kind is str:
        return _STR + len(value)  # type: ignore[arg-type]
    if isinstance(value, tuple | list):
        return 56 + sum(8 + value_size(item) for item in value)
    return 32


class SessionStore:
    """The entries of one cache, in least-recently-used order (see the module)."""

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
        #: The same entries by sequence number: in the order they were stored.
        self._by_seq: dict[int, Entry] = {}
        self._next_seq = 1
        # Recent removals by key digest, oldest first (at most REMOVALS_KEPT);
        # made on the first removal (most sessions never have one).
        self._removals: OrderedDict[str, Removal] | None = None
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    # -- lookup and store ---------------------------------------------------

    def lookup(
        self, key: str, *, now: float | None = None, count: bool = True, expire: bool = True
    ) -> Found:
        """The live entry for ``key`` as a :class:`Hit` (counted: hits, last access,
        recency; not with ``count`` False), else a :class:`Miss` saying why.

        An expired entry is removed here, unless ``expire`` is False (dogpile's
        side: a region decides expiry itself, and may serve a stale value)."""
        entry = self._lru.get(key)
        if entry is not None:
            now = time.time() if now is None else now
            live = entry.expires_at is None or entry.expires_at > now
            if live or not expire:
                if count and live:  # a stale value served on request is no hit
                    entry.hits += 1
                    entry.last_access = now
                    self._lru.move_to_end(key)
                return Hit(entry)
            self.remove(key, RemovalReason.EXPIRED)
        return self.why_missing(key)

    def why_missing(self, key: str) -> Miss:
        """Why ``key`` is not here: its recorded removal, or never stored."""
        removal = self.removals.get(digest_of(key))
        if removal is not None:
            return Miss(MISS_REASON_OF[removal.reason], removal)
        return Miss(MissReason.NEW_SESSION if self._next_seq == 1 else MissReason.NEVER_STORED)

    def put(self, key: str, value: CachedValue, region: str) -> Entry:
        """Store ``value`` under ``key`` (replacing any entry), then apply the limits."""
        old = self._drop(key)
        if old is not None and old.expires_at is not None and old.expires_at <= time.time():
            self._removed(old, Removal(RemovalReason.EXPIRED, old.expires_at))
        payload = value.payload
        description = payload.describe() if isinstance(payload, Describable) else Description()
        stored_at = value.metadata.get("ct", time.time()) if value.metadata else time.time()
        expiry = description.expiration_time
        entry = Entry(
            key=key,
            region=region,
            value=value,
            seq=self._next_seq,
            stored_at=stored_at,
            expires_at=stored_at + expiry if expiry is not None and expiry >= 0 else None,
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

    # -- removal --------------------------------------------------------------

    def remove(
        self,
        key: str,
        reason: RemovalReason,
        *,
        change: int = 0,
        detail: str = "",
        table: str = "",
        row_id: int = 0,
    ) -> Entry | None:
        """Remove the entry for ``key`` for ``reason``; return it (None if absent)."""
        entry = self._drop(key)
        if entry is not None:
            self._removed(entry, Removal(reason, time.time(), change, detail, table, row_id))
        return entry

    @property
    def removals(self) -> Mapping[str, Removal]:
        """Recent removals by key digest, oldest first (at most :data:`REMOVALS_KEPT`)."""
        return self._removals if self._removals is not None else _NO_REMOVALS

    @property
    def removals_size(self) -> int:
        """Bytes the record of removals holds (see :data:`REMOVAL_SIZE`)."""
        return len(self.removals) * REMOVAL_SIZE

    def detach(self) -> None:
        """Take everything this store holds off its listener's totals at once (its
        session ended; the store itself is freed later, wherever it is closed)."""
        if self.on_size is not None:
            self.on_size(-len(self._lru), -(self.bytes + self.removals_size))
        self.on_size = None
        self.on_removal = None

    def clear(self, reason: RemovalReason, *, detail: str = "") -> list[Entry]:
        """Remove every entry for ``reason``; return them, oldest first.

        Each is told to ``on_removal`` and recorded, except when the session
        ends (``SESSION_ENDED``: the registry tells that once, for the session)."""
        removed = list(self._by_seq.values())
        if self.on_size is not None and removed:
            self.on_size(-len(removed), -self.bytes)
        self._lru.clear()
        self._by_seq.clear()
        self.bytes = 0
        if reason is not RemovalReason.SESSION_ENDED:
            removal = Removal(reason, time.time(), detail=detail)
            for entry in removed:
                self._removed(entry, removal)
        return removed

    def expire(self, now: float | None = None) -> list[Entry]:
        """Remove every entry whose expiry time has passed; return them."""
        now = time.time() if now is None else now
        expired = [
            e for e in self._lru.values() if e.expires_at is not None and e.expires_at <= now
        ]
        for entry in expired:
            self.remove(entry.key, RemovalReason.EXPIRED)
        return expired

    def _drop(self, key: str) -> Entry | None:
        entry = self._lru.pop(key, None)
        if entry is not None:
            del self._by_seq[entry.seq]
            self.bytes -= entry.size
            if self.on_size is not None:
                self.on_size(-1, -entry.size)
        return entry

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
            self.remove(oldest.key, RemovalReason.EVICTED)

    def _removed(self, entry: Entry, removal: Removal) -> None:
        if removal.reason is RemovalReason.EVICTED:
            self.evictions += 1
        elif removal.reason is RemovalReason.EXPIRED:
            self.expirations += 1
        removals = self._removals
        if removals is None:
            removals = self._removals = OrderedDict()
        known = len(removals)
        removals[entry.digest] = removal
        removals.move_to_end(entry.digest)
        if len(removals) > REMOVALS_KEPT:
            removals.popitem(last=False)
        if len(removals) != known and self.on_size is not None:
            # Counted in the totals (and so in the server's byte limit), not in
            # the session's own budget: they never evict an entry.
            self.on_size(0, REMOVAL_SIZE)
        log.debug("cache entry %s %s (region %s)", entry.digest, removal.reason.value, entry.region)
        if self.on_removal is not None:
            self.on_removal(entry, removal)

    # -- inspection -------------------------------------------------------------

    def peek(self, key: str) -> Entry | None:
        """The entry for ``key`` without counting it as an access (expired or not)."""
        return self._lru.get(key)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __iter__(self) -> Iterator[Entry]:
        """Entries in the order they were stored, oldest first."""
        return iter(self._by_seq.values())
