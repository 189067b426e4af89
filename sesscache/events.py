"""Live cache events, fanned out to subscribers with bounded buffers.

:class:`EventBus` takes events from any thread and hands each to every
matching :class:`Subscription`. A subscription buffers at most ``capacity``
events; when it is full, new events are counted as lost instead of queued,
and the next event it delivers says how many were lost. Publishing never
blocks and costs next to nothing when nobody subscribes.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

#: (principal, session id), as in :mod:`sesscache.registry`.
ScopeKey = tuple[str, str]


class EventType(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STORE = "store"
    INVALIDATE = "invalidate"
    EVICT = "evict"
    EXPIRE = "expire"
    SESSION_END = "session_end"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    session: ScopeKey
    region: str = ""
    key: str = ""
    rows: int = 0
    time: float = 0.0


class Subscription:
    """One subscriber's view: a bounded buffer of matching events."""

    def __init__(
        self,
        bus: EventBus,
        *,
        session: ScopeKey | None,
        types: Collection[EventType],
        capacity: int,
    ) -> None:
        self._bus = bus
        self.session = session
        self.types = frozenset(types)
        self.capacity = capacity
        self._buffer: deque[tuple[Event, int]] = deque()
        self._lost = 0
        self.lost_total = 0
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ready = asyncio.Event()
        self.closed = False

    def matches(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        return self.session is None or event.session == self.session

    def offer(self, event: Event) -> None:
        """Buffer ``event`` or count it lost; never blocks."""
        if len(self._buffer) >= self.capacity:
            self._lost += 1
            self.lost_total += 1
            return
        self._buffer.append((event, self._lost))
        self._lost = 0
        self._wake()

    async def next(self) -> tuple[Event, int] | None:
        """The next event and how many were lost just before it; None once closed."""
        while not self._buffer:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop receiving; :meth:`next` returns None once the buffer is drained."""
        self.closed = True
        self._bus.unsubscribe(self)
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._ready.set()
        else:
            self._loop.call_soon_threadsafe(self._ready.set)


class EventBus:
    """Fans events out to subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._subscriptions)

    def subscribe(
        self,
        *,
        session: ScopeKey | None = None,
        types: Collection[EventType] = (),
        capacity: int = 1000,
    ) -> Subscription:
        """A new subscription (call from the event loop)."""
        subscription = Subscription(self, session=session, types=types, capacity=capacity)
        with self._lock:
            self._subscriptions = [*self._subscriptions, subscription]
        return subscription

    def close(self) -> None:
        """Close every subscription (at shutdown): watchers' streams end."""
        for subscription in self._subscriptions:
            subscription.close()

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    def publish(
        self,
        type: EventType,
        session: ScopeKey,
        *,
        region: str = "",
        key: str = "",
        rows: int = 0,
    ) -> None:
        """Hand an event to every matching subscription (from any thread)."""
        subscriptions = self._subscriptions  # replaced, never mutated: safe to read
        if not subscriptions:
            return
        event = Event(type, session, region, key, rows, time.time())
        for subscription in subscriptions:
            if subscription.matches(event):
                subscription.offer(event)
