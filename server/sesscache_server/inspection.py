"""What the server knows about its caches: counters, events, and their messages.

:class:`Inspector` is the registry's observer (evictions, expiries, ended
sessions) and the servicer's record keeper (hits, misses, stores,
invalidations, SQL emitted and saved): it keeps the server-wide
:class:`~sesscache.stats.Counters` and publishes every event on the
:class:`~sesscache.events.EventBus` that ``WatchCacheEvents`` reads. Per
session counters live on each :class:`~sesscache.registry.SessionState`.
It also counts the times each limit was hit (:meth:`Inspector.limit_hit`).

The ``*_message`` functions turn entries, counters, sessions and events into
their protobuf messages. Reading an entry for inspection is never an access.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from sesscache.caching import CachedResult
from sesscache.events import REMOVAL_EVENTS, Event, EventBus, EventType
from sesscache.freshness import FreshnessStats
from sesscache.registry import EndReason, ScopeKey, SessionRegistry, SessionState
from sesscache.stats import FIELDS, REMOVAL_COUNTERS, Counters, Snapshot
from sesscache.store import Entry, Miss, MissReason, Removal, SessionStore, digest_of
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.calls import Label

#: The wire value of each event type: ``CACHE_EVENT_TYPE_<NAME>``, by name.
EVENT_TYPES: Mapping[EventType, pb.CacheEventType.ValueType] = {
    kind: pb.CacheEventType.Value(f"CACHE_EVENT_TYPE_{kind.name}") for kind in EventType
}
EVENT_TYPES_BY_VALUE = {value: key for key, value in EVENT_TYPES.items()}


class Inspector:
    """Server-wide counters and the event bus; the registry's observer.

    The servicer's records (:meth:`hit`, :meth:`miss`, ...) are made on the
    event loop; the registry's (evictions, expiries) may come from worker
    threads, so those take the counters' lock.
    """

    def __init__(self, *, label: Label | None = None) -> None:
        self._label: Label = label or (lambda key: key[1])
        self.counters = Counters()
        self.events = EventBus()
        #: Times each limit was hit, by the limit's setting name (e.g.
        #: "max_watchers"): calls refused, pages cut short.
        self.limits_hit: collections.Counter[str] = collections.Counter()
        self._limits_lock = threading.Lock()

    # -- RegistryObserver ----------------------------------------------------

    def entry_removed(self, key: ScopeKey, entry: Entry, removal: Removal) -> None:
        reason = removal.reason
        counter, kind = REMOVAL_COUNTERS[reason], REMOVAL_EVENTS[reason]
        if counter is not None:
            self.counters.add(**{counter: 1})
        if kind is not None:
            self.events.publish(
                kind,
                key,
                region=entry.region,
                key=entry.key,
                rows=entry.rows,
                reason=reason.value,
                table=removal.table,
                row_id=removal.row_id,
                change_id=removal.change,
            )

    def session_ended(self, state: SessionState, reason: EndReason, keys_dropped: int) -> None:
        self.events.publish(EventType.SESSION_END, state.key, rows=keys_dropped)

    # -- the servicer's records ------------------------------------------------

    def hit(self, state: SessionState, region: str, key: str, rows: int, saved: int) -> None:
        # Hits are only counted on the event loop: no lock needed for these.
        for counters in (state.counters, state.principal_counters, self.counters):
            if counters is not None:
                counters.hits += 1
                counters.sql_statements_saved += saved
        if self.events.active:
            self.events.publish(EventType.HIT, state.key, region=region, key=key, rows=rows)

    def miss(self, state: SessionState, region: str, key: str, rows: int, sql: int) -> None:
        for counters in (state.counters, state.principal_counters, self.counters):
            if counters is not None:
                counters.add(misses=1, stores=1, sql_statements=sql)
        if self.events.active:
            self.events.publish(EventType.MISS, state.key, region=region, key=key, rows=rows)
            self.events.publish(EventType.STORE, state.key, region=region, key=key, rows=rows)

    def bypass(self, state: SessionState, sql: int) -> None:
        for counters in (state.counters, state.principal_counters, self.counters):
            if counters is not None:
                counters.add(sql_statements=sql)

    def limit_hit(self, name: str) -> None:
        """Count one hit of the limit set by setting ``name`` (from any thread)."""
        with self._limits_lock:
            self.limits_hit[name] += 1

    def label(self, key: ScopeKey) -> str:
        """How a session appears to inspection: its id, or a keyed hash with auth on."""
        return self._label(key)


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def entry_message(entry: Entry, *, live_objects: int = 0) -> pb.CacheEntry:
    """The CacheEntry message for a store entry (reading it is not an access)."""
    description = entry.description
    message = pb.CacheEntry(
        key=entry.key,
        digest=entry.digest,
        region=entry.region,
        stored_at=timestamp(entry.stored_at),
        last_access=timestamp(entry.last_access),
        rows=description.rows,
        statement=description.statement,
        parameters={name: repr(value) for name, value in description.parameters.items()},
        entity=description.entity,
        hits=entry.hits,
        size_bytes=entry.size,
        live_objects=live_objects,
        sql_statements=(
            entry.payload.sql_statements if isinstance(entry.payload, CachedResult) else 0
        ),
        fresh_as_of=entry.fresh_as_of,
    )
    expires_in = entry.expires_in()
    if expires_in is None:
        message.no_expiry = True
    else:
        message.expires_in.FromNanoseconds(int(max(expires_in, 0.0) * 1e9))
    return message


#: The wire value of each miss reason: ``MISS_REASON_<NAME>``, by name.
MISS_REASONS: Mapping[MissReason, pb.MissReason.ValueType] = {
    reason: pb.MissReason.Value(f"MISS_REASON_{reason.name}") for reason in MissReason
}


def miss_message(miss: Miss) -> pb.MissInfo:
    """The MissInfo message for a store's answer to a lookup that missed."""
    message = pb.MissInfo(reason=MISS_REASONS[miss.reason])
    removal = miss.removal
    if removal is not None:
        message.removed.CopyFrom(timestamp(removal.at))
        message.change_id = removal.change
        message.detail = removal.detail
    return message


def stats_message(
    counters: Snapshot,
    *,
    entries: int,
    size_bytes: int,
    sessions: int = 0,
    ended: int = 0,
    evicted: int = 0,
    expired: int = 0,
    limits_hit: Mapping[str, int] | None = None,
) -> pb.CacheStats:
    return pb.CacheStats(
        limits_hit=limits_hit,
        **{name: getattr(counters, name) for name in FIELDS},
        hit_ratio=counters.hit_ratio,
        entries=entries,
        size_bytes=size_bytes,
        sessions=sessions,
        sessions_ended=ended,
        sessions_evicted=evicted,
        sessions_expired=expired,
        since=timestamp(counters.since),
    )


def feed_message(stats: FreshnessStats) -> pb.FeedStats:
    """The FeedStats message of a server's change feed."""
    lag = stats.lag
    return pb.FeedStats(
        position=stats.position,
        head=stats.head,
        invalidations=stats.invalidations,
        gaps=stats.gaps,
        lag_p50_ms=(lag.p50 or 0.0) * 1000.0,
        lag_p99_ms=(lag.p99 or 0.0) * 1000.0,
        changes=stats.changes,
        connected=stats.connected,
    )


def session_message(
    state: SessionState, store: SessionStore | None, inspector: Inspector
) -> pb.SessionInfo:
    counters = state.counters.snapshot()
    return pb.SessionInfo(
        id=inspector.label(state.key),
        handle=state.handle,
        peer=state.peer,
        created=timestamp(state.created),
        last_active=timestamp(state.last_active),
        entries=len(store) if store is not None else 0,
        size_bytes=store.bytes if store is not None else 0,
        hits=counters.hits,
        misses=counters.misses,
        calls_in_flight=state.users,
    )


def event_message(event: Event, lost: int, inspector: Inspector) -> pb.CacheEvent:
    return pb.CacheEvent(
        type=EVENT_TYPES[event.type],
        time=timestamp(event.time or time.time()),
        session=inspector.label(event.session),
        region=event.region,
        key=event.key,
        digest=_digest(event.key),
        rows=event.rows,
        lost=lost,
        reason=event.reason,
        table=event.table,
        row_id=event.row_id,
        change_id=event.change_id,
    )


def _digest(key: str) -> str:
    return digest_of(key) if key else ""


def limits_hit(registry: SessionRegistry, inspector: Inspector) -> dict[str, int]:
    """Times each limit was hit server-wide, by setting name (the registry's and the
    inspector's counts together)."""
    return dict(registry.limits_hit + inspector.limits_hit)


def server_totals(registry: SessionRegistry) -> tuple[int, int]:
    """(entries, approximate bytes) across every live session: O(1), kept as they change."""
    return registry.entries, registry.bytes
