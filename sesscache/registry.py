"""The session registry: one ORM Session, and so one cache, per caller session.

The registry is a :class:`~sqlalchemy.orm.scoped_session` whose scope is the
*caller's session id*, held in a context variable that the server sets for
each gRPC call, never the thread: whichever worker thread runs a call, it
reaches the Session of that call's caller. Work for a scope is handed to a
thread with :meth:`SessionRegistry.context_for`, which copies the context
with the scope set.

Beside the scoped Sessions, the registry keeps a :class:`SessionState` per
live session: who owns it, when it was created and last active, its call
lock (an ORM Session is never used by two calls at once), and its counters.
It bounds the number of live sessions (when full, the least recently used
*idle* session is ended to make room; when none is idle the new session is
refused with :class:`RegistryFull`) and ends sessions idle for too long.

A call without a session id runs in an *ephemeral* session of its own,
which is removed when the call releases it.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import hashlib
import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from sortedcontainers import SortedDict
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sesscache.backend import STORE_INFO_KEY, store_for
from sesscache.stats import REMOVAL_COUNTERS, Counters
from sesscache.store import Entry, Removal, RemovalReason, SessionStore

if TYPE_CHECKING:
    from sesscache.freshness import SessionFreshness

log = logging.getLogger(__name__)

#: (principal, session id). Sessions of different principals never meet.
ScopeKey = tuple[str, str]

_scope: contextvars.ContextVar[ScopeKey | None] = contextvars.ContextVar(
    "sesscache_scope", default=None
)


class RegistryObserver(Protocol):
    """Told what the registry and the session caches drop, and why."""

    def entry_removed(self, key: ScopeKey, entry: Entry, removal: Removal) -> None:
        """An entry left a session cache (any reason but its session ending)."""

    def session_ended(self, state: SessionState, reason: EndReason, keys_dropped: int) -> None:
        """A session ended, and its cache with it."""


class EndReason(enum.Enum):
    """Why a session ended: every way, listed once."""

    #: Its client ended it (EndSession, EndSessions).
    ENDED = "ended"
    #: Idle past the idle timeout, ended by the reaper.
    IDLE = "idle"
    #: Ended to make room under a session limit.
    EVICTED = "evicted"
    #: The server stopped.
    SHUTDOWN = "shutdown"


class RegistryFull(Exception):
    """No room for another session: every session it could end is busy.

    ``limit`` names the setting that was hit (``max_sessions`` or
    ``max_sessions_per_principal``).
    """

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class NoScope(RuntimeError):
    """The current Session was asked for outside any session scope."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the registry's memory.

    ``max_sessions``: live sessions at most. ``max_sessions_per_principal``:
    live sessions one principal may hold. ``max_cache_bytes``: bytes every
    session cache may hold together (see :meth:`SessionRegistry.trim`).
    ``idle_timeout``: seconds of
    inactivity after which :meth:`SessionRegistry.reap` ends a session
    (None: never). ``max_entries`` and ``max_bytes``: per-session cache
    bounds; the least recently used entries are evicted beyond them.
    """

    max_sessions: int = 10_000
    max_sessions_per_principal: int = 10_000
    max_cache_bytes: int | None = None
    idle_timeout: float | None = 1800.0
    max_entries: int | None = 1000
    max_bytes: int | None = 8 * 1024 * 1024


@dataclass(eq=False)
class SessionState:
    """Book-keeping for one live session."""

    key: ScopeKey
    serial: int = 0
    ephemeral: bool = False
    peer: str = ""
    created: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.time)
    last_active_monotonic: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    ended: bool = False
    counters: Counters = field(default_factory=Counters)
    #: The cache store of the session's Session, once made (see SessionRegistry.store_of).
    store: SessionStore | None = None
    #: Counters of every session of this session's principal (shared).
    principal_counters: Counters | None = None
    #: A stable, opaque name for the session that reveals neither owner nor id
    #: (a keyed hash: see :class:`SessionRegistry`'s ``handle``).
    handle: str = ""
    #: Change-feed book-keeping of :mod:`sesscache.freshness` (None: no feed).
    freshness: SessionFreshness | None = None

    @property
    def principal(self) -> str:
        return self.key[0]

    @property
    def session_id(self) -> str:
        return self.key[1]


def unkeyed_handle(key: ScopeKey) -> str:
    """A handle for ``key`` without a secret (tests and tools; servers pass a keyed one)."""
    text = f"{key[0]}\0{key[1]}".encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Ended:
    """What ending a session removed."""

    existed: bool
    keys_dropped: int


class SessionRegistry:
    """Scoped ORM Sessions keyed by the caller's session id.

    ``session_factory`` makes a new Session (a ``sessionmaker``); the
    registry gives each one a :class:`SessionStore` bounded by ``limits``.
    ``observer`` is told of evictions, expiries and ended sessions; ``label``
    names a session in log lines (a hash, when session ids are secrets);
    ``closer`` runs the closing of ended Sessions (a server passes its worker
    pool's ``submit``, so closing a big session never holds the event loop);
    ``handle`` names a session for ListSessions (a server passes a keyed hash).

    Every call is O(1) in the number of live sessions: sessions are found by
    key or handle in dictionaries, kept in least-recently-used order (overall
    and per principal), and the entries and bytes of every session cache are
    totalled as they change (:attr:`entries`, :attr:`bytes`).
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        limits: Limits | None = None,
        observer: RegistryObserver | None = None,
        label: Callable[[ScopeKey], str] | None = None,
        closer: Callable[[Callable[[], None]], object] | None = None,
        handle: Callable[[ScopeKey], str] = unkeyed_handle,
    ) -> None:
        self.limits = limits or Limits()
        self.observer = observer
        #: How a session is named in log lines (default: its id).
        self.label: Callable[[ScopeKey], str] = label or (lambda key: key[1])
        #: Runs the closing of an ended Session (default: at once, in place).
        self.closer = closer
        self._handle = handle
        self._factory = session_factory
        # scoped_session only ever calls its factory, so a plain callable
        # that adds the bounded store to each new Session serves.
        self.scoped: scoped_session[Session] = scoped_session(
            cast("sessionmaker[Session]", self._new_session), scopefunc=self._current_scope
        )
        # Least recently used first, overall and per principal.
        self._states: OrderedDict[ScopeKey, SessionState] = OrderedDict()
        self._by_principal: dict[str, OrderedDict[ScopeKey, SessionState]] = {}
        self._by_handle: dict[str, SessionState] = {}
        self._by_serial: SortedDict = SortedDict()
        self._lock = threading.RLock()
        self._totals_lock = threading.Lock()
        self._ephemeral_ids = itertools.count(1)
        self._serials = itertools.count(1)
        self._sweep_after = 0
        self.sessions_evicted = 0
        self.sessions_expired = 0
        self.sessions_ended = 0
        #: Entries and approximate bytes held by every session cache now.
        self.entries = 0
        self.bytes = 0
        self._usage: dict[str, list[int]] = {}
        #: Counters of every session of each principal (kept while the server runs:
        #: principals are the configured tokens, a short list).
        self.principal_counters: dict[str, Counters] = {}
        #: Times each limit refused a session, by setting name.
        self.limits_hit: Counter[str] = Counter()

    # -- scope ---------------------------------------------------------------

    @staticmethod
    def _current_scope() -> ScopeKey:
        key = _scope.get()
        if key is None:
            raise NoScope("no session scope is set: run this inside SessionRegistry.scope()")
        return key

    def _new_session(self) -> Session:
        session = self._factory()
        key = self._current_scope()
        session.info[STORE_INFO_KEY] = SessionStore(
            max_entries=self.limits.max_entries,
            max_bytes=self.limits.max_bytes,
            on_removal=lambda entry, removal: self._entry_removed(key, entry, removal),
            on_size=lambda entries, size: self._size_changed(key[0], entries, size),
        )
        return session

    def _size_changed(self, principal: str, entries: int, size: int) -> None:
        # Stores change in worker threads and on the event loop alike.
        with self._totals_lock:
            self.entries += entries
            self.bytes += size
            usage = self._usage.setdefault(principal, [0, 0])
            usage[0] += entries
            usage[1] += size

    def usage_of(self, principal: str) -> tuple[int, int, int]:
        """(entries, bytes, live sessions) of ``principal``'s session caches: O(1)."""
        entries, size = self._usage.get(principal, (0, 0))
        return entries, size, len(self._by_principal.get(principal, ()))

    def _entry_removed(self, key: ScopeKey, entry: Entry, removal: Removal) -> None:
        state = self._states.get(key)
        counter = REMOVAL_COUNTERS[removal.reason]
        if state is not None and counter is not None:
            for counters in (state.counters, state.principal_counters):
                if counters is not None:
                    counters.add(**{counter: 1})
        if self.observer is not None:
            self.observer.entry_removed(key, entry, removal)

    def current_session(self) -> Session:
        """The Session of the current scope (made on first use)."""
        return self.scoped()

    @contextmanager
    def scope(self, key: ScopeKey) -> Iterator[Session]:
        """Make ``key`` the current scope inside the block; yield its Session."""
        token = _scope.set(key)
        try:
            yield self.scoped()
        finally:
            _scope.reset(token)

    @staticmethod
    def context_for(key: ScopeKey) -> contextvars.Context:
        """A copy of the current context with ``key`` as the scope, to run work in."""
        context = contextvars.copy_context()
        context.run(_scope.set, key)
        return context

    # -- lifecycle -----------------------------------------------------------

    def open(self, session_id: str | None, *, principal: str = "", peer: str = "") -> SessionState:
        """The state of the caller's session, made if new; marked in use until :meth:`release`.

        ``session_id`` None opens an ephemeral session for one call. Raises
        :class:`RegistryFull` when the registry is full and no session is idle.
        """
        with self._lock:
            if session_id is None:
                key = (principal, f"#call-{next(self._ephemeral_ids)}")
                state = SessionState(key, ephemeral=True, peer=peer)
            else:
                key = (principal, session_id)
                state = self._states.get(key)  # type: ignore[assignment]
                if state is None:
                    self._make_room(principal)
                    state = SessionState(
                        key, serial=next(self._serials), peer=peer, handle=self._handle(key)
                    )
                    self._add(state)
                else:
                    self._touch(state)
                    if peer and not state.peer:
                        state.peer = peer
            state.principal_counters = self._counters_of(principal)
            state.users += 1
            return state

    def _counters_of(self, principal: str) -> Counters:
        counters = self.principal_counters.get(principal)
        if counters is None:
            counters = self.principal_counters[principal] = Counters()
        return counters

    def _add(self, state: SessionState) -> None:
        self._states[state.key] = state
        self._by_principal.setdefault(state.principal, OrderedDict())[state.key] = state
        self._by_handle[state.handle] = state
        self._by_serial[state.serial] = state

    def _forget(self, state: SessionState) -> None:
        if self._states.pop(state.key, None) is None:
            return
        mine = self._by_principal.get(state.principal)
        if mine is not None:
            mine.pop(state.key, None)
            if not mine:
                del self._by_principal[state.principal]
        self._by_handle.pop(state.handle, None)
        self._by_serial.pop(state.serial, None)

    def _touch(self, state: SessionState) -> None:
        # Any call is a use, for the least-recently-used orders.
        if self._states.get(state.key) is state:
            self._states.move_to_end(state.key)
            self._by_principal[state.principal].move_to_end(state.key)

    def get(self, session_id: str, *, principal: str = "") -> SessionState | None:
        """The state of an existing session, without opening it."""
        return self._states.get((principal, session_id))

    def use(self, session_id: str, *, principal: str = "") -> SessionState | None:
        """An existing session, marked used now (recency, last active), for a caller
        done with it before anything else can run on the loop: the hit path. None
        when there is no such session (a new one has nothing cached)."""
        with self._lock:
            state = self._states.get((principal, session_id))
            if state is not None:
                self._touch(state)
                state.last_active = time.time()
                state.last_active_monotonic = time.monotonic()
            return state

    def by_handle(self, handle: str) -> SessionState | None:
        """The live session whose :attr:`SessionState.handle` is ``handle``."""
        return self._by_handle.get(handle)

    def page(self, *, after_serial: int, limit: int) -> list[SessionState]:
        """Up to ``limit`` live sessions created after ``after_serial``, oldest first.

        O(log n + limit) whatever the position of the page.
        """
        with self._lock:
            serials = self._by_serial.irange(minimum=after_serial, inclusive=(False, True))
            return [
                self._by_serial[serial] for serial, _ in zip(serials, range(limit), strict=False)
            ]

    def idle_for(self, seconds: float, now: float | None = None) -> list[SessionState]:
        """Sessions with no call for at least ``seconds`` (none in use).

        Walks the sessions least recently used first and stops at the first
        one used more recently: O(sessions found + sessions busy).
        """
        now = time.monotonic() if now is None else now
        found = []
        with self._lock:
            for state in self._states.values():
                if now - state.last_active_monotonic < seconds:
                    if state.users == 0:
                        break
                    continue
                if state.users == 0:
                    found.append(state)
        return found

    def end_idle(self, seconds: float) -> list[tuple[SessionState, int]]:
        """End every session idle for at least ``seconds``; return them with keys dropped."""
        with self._lock:
            idle = self.idle_for(seconds)
            return [(state, self._remove(state, EndReason.ENDED)) for state in idle]

    def acquire(self, state: SessionState) -> None:
        """Mark an existing ``state`` in use (see :meth:`release`)."""
        with self._lock:
            state.users += 1
            self._touch(state)

    def release(self, state: SessionState) -> None:
        """The caller is done with ``state``; ephemeral sessions end here."""
        with self._lock:
            state.users -= 1
            state.last_active = time.time()
            state.last_active_monotonic = time.monotonic()
            if state.ephemeral and state.users == 0:
                self._remove(state, None)
            else:
                self._touch(state)

    def end(self, state: SessionState) -> Ended:
        """End ``state``'s session: close it and drop its cache.

        The caller must hold ``state.lock`` (no call may be using the Session).
        """
        with self._lock:
            if state.ended:
                return Ended(existed=False, keys_dropped=0)
            return Ended(existed=True, keys_dropped=self._remove(state, EndReason.ENDED))

    def store_of(self, state: SessionState) -> SessionStore | None:
        """The cache store of ``state``'s session, if its Session was ever made."""
        if state.store is None:
            with self.scope_if_exists(state.key) as session:
                state.store = None if session is None else store_for(session, create=False)
        return state.store

    @contextmanager
    def scope_if_exists(self, key: ScopeKey) -> Iterator[Session | None]:
        """Like :meth:`scope`, but yields None instead of making a Session."""
        token = _scope.set(key)
        try:
            yield self.scoped() if self.scoped.registry.has() else None
        finally:
            _scope.reset(token)

    def states(self) -> list[SessionState]:
        """Every live (non-ephemeral) session, least recently used first."""
        with self._lock:
            return list(self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    #: Sessions whose expired entries one :meth:`reap` drops, at most.
    SWEEP_BATCH = 256

    def reap(self, now: float | None = None) -> list[SessionState]:
        """End sessions idle longer than ``limits.idle_timeout``; return them.

        Also drops expired entries from the caches of up to
        :attr:`SWEEP_BATCH` idle sessions that stay, taking the next ones
        each time round (entries are also checked for expiry when read), so
        one call costs O(sessions reaped + batch), not O(live sessions).
        Sessions in use are never touched.
        """
        timeout = self.limits.idle_timeout
        reaped = []
        with self._lock:
            if timeout is not None:
                for state in self.idle_for(timeout, now):
                    dropped = self._remove(state, EndReason.IDLE)
                    self.sessions_expired += 1
                    log.debug(
                        "session %s expired after idling (%d keys dropped)",
                        self.label(state.key),
                        dropped,
                    )
                    reaped.append(state)
            batch = self.page(after_serial=self._sweep_after, limit=self.SWEEP_BATCH)
            self._sweep_after = batch[-1].serial if len(batch) == self.SWEEP_BATCH else 0
            for state in batch:
                if state.users == 0:
                    store = self.store_of(state)
                    if store is not None:
                        store.expire()
        return reaped

    def close_all(self) -> None:
        """End every session (at shutdown).

        A session still used by a call (its work abandoned past the grace
        period) is forgotten without being closed: closing would wait for
        that work, on a database that may never answer.
        """
        with self._lock:
            for state in list(self._states.values()):
                if state.users:
                    state.ended = True
                    self._forget(state)
                    token = _scope.set(state.key)
                    try:
                        self.scoped.registry.clear()  # forget it, without closing it
                    finally:
                        _scope.reset(token)
                else:
                    self._remove(state, EndReason.SHUTDOWN)

    # -- internals -----------------------------------------------------------

    def _close(self, session: Session, store: SessionStore | None) -> None:
        def close() -> None:
            if store is not None:
                store.clear(RemovalReason.SESSION_ENDED)
            session.close()

        if self.closer is None:
            close()
            return
        try:
            self.closer(close)
        except RuntimeError:  # the closer has shut down: close here
            close()

    def _make_room(self, principal: str) -> None:
        """Make room for a new session of ``principal``, or raise :class:`RegistryFull`.

        At the principal's quota, its own least recently used idle session
        is ended. At the server's limit, the least recently used idle session
        of the principal holding the most sessions is (the next principal's
        when all of those are busy): one principal never evicts another that
        holds fewer sessions than it does.
        """
        limits = self.limits
        mine = self._by_principal.get(principal)
        if mine is not None and len(mine) >= limits.max_sessions_per_principal:
            if self._evict_idle(mine):
                return
            self.limits_hit["max_sessions_per_principal"] += 1
            raise RegistryFull(
                f"this principal holds its maximum of {limits.max_sessions_per_principal} "
                "sessions (max_sessions_per_principal), all busy; end sessions you no longer "
                "need (EndSession) or retry later",
                limit="max_sessions_per_principal",
            )
        if len(self._states) < limits.max_sessions:
            return
        held = len(mine) if mine is not None else 0
        for states in sorted(self._by_principal.values(), key=len, reverse=True):
            if len(states) < held:
                break  # never a principal holding fewer sessions than the caller's
            if self._evict_idle(states):
                return
        self.limits_hit["max_sessions"] += 1
        raise RegistryFull(
            f"the server holds its maximum of {limits.max_sessions} sessions (max_sessions), "
            "all busy; end sessions you no longer need (EndSession) or retry later",
            limit="max_sessions",
        )

    def trim(self) -> int:
        """Keep every session cache together within ``limits.max_cache_bytes``.

        While over it, the least recently used idle session of the principal
        whose sessions hold the most bytes is ended (so one principal filling
        the server ends its own sessions first). Returns the sessions ended;
        O(sessions ended + principals).
        """
        limit = self.limits.max_cache_bytes
        ended = 0
        if limit is None or self.bytes <= limit:
            return ended
        with self._lock:
            while self.bytes > limit:
                by_bytes = sorted(
                    self._by_principal, key=lambda p: self._usage.get(p, (0, 0))[1], reverse=True
                )
                if not any(self._evict_idle(self._by_principal[p]) for p in by_bytes):
                    break
                ended += 1
            if ended:
                self.limits_hit["max_cache_bytes"] += 1
        return ended

    def _evict_idle(self, states: OrderedDict[ScopeKey, SessionState]) -> bool:
        """End the least recently used idle session of ``states``; False if all are busy."""
        for state in states.values():  # least recently used first
            if state.users == 0:
                dropped = self._remove(state, EndReason.EVICTED)
                self.sessions_evicted += 1
                log.debug(
                    "session %s evicted to make room (%d keys dropped)",
                    self.label(state.key),
                    dropped,
                )
                return True
        return False

    def _remove(self, state: SessionState, reason: EndReason | None) -> int:
        """Close the Session of ``state`` and forget it; return the keys dropped.

        ``reason`` is told to the observer; None (an ephemeral session) is not.
        """
        state.ended = True
        if not state.ephemeral:
            self._forget(state)
        dropped = 0
        token = _scope.set(state.key)
        try:
            if self.scoped.registry.has():
                session = self.scoped()
                # Forget it now (a new call with the same id gets a new
                # Session); close it, which may take a while for a big one,
                # wherever the closer runs it.
                self.scoped.registry.clear()
                store = store_for(session, create=False)
                dropped = len(store) if store is not None else 0
                if store is not None:
                    store.detach()  # off the totals now: a trim() sees the room at once
                self._close(session, store)
        finally:
            _scope.reset(token)
        state.store = None
        if reason is not None:
            self.sessions_ended += 1
            if self.observer is not None:
                self.observer.session_ended(state, reason, dropped)
        return dropped
