"""Freshness: every committed change, from any writer, applied to every session cache.

One :class:`Freshness` per server process follows the database's change log
(:class:`sesscache.feed.ChangeFollower`, on its own thread) and applies each
change on the event loop (callbacks are handed over with
``loop.call_soon_threadsafe``):

- **The index.** Every live session-cache entry stored by ``QueryPersons`` is
  registered with its :class:`~sesscache.precision.Dependencies`, keyed by
  ``(ScopeKey, cache key)`` in one :class:`~sesscache.precision.DependencyIndex`,
  with a key set per session. Entries leave only through their
  :class:`~sesscache.store.SessionStore`; the registry's observer
  (:meth:`Freshness.entry_removed`, :meth:`Freshness.session_ended`) takes
  them out of the index, whatever the reason. The index is touched from the
  loop and from worker threads (evictions while a call stores): one lock
  guards it, and no store is ever called while it is held.
- **Applying a change.** For each affected ``(session, key)``:
  ``store.remove(key, RemovalReason.CHANGED, change=id, detail="person 10 (update)")``.
  A store is never changed while its session's call lock is held (a worker
  thread may be using it): the removals are queued on the session and
  applied when the call releases it (:meth:`call_ended`, on the loop). A
  reference-table change (postal code, city, country) also expires that
  object in every session's identity map, and clears the shared region (once
  per change across replicas when it is Redis: ``SET NX`` on a claim key).
  Misses read persons and addresses with ``populate_existing``, so a
  session's objects are refreshed by the statement that stores the new entry.
- **The store race.** A call records the applied sequence when its work
  starts (:meth:`call_started`); when it stores an entry (:meth:`stored`),
  every change applied since then that affects the new entry's dependencies
  removes it at once. The recently applied changes are kept in a bounded ring;
  when the ring no longer reaches back to the call's start, or a gap happened
  meanwhile, the new entry is dropped.
- **The writer's own changes.** ``writes.invalidate_after_write`` keeps the
  writing session right (a street change stays a hit, served from the
  session's own objects), so changes made by a session's own transaction
  (:class:`OwnWrite`: its PostgreSQL txid, or on SQLite the id range it wrote
  holding the database's write lock) are skipped for that session only.
- **Gaps.** When the follower cannot account for every change (start,
  retention, connection lost, log reset, consumer error) every session
  cache is cleared (``CHANGED``, detail ``feed gap: <reason>``) and the
  shared region too; counted by reason. While the follower is disconnected
  for longer than ``timeout``, the server vouches for nothing: caches are
  cleared (gap ``disconnected``) and queries bypass the cache (they read the
  database) until the follower is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from sesscache.changes import CHANGE_TABLE, Change, Op
from sesscache.feed import ChangeFollower, FeedGap, FeedSettings, Lag, LagRecorder, Snapshot
from sesscache.models import City, Country, PostalCode
from sesscache.precision import REFERENCE_TABLES, Dependencies, DependencyIndex
from sesscache.registry import EndReason, RegistryObserver, ScopeKey, SessionRegistry, SessionState
from sesscache.store import Entry, Removal, RemovalReason, SessionStore

log = logging.getLogger(__name__)

#: Recently applied changes kept to close the store race.
RING = 4096
#: Own writes a session remembers (older ones have long been applied).
OWN_KEPT = 16
#: Changes queued for a session while one call holds it, at most; beyond, the
#: session's cache is cleared when the call lets go (one item instead).
PENDING_MAX = 10_000
#: The gap reason of a follower disconnected past the freshness timeout.
DISCONNECTED = "disconnected"

_OPS = {Op.INSERT: "insert", Op.UPDATE: "update", Op.DELETE: "delete"}
_REFERENCE_MODELS: dict[str, type[object]] = {
    "postal_code": PostalCode,
    "city": City,
    "country": Country,
}

IndexKey = tuple[ScopeKey, str]


@dataclass(frozen=True, slots=True)
class OwnWrite:
    """The changes one write transaction made: by PostgreSQL ``txid``, or on
    SQLite the ids ``after < id <= through`` (written holding the write lock)."""

    txid: int | None = None
    after: int = 0
    through: int = 0

    def owns(self, change: Change) -> bool:
        if self.txid is not None:
            return change.txid == self.txid
        return self.after < change.id <= self.through


@dataclass(frozen=True, slots=True)
class Seen:
    """What a miss's read could already see: the log's last id before it ran and,
    on PostgreSQL, the snapshot then (ids there are not in commit order). A change
    it covers is already in the entry, so it need not remove it."""

    head: int
    snapshot: Snapshot | None = None

    def covers(self, change: Change) -> bool:
        if change.id > self.head:
            return False
        if self.snapshot is None:
            return True  # SQLite: ids are in commit order
        return change.txid is not None and self.snapshot.finished(change.txid)


def read_seen(session: Session) -> Seen:
    """Read, before a miss's statement, what that statement will see of the log."""
    if session.get_bind().dialect.name == "sqlite":
        head = session.scalar(text(f"SELECT max(id) FROM {CHANGE_TABLE}"))  # noqa: S608
        return Seen(int(head or 0))
    row = session.execute(
        text(f"SELECT (SELECT max(id) FROM {CHANGE_TABLE}), pg_current_snapshot()::text")  # noqa: S608
    ).one()
    return Seen(int(row[0] or 0), Snapshot.parse(str(row[1])))


@dataclass(frozen=True, slots=True)
class _Remove:
    key: str
    change: Change


@dataclass(frozen=True, slots=True)
class _Expire:
    change: Change


@dataclass(frozen=True, slots=True)
class _Clear:
    detail: str


_Pending = _Remove | _Expire | _Clear


@dataclass(eq=False, slots=True)
class SessionFreshness:
    """What :class:`Freshness` keeps on a :class:`SessionState`."""

    pending: list[_Pending] = field(default_factory=list)
    started_seq: int = 0
    started_epoch: int = 0
    own: deque[OwnWrite] = field(default_factory=lambda: deque(maxlen=OWN_KEPT))

    def owns(self, change: Change) -> bool:
        return any(own.owns(change) for own in self.own)


@dataclass(frozen=True, slots=True)
class FreshnessStats:
    """What GetStats shows of the feed."""

    position: int
    head: int
    invalidations: dict[str, int]
    gaps: dict[str, int]
    lag: Lag
    changes: int
    connected: bool


def describe(change: Change) -> str:
    """``"person 10 (update)"``: the detail of a removal by ``change``."""
    return f"{change.table} {change.row_id} ({_OPS.get(change.op, str(change.op))})"


class ObserverPair:
    """Tells two registry observers (the inspector and the freshness index)."""

    def __init__(self, first: RegistryObserver, second: RegistryObserver) -> None:
        self.first = first
        self.second = second

    def entry_removed(self, key: ScopeKey, entry: Entry, removal: Removal) -> None:
        self.first.entry_removed(key, entry, removal)
        self.second.entry_removed(key, entry, removal)

    def session_ended(self, state: SessionState, reason: EndReason, keys_dropped: int) -> None:
        self.first.session_ended(state, reason, keys_dropped)
        self.second.session_ended(state, reason, keys_dropped)


class Freshness:
    """Follows the change log and keeps every session cache of one server right.

    ``clear_shared``: clears the shared region, given the change id (None for
    a gap); it runs in ``executor`` (it may be Redis I/O) and decides itself
    whether this replica acts (see :mod:`sesscache_server.app`).
    """

    def __init__(
        self,
        registry: SessionRegistry,
        url: str | URL,
        *,
        settings: FeedSettings | None = None,
        timeout: float = 5.0,
        clear_shared: Callable[[int | None], object] | None = None,
        executor: Callable[[Callable[[], object]], object] | None = None,
        codepoint_names: bool = True,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self._url = url
        self._settings = settings or FeedSettings()
        self._clear_shared = clear_shared
        self._submit = executor
        self._lock = threading.Lock()
        self._index: DependencyIndex[IndexKey] = DependencyIndex(codepoint_names=codepoint_names)
        self._keys: dict[ScopeKey, set[str]] = {}
        self._seen: dict[IndexKey, Seen] = {}
        self._ring: deque[tuple[int, Change]] = deque(maxlen=RING)
        self._seq = 0
        self._epoch = 0
        #: Every change up to this id has been applied (0 before the first gap).
        self.position = 0
        self.changes_applied = 0
        self.removed: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self._lag = LagRecorder(self._settings.lag_samples)
        #: Whether cached entries may be served (False while the feed is lost too long).
        self.vouching = False
        self._disconnects = 0
        self._handed = 0
        self._applied = 0
        self._handed_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = asyncio.Event()
        self._follower: ChangeFollower | None = None

    # -- life cycle -------------------------------------------------------------------

    async def start(self, wait: float = 10.0) -> None:
        """Start following; return once the first gap (START) is applied, or after ``wait``."""
        self._loop = asyncio.get_running_loop()
        self._follower = ChangeFollower(
            self._url,
            on_changes=self._changes_arrived,
            on_gap=lambda gap: self._hand(self._gap, gap),
            on_disconnect=lambda reason: self._hand(self._disconnected, reason),
            settings=self._settings,
            name="sesscache-freshness",
        )
        self._follower.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), wait)

    async def stop(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            await asyncio.to_thread(follower.close)

    def _hand(self, callback: Callable[..., None], *arguments: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(callback, *arguments)

    def _changes_arrived(self, changes: list[Change]) -> None:
        # Follower thread: the position published so far covers the batches
        # before this one; on SQLite (id order is commit order) this one too.
        follower = self._follower
        position = follower.position if follower is not None else 0
        if changes and changes[0].txid is None:
            position = max(position, *(change.id for change in changes))
        with self._handed_lock:
            self._handed += 1
        self._hand(self._apply, changes, position)

    def refresh_position(self) -> int:
        """Advance :attr:`position` to the follower's when every batch it delivered
        has been applied (on the loop); return it."""
        follower = self._follower
        if follower is None or not self.vouching:
            return self.position
        published = follower.position  # read before the count (see _changes_arrived)
        with self._handed_lock:
            handed = self._handed
        if handed == self._applied:
            self.position = max(self.position, published)
        return self.position

    # -- the calls of a session --------------------------------------------------------

    @staticmethod
    def of(state: SessionState) -> SessionFreshness:
        book = state.freshness
        if book is None:
            book = state.freshness = SessionFreshness()
        return book

    def call_started(self, state: SessionState) -> None:
        """A call holds ``state``'s lock and is about to work (on the loop)."""
        book = self.of(state)
        book.started_seq = self._seq
        book.started_epoch = self._epoch

    def call_ended(self, state: SessionState) -> None:
        """The call is done with the session (its lock still held, on the loop):
        apply what was queued meanwhile."""
        book = state.freshness
        if book is None or not book.pending:
            return
        pending, book.pending = book.pending, []
        store = self.registry.store_of(state)
        for item in pending:
            self._apply_one(state, book, store, item)

    def wrote(self, state: SessionState, own: OwnWrite | None) -> None:
        """A write of ``state``'s session committed the changes ``own`` (on the loop)."""
        if own is not None:
            self.of(state).own.append(own)

    def stored(
        self,
        state: SessionState,
        key: str,
        entry: Entry | None,
        deps: Dependencies,
        seen: Seen | None = None,
    ) -> None:
        """A call of ``state`` stored ``entry`` under ``key`` with ``deps`` (on the loop,
        the call's work done): index it, or remove it at once if a change applied
        since the call started can affect it."""
        if state.ephemeral or entry is None:
            return  # ends with its call
        store = self.registry.store_of(state)
        if store is None or store.peek(key) is not entry:
            return
        book = self.of(state)
        reason = self._stale_since(book, key, deps, seen)
        if reason is not None:
            if isinstance(reason, Change):
                self._remove(store, key, reason)
            else:
                store.remove(key, RemovalReason.CHANGED, detail=reason)
            return
        entry.fresh_as_of = self.position
        with self._lock:
            self._index.add((state.key, key), deps)
            self._keys.setdefault(state.key, set()).add(key)
            if seen is not None:
                self._seen[(state.key, key)] = seen
            else:
                self._seen.pop((state.key, key), None)

    def _stale_since(
        self, book: SessionFreshness, key: str, deps: Dependencies, seen: Seen | None
    ) -> Change | str | None:
        if not self.vouching:
            return "the change feed is not followed now"
        if book.started_epoch != self._epoch:
            return "feed gap while the call ran"
        since = book.started_seq
        if since == self._seq:
            return None
        if not self._ring or self._ring[0][0] > since + 1:
            return "too many changes while the call ran"
        probe: DependencyIndex[str] = DependencyIndex()
        probe.add(key, deps)
        for seq, change in self._ring:
            if seen is not None and seen.covers(change):
                continue
            if seq > since and not book.owns(change) and probe.affected(change):
                return change
        return None

    # -- the registry's observer ---------------------------------------------------------

    def entry_removed(self, key: ScopeKey, entry: Entry, removal: Removal) -> None:
        with self._lock:
            self.removed[removal.reason.value] += 1
            keys = self._keys.get(key)
            if keys is not None and entry.key in keys:
                keys.discard(entry.key)
                self._index.discard((key, entry.key))
                self._seen.pop((key, entry.key), None)

    def session_ended(self, state: SessionState, reason: EndReason, keys_dropped: int) -> None:
        with self._lock:
            for key in self._keys.pop(state.key, ()):
                self._index.discard((state.key, key))
                self._seen.pop((state.key, key), None)

    # -- applying changes (on the loop) ------------------------------------------------

    def _apply(self, changes: list[Change], position: int) -> None:
        now = time.time()
        for change in changes:
            self._seq += 1
            self._ring.append((self._seq, change))
            with self._lock:
                affected = self._index.affected(change)
            by_session: dict[ScopeKey, list[str]] = {}
            for scope, key in affected:
                by_session.setdefault(scope, []).append(key)
            for scope, keys in by_session.items():
                state = self.registry.get(scope[1], principal=scope[0])
                if state is None:
                    continue
                for key in keys:
                    self._queue_or_apply(state, _Remove(key, change))
            if change.table in REFERENCE_TABLES:
                for state in self.registry.states():
                    self._queue_or_apply(state, _Expire(change))
                self._shared(change.id)
        self.changes_applied += len(changes)
        self._lag.record([max(0.0, now - change.committed_at) for change in changes])
        self._applied += 1
        self.position = max(self.position, position)
        self.refresh_position()

    def _queue_or_apply(self, state: SessionState, item: _Pending) -> None:
        book = self.of(state)
        if state.lock.locked():
            if len(book.pending) >= PENDING_MAX:
                book.pending = [_Clear("too many changes while a call ran")]
            book.pending.append(item)
            return
        self._apply_one(state, book, self.registry.store_of(state), item)

    def _apply_one(
        self,
        state: SessionState,
        book: SessionFreshness,
        store: SessionStore | None,
        item: _Pending,
    ) -> None:
        if isinstance(item, _Clear):
            if store is not None:
                store.clear(RemovalReason.CHANGED, detail=item.detail)
            return
        if book.owns(item.change):
            return  # the writer's own change: invalidate_after_write kept it right
        if isinstance(item, _Remove):
            with self._lock:
                seen = self._seen.get((state.key, item.key))
            if store is not None and (seen is None or not seen.covers(item.change)):
                self._remove(store, item.key, item.change)
            return
        model = _REFERENCE_MODELS.get(item.change.table)
        if model is None:
            return
        with self.registry.scope_if_exists(state.key) as session:
            if session is not None:
                _expire(session, model, item.change.row_id)

    @staticmethod
    def _remove(store: SessionStore, key: str, change: Change) -> None:
        store.remove(
            key,
            RemovalReason.CHANGED,
            change=change.id,
            detail=describe(change),
            table=change.table,
            row_id=change.row_id,
        )

    def _shared(self, change_id: int | None) -> None:
        clear, submit = self._clear_shared, self._submit
        if clear is None:
            return
        if submit is None:
            clear(change_id)
            return
        try:
            submit(lambda: clear(change_id))
        except RuntimeError:  # the executor has shut down
            return

    # -- gaps -------------------------------------------------------------------------

    def _gap(self, gap: FeedGap) -> None:
        self._invalidate_all(str(gap.reason))
        self.position = gap.position
        self.vouching = True
        self._started.set()

    def _invalidate_all(self, reason: str) -> None:
        self.gaps[reason] += 1
        self._epoch += 1
        self._ring.clear()
        detail = f"feed gap: {reason}"
        for state in self.registry.states():
            self._queue_or_apply(state, _Clear(detail))
        self._shared(None)
        log.info("freshness: every cache cleared (%s)", detail)

    def _disconnected(self, reason: str) -> None:
        self._disconnects += 1
        mark = self._disconnects
        log.warning("freshness: change feed lost (%s)", reason)
        if self._loop is not None:
            self._loop.call_later(self.timeout, self._still_disconnected, mark)

    def _still_disconnected(self, mark: int) -> None:
        follower = self._follower
        if mark != self._disconnects or follower is None or follower.connected:
            return
        if self.vouching:
            self.vouching = False
            self._invalidate_all(DISCONNECTED)

    # -- inspection ---------------------------------------------------------------------

    def stats(self) -> FreshnessStats:
        follower = self._follower
        with self._lock:
            removed = dict(self.removed)
        return FreshnessStats(
            position=self.refresh_position(),
            head=follower.head if follower is not None else 0,
            invalidations=removed,
            gaps=dict(self.gaps),
            lag=self._lag.snapshot(),
            changes=self.changes_applied,
            connected=follower.connected if follower is not None else False,
        )

    def indexed(self) -> int:
        with self._lock:
            return len(self._index)


def _expire(session: Session, model: type[object], row_id: int) -> None:
    found = session.identity_map.get(identity_key(model, row_id))
    if found is not None:
        session.expire(found)
