"""The session cache core: a caller's session, and the path of a request to its entry.

A request names its session (``session-id``); the core gives the caller that
session and its cache, and decides hit or miss in one place
(:meth:`sesscache.store.SessionStore.lookup`). The path of a query, top to
bottom:

1. **The hit path** (:meth:`CacheCore.rendered_hit`, on the event loop). The
   query's cache key is known (remembered from an earlier call of the same
   shape), the session's call lock is free, and its entry is live and holds
   a rendering (the response built when it was stored): that rendering *is*
   the answer. No lock is taken, no thread, no statement, no ORM: nothing
   else can run on the loop while this synchronous block does, so nothing
   uses the session meanwhile. The hit is counted on the entry.
2. **Otherwise** :meth:`CacheCore.session` gives the caller its session with
   the call lock held (calls of one session run one at a time, of different
   sessions side by side), and :meth:`CacheCore.run` runs the work in a
   worker thread with the session's scope set (:mod:`sesscache.registry`), so
   the ORM hook (:mod:`sesscache.caching`) reaches this session's store. The
   work looks the key up first (a :class:`~sesscache.store.Miss` says why),
   then runs the statement: the hook serves a hit from the store or, on a
   miss, runs it and stores the result, to which the work adds its rendering.
3. An entry leaves only through the store, with a
   :class:`~sesscache.store.RemovalReason` (evicted, expired, invalidated,
   changed, failed call, session end), which the registry's observer counts
   and publishes; the store remembers recent removals to explain misses.

A call cancelled while its work runs in a thread keeps the session locked
until that work has finished: the next call of the session never meets a
Session still in use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from sesscache.caching import CachedResult
from sesscache.freshness import Freshness
from sesscache.registry import SessionRegistry, SessionState
from sesscache.store import Entry, Hit

A = TypeVar("A")
R = TypeVar("R")


class SessionNotFound(LookupError):
    """The named session does not exist (never used, ended, reaped, or restarted)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class CacheCore:
    """Sessions and their caches, for callers on an asyncio loop.

    ``registry``: the sessions. ``executor``: where database work runs.
    """

    def __init__(
        self, registry: SessionRegistry, executor: Executor, freshness: Freshness | None = None
    ) -> None:
        self.registry = registry
        self.executor = executor
        #: The change feed's side of each call (see :mod:`sesscache.freshness`).
        self.freshness = freshness
        self._abandon = asyncio.Event()

    # -- the hit path -------------------------------------------------------------

    def rendered_hit(
        self, session_id: str, principal: str, key: str, rendering: str
    ) -> tuple[SessionState, Entry, Any] | None:
        """(session, entry, rendering) when ``key`` is a live, rendered entry of the
        caller's session and no call is using the session; else None (no I/O)."""
        state = self.registry.use(session_id, principal=principal)
        if state is None or state.lock.locked():
            return None  # a new session, or a call is using it: see session()
        found = self.rendered(state, key, rendering)
        return None if found is None else (state, *found)

    def rendered(self, state: SessionState, key: str, rendering: str) -> tuple[Entry, Any] | None:
        """(entry, rendering) for a live entry of ``state`` holding ``rendering``,
        counted as a hit; None otherwise (nothing counted). The caller owns the
        session: on the loop with its lock free, or holding it."""
        store = self.registry.store_of(state)
        if store is None:
            return None
        entry = store.peek(key)
        if entry is None:
            return None
        payload = entry.value.payload
        if not isinstance(payload, CachedResult):
            return None
        rendered = payload.renderings.get(rendering)
        if rendered is None:
            return None
        found = store.lookup(key)  # expiry, and the hit counted on the entry
        return (entry, rendered) if isinstance(found, Hit) else None

    # -- a session for a call -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(
        self, session_id: str | None, *, principal: str, peer: str = "", create: bool = True
    ) -> AsyncIterator[SessionState]:
        """The caller's session with its call lock held, for the block.

        ``session_id`` None: an ephemeral session, ended after the block.
        ``create`` False: :class:`SessionNotFound` when it does not exist. A
        session ended while the caller waited for its lock is opened afresh
        (or, with ``create`` False, not found).
        """
        registry = self.registry
        while True:
            if create:
                state = registry.open(session_id, principal=principal, peer=peer)
            else:
                assert session_id is not None
                found = registry.get(session_id, principal=principal)
                if found is None:
                    raise SessionNotFound(session_id)
                state = found
                registry.acquire(state)
            try:
                async with state.lock:
                    if not state.ended:
                        freshness = self.freshness
                        if freshness is not None:
                            freshness.call_started(state)
                        try:
                            yield state
                        finally:
                            if freshness is not None and not state.ended:
                                # Changes queued while the call ran, before others may use it.
                                freshness.call_ended(state)
                        return
            finally:
                registry.release(state)
            # Ended while this call waited: look the session up again.

    async def run(self, state: SessionState, work: Callable[[A], R], argument: A) -> R:
        """``work(argument)`` in a worker thread, in ``state``'s session scope.

        The caller holds the session (:meth:`session`). If the call is
        cancelled meanwhile, the cancellation waits for the work to finish,
        so the lock is released only once the Session is no longer in use.
        """
        context = self.registry.context_for(state.key)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, context.run, work, argument)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            abandon: asyncio.Future[Any] = asyncio.ensure_future(self._abandon.wait())
            waiting: list[asyncio.Future[Any]] = [future, abandon]
            try:
                while not future.done() and not abandon.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                abandon.cancel()
            if not future.done():
                # Abandoned at shutdown: the session stays in use until its work
                # ends, so close_all() forgets it instead of closing it under the work.
                self.registry.acquire(state)
                future.add_done_callback(lambda _: self.registry.release(state))
            raise

    def abandon(self) -> None:
        """Shutting down past the grace period: cancelled calls stop waiting for
        their database work (their sessions are going away with the server)."""
        self._abandon.set()
