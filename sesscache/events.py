"""Live cache events in bounded rings, read by subscribers at their own pace.

:class:`EventBus` takes events from any thread. Publishing costs the same
whatever the number of subscribers: an event is written into at most two
rings, the ring of its session (which exists only while that session has a
subscriber) and the all-sessions ring (which exists only while someone
subscribes to every session). Nobody else is touched.

A :class:`Subscription` follows one ring with its own read position and
keeps only the event types it asked for as it reads. A ring holds its last
``capacity`` events; a subscriber that falls further behind than that loses
the overwritten events, and the next event it receives says how many
(counting only events of the types it asked for, see :meth:`Subscription.next`).
Publishing never blocks on a subscriber.

Subscribers waiting for an event are woken in batches: a ring schedules at
most one wake-up callback on the event loop at a time (``call_soon`` from the
loop's thread, ``call_soon_threadsafe`` from others), however many events are
published before it runs, and that callback wakes every waiting subscriber
of the ring once.

Subscribe, read and close on one event loop; publish from anywhere.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sesscache.store import RemovalReason

#: (principal, session id), as in :mod:`sesscache.registry`.
ScopeKey = tuple[str, str]


class EventType(enum.Enum):
    """What happened to a cache: every kind of event, listed once (the wire's
    ``CacheEventType`` values are these names)."""

    HIT = "hit"
    MISS = "miss"
    STORE = "store"
    INVALIDATE = "invalidate"
    EVICT = "evict"
    EXPIRE = "expire"
    SESSION_END = "session_end"


#: The event each way out of a cache is shown as: every reason is listed (a
#: failed call's entry: none; a session end is one SESSION_END for the session).
REMOVAL_EVENTS: Mapping[RemovalReason, EventType | None] = {
    RemovalReason.EVICTED: EventType.EVICT,
    RemovalReason.EXPIRED: EventType.EXPIRE,
    RemovalReason.INVALIDATED: EventType.INVALIDATE,
    RemovalReason.CHANGED: EventType.INVALIDATE,
    RemovalReason.FAILED: None,
    RemovalReason.SESSION_ENDED: None,
}


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    session: ScopeKey
    region: str = ""
    key: str = ""
    rows: int = 0
    time: float = 0.0
    #: Removals: how the entry left (a RemovalReason value, e.g. "change").
    reason: str = ""
    #: Removals by a change: the changed table, row and change id.
    table: str = ""
    row_id: int = 0
    change_id: int = 0


class Ring:
    """The last ``capacity`` events of one session, or of every session.

    Events are numbered from 0 in publishing order; :attr:`written` is the
    number of the next one. Event ``n`` sits in slot ``n % capacity`` until
    event ``n + capacity`` overwrites it. :attr:`by_type` counts every event
    ever written, by type (what lets a filtering subscriber count exactly the
    events of its types it lost).
    """

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.written = 0
        self.by_type = dict.fromkeys(EventType, 0)
        self.subscribers = 0
        self._slots: list[Event] = []
        self._lock = threading.Lock()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._waiters: dict[asyncio.Future[None], None] = {}
        self._wake_pending = False

    def push(self, event: Event) -> None:
        """Write ``event`` (from any thread); wake the waiting subscribers soon."""
        with self._lock:
            if len(self._slots) < self.capacity:
                self._slots.append(event)
            else:
                self._slots[self.written % self.capacity] = event
            self.written += 1
            self.by_type[event.type] += 1
            if self._wake_pending or not self._waiters:
                return
            self._wake_pending = True
        try:
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._wake)
            else:
                self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            pass

    def _wake(self) -> None:
        """On the loop: wake every subscriber waiting for this ring."""
        with self._lock:
            self._wake_pending = False
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def read(self, subscription: Subscription) -> tuple[Event, int] | asyncio.Future[None] | None:
        """The subscription's next event and what it lost before it; else a
        future to wait on until there may be one; None once it has read up to
        its end (see :meth:`Subscription.close`)."""
        s = subscription
        with self._lock:
            written = self.written if s.end is None else min(self.written, s.end)
            oldest = self.written - len(self._slots)
            if s.position < oldest:
                self._skip_lost(s, oldest)
            slots, capacity, types = self._slots, self.capacity, s.types
            while s.position < written:
                event = slots[s.position % capacity]
                s.position += 1
                if not types or event.type in types:
                    s.seen += 1
                    lost, s.lost = s.lost, 0
                    return event, lost
            if s.end is not None:
                return None
            waiter = self._loop.create_future()
            self._waiters[waiter] = None
            return waiter

    def _skip_lost(self, s: Subscription, oldest: int) -> None:
        """Move ``s`` up to the oldest event still held, counting what it lost.

        Unfiltered, it lost every overwritten event. Filtered, it lost the
        overwritten events of its types: of those ever written, less those it
        has seen or lost already (:attr:`Subscription.seen`), less those still
        held (counted here: a reader that fell behind pays for it, never a
        publisher).
        """
        if s.types:
            held = sum(1 for event in self._slots if event.type in s.types)
            seen = sum(self.by_type[t] for t in s.types) - held
        else:
            seen = oldest
        s.lost += seen - s.seen
        s.seen = seen
        s.position = oldest

    def forget(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters.pop(waiter, None)

    def start(self, subscription: Subscription) -> None:
        """Place a new subscription after every event written so far."""
        with self._lock:
            subscription.position = self.written
            types = subscription.types
            subscription.seen = sum(self.by_type[t] for t in types) if types else self.written


class Subscription:
    """One subscriber: a read position in the ring it follows, and a type filter."""

    def __init__(
        self,
        bus: EventBus,
        ring: Ring,
        *,
        session: ScopeKey | None,
        types: Collection[EventType],
    ) -> None:
        self._bus = bus
        self.ring = ring
        self.session = session
        self.types = frozenset(types)
        #: Number of the next event of the ring to look at.
        self.position = 0
        #: Events of this subscription's types (all, unfiltered) before
        #: ``position``, counted from the ring's first event.
        self.seen = 0
        #: Events of its types lost since the last one delivered.
        self.lost = 0
        #: Once closed: the ring's event number where reading stops.
        self.end: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        ring.start(self)

    @property
    def closed(self) -> bool:
        return self.end is not None

    async def next(self) -> tuple[Event, int] | None:
        """The next event of this subscription's types and how many such events
        it lost just before it (overwritten in the ring before it read them);
        None once closed and read up to the close."""
        while True:
            item = self.ring.read(self)
            if not isinstance(item, asyncio.Future):
                return item
            self._waiter = item
            try:
                await item
            finally:
                self._waiter = None
                if item.cancelled() or not item.done():  # this reader was cancelled
                    self.ring.forget(item)

    def close(self) -> None:
        """Stop following the ring: :meth:`next` still returns the events
        published before now, then None. Call on the event loop."""
        if self.end is not None:
            return
        self.end = self.ring.written
        self._bus.unsubscribe(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class EventBus:
    """Session rings and the all-sessions ring, made and dropped with their subscribers."""

    def __init__(self) -> None:
        self._sessions: dict[ScopeKey, Ring] = {}
        self._everything: Ring | None = None
        self._subscriptions: dict[Subscription, None] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether anyone subscribes (publishing then does any work at all)."""
        return bool(self._sessions) or self._everything is not None

    def ring_of(self, session: ScopeKey | None) -> Ring | None:
        """The ring of ``session`` (None: of every session), if anyone follows it."""
        return self._everything if session is None else self._sessions.get(session)

    def subscribe(
        self,
        *,
        session: ScopeKey | None = None,
        types: Collection[EventType] = (),
        capacity: int = 1000,
    ) -> Subscription:
        """A new subscription to ``session``'s events (None: every session's)
        of ``types`` (empty: every type), from now on. Call from the event loop.

        ``capacity``: of the ring, if this subscription is its first (a ring
        keeps its capacity while it has subscribers).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            ring = self.ring_of(session)
            if ring is None:
                ring = Ring(capacity, loop)
                if session is None:
                    self._everything = ring
                else:
                    self._sessions[session] = ring
            ring.subscribers += 1
            subscription = Subscription(self, ring, session=session, types=types)
            self._subscriptions[subscription] = None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription``; drop its ring if nobody else follows it."""
        with self._lock:
            if subscription not in self._subscriptions:
                return
            del self._subscriptions[subscription]
            ring = subscription.ring
            ring.subscribers -= 1
            if ring.subscribers:
                return
            session = subscription.session
            if session is None:
                if self._everything is ring:
                    self._everything = None
            elif self._sessions.get(session) is ring:
                del self._sessions[session]

    def close(self) -> None:
        """Close every subscription (at shutdown): watchers' streams end."""
        for subscription in list(self._subscriptions):
            subscription.close()

    def publish(
        self,
        type: EventType,
        session: ScopeKey,
        *,
        region: str = "",
        key: str = "",
        rows: int = 0,
        reason: str = "",
        table: str = "",
        row_id: int = 0,
        change_id: int = 0,
    ) -> None:
        """Write an event into its session's ring and the all-sessions ring,
        those that exist (from any thread; never blocks on a subscriber)."""
        ring = self._sessions.get(session)
        everything = self._everything
        if ring is None and everything is None:
            return
        event = Event(
            type, session, region, key, rows, time.time(), reason, table, row_id, change_id
        )
        if ring is not None:
            ring.push(event)
        if everything is not None:
            everything.push(event)
