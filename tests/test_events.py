"""The event bus (:mod:`sesscache.events`) on its own: rings, positions, lost counts, wake-ups.

Deterministic, without a server:

- publishing costs O(1) whatever the number of subscribers: an event is
  written into its session's ring (only while someone watches that session)
  and the all-sessions ring (only while someone watches every session),
  never into other sessions' rings, and no subscription is visited;
- waking is batched: one wake-up callback per ring per loop iteration,
  ``call_soon`` on the loop's thread and ``call_soon_threadsafe`` from a
  worker thread, whatever the number of events and of waiting subscribers;
- a subscriber that falls behind by more than the ring's capacity loses the
  oldest events, and the next event it receives counts exactly the lost
  events of the types it asked for;
- events published from worker threads are delivered; rings are dropped with
  their last subscriber; ``close`` ends every stream after what was published
  before it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sesscache.events import Event, EventBus, EventType, Ring, ScopeKey, Subscription

A: ScopeKey = ("alice", "a")
B: ScopeKey = ("bob", "b")
HIT, MISS, STORE = EventType.HIT, EventType.MISS, EventType.STORE


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


def drain(subscription: Subscription) -> list[tuple[Event, int]]:
    """Every event the subscription can read now (without waiting)."""
    items = []
    while isinstance(item := subscription.ring.read(subscription), tuple):
        items.append(item)
    if isinstance(item, asyncio.Future):
        subscription.ring.forget(item)
    return items


def keys(items: list[tuple[Event, int]]) -> list[str]:
    return [event.key for event, _ in items]


class WakeCounter:
    """Counts the wake-up callbacks rings schedule on ``loop``, by ring and by method."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.calls: list[tuple[str, Ring]] = []
        for method in ("call_soon", "call_soon_threadsafe"):
            original = getattr(loop, method)

            def counting(
                callback: Any, *args: Any, _m: str = method, _o: Any = original, **kwargs: Any
            ) -> Any:
                owner = getattr(callback, "__self__", None)
                if isinstance(owner, Ring):
                    self.calls.append((_m, owner))
                return _o(callback, *args, **kwargs)

            setattr(loop, method, counting)

    def of(self, ring: Ring, method: str | None = None) -> int:
        return sum(1 for m, r in self.calls if r is ring and method in (None, m))


# -- O(1) publishing --------------------------------------------------------------------


def test_publishing_writes_only_the_rings_of_its_session(monkeypatch: pytest.MonkeyPatch) -> None:
    pushed: list[Ring] = []
    original = Ring.push

    def counting(ring: Ring, event: Event) -> None:
        pushed.append(ring)
        original(ring, event)

    monkeypatch.setattr(Ring, "push", counting)
    visited: list[Subscription] = []
    read = Ring.read

    def reading(ring: Ring, subscription: Subscription) -> Any:
        visited.append(subscription)
        return read(ring, subscription)

    async def test() -> None:
        bus = EventBus()
        others = [bus.subscribe(session=("bob", f"b{n}"), capacity=10) for n in range(64)]
        mine = bus.subscribe(session=A, capacity=10)
        assert bus.ring_of(None) is None, "nobody watches every session"
        monkeypatch.setattr(Ring, "read", reading)

        for number in range(1000):
            bus.publish(HIT, A, key=str(number))
        assert pushed == [mine.ring] * 1000, "one write per event, into A's ring only"
        assert visited == [], "publishing visits no subscription"
        assert all(other.ring.written == 0 for other in others)
        assert all(other.position == 0 and other.lost == 0 for other in others)

        pushed.clear()
        for number in range(1000):
            bus.publish(HIT, ("carol", "c"), key=str(number))
        assert pushed == [], "a session nobody watches: nothing written at all"

        everything = bus.subscribe(capacity=10)
        bus.publish(MISS, A)
        bus.publish(MISS, ("carol", "c"))
        assert pushed == [mine.ring, everything.ring, everything.ring]
        assert all(other.ring.written == 0 for other in others)
        everything.close()
        assert bus.ring_of(None) is None

    run(test)


def test_wake_ups_are_batched_per_ring_and_loop_iteration() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        wakes = WakeCounter(loop)
        bus = EventBus()
        subscriptions = [bus.subscribe(session=A) for _ in range(20)]
        ring = subscriptions[0].ring
        assert all(s.ring is ring for s in subscriptions), "one ring per session"
        readers = [asyncio.create_task(s.next()) for s in subscriptions]
        await asyncio.sleep(0)  # every reader now waits

        for number in range(500):  # one loop iteration: nothing runs in between
            bus.publish(HIT, A, key=str(number))
        assert wakes.of(ring) == 1, "one callback for 500 events and 20 waiting readers"
        assert wakes.of(ring, "call_soon") == 1, "published on the loop's thread"
        results = await asyncio.gather(*readers)
        assert [item[0].key if item else None for item in results] == ["0"] * 20
        assert all(len(drain(s)) == 499 for s in subscriptions)

        bus.publish(HIT, A)
        assert wakes.of(ring) == 1, "nobody waits: no callback"
        readers = [asyncio.create_task(s.next()) for s in subscriptions]
        await asyncio.gather(*readers)  # the event was there: nobody waited
        readers = [asyncio.create_task(s.next()) for s in subscriptions]
        await asyncio.sleep(0)
        bus.publish(HIT, A)
        bus.publish(HIT, A)
        assert wakes.of(ring) == 2, "a later loop iteration: one more callback"
        await asyncio.gather(*readers)

    run(test)


def test_a_cancelled_reader_is_not_woken() -> None:
    async def test() -> None:
        wakes = WakeCounter(asyncio.get_running_loop())
        bus = EventBus()
        subscription = bus.subscribe(session=A)
        reader = asyncio.create_task(subscription.next())
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        bus.publish(HIT, A)
        assert wakes.of(subscription.ring) == 0, "its wait was forgotten"
        subscription.close()

    run(test)


# -- lost events ----------------------------------------------------------------------


def test_a_reader_behind_by_more_than_the_capacity_loses_the_oldest() -> None:
    async def test() -> None:
        bus = EventBus()
        subscription = bus.subscribe(session=A, capacity=10)
        for number in range(25):
            bus.publish(HIT, A, key=str(number))
        items = drain(subscription)
        assert keys(items) == [str(n) for n in range(15, 25)]
        assert [lost for _, lost in items] == [15] + [0] * 9

        for number in range(25, 30):  # within the capacity: nothing lost
            bus.publish(MISS, A, key=str(number))
        assert [lost for _, lost in drain(subscription)] == [0] * 5

        for number in range(30, 41):  # one more than the capacity
            bus.publish(STORE, A, key=str(number))
        items = drain(subscription)
        assert (keys(items)[0], items[0][1]) == ("31", 1)

    run(test)


def test_lost_counts_only_the_types_the_reader_asked_for() -> None:
    async def test() -> None:
        bus = EventBus()
        hits = bus.subscribe(session=A, types=[HIT], capacity=10)
        every = bus.subscribe(session=A, capacity=10)
        assert hits.ring is every.ring
        for number in range(30):  # alternately a hit and a miss: 15 hits
            bus.publish(HIT if number % 2 == 0 else MISS, A, key=str(number))
        items = drain(hits)
        assert keys(items) == [str(n) for n in range(20, 30, 2)], "the 5 hits still held"
        assert [lost for _, lost in items] == [10, 0, 0, 0, 0], "10 hits overwritten"
        assert [lost for _, lost in drain(every)][:2] == [20, 0]

        for number in range(5):
            bus.publish(HIT, A, key=f"hit-{number}")
        for _ in range(100):  # misses push those hits out of the ring
            bus.publish(MISS, A)
        bus.publish(HIT, A, key="last")
        ((event, lost),) = drain(hits)
        assert (event.key, lost) == ("last", 5), "the misses it skips are never lost"

        bus.publish(HIT, A, key="next")
        assert [(e.key, lost) for e, lost in drain(hits)] == [("next", 0)]

    run(test)


def test_a_new_subscriber_starts_after_the_events_so_far() -> None:
    async def test() -> None:
        bus = EventBus()
        first = bus.subscribe(session=A, types=[HIT], capacity=10)
        for number in range(35):
            bus.publish(HIT, A, key=str(number))
        second = bus.subscribe(session=A, types=[HIT], capacity=10)
        bus.publish(HIT, A, key="new")
        assert [(e.key, lost) for e, lost in drain(second)] == [("new", 0)]
        assert drain(first)[0][1] == 26

    run(test)


# -- threads, rings' lives, close ---------------------------------------------------------


def test_events_published_from_a_worker_thread_are_delivered() -> None:
    async def test() -> None:
        wakes = WakeCounter(asyncio.get_running_loop())
        bus = EventBus()
        session = bus.subscribe(session=A, types=[EventType.EVICT])
        everything = bus.subscribe()
        reader = asyncio.create_task(session.next())
        await asyncio.sleep(0)

        def evict() -> None:
            for number in range(50):
                bus.publish(EventType.EVICT, A, key=str(number))

        worker = threading.Thread(target=evict)
        worker.start()
        worker.join()  # the loop is blocked meanwhile: the wake-ups cannot run
        assert wakes.of(session.ring, "call_soon_threadsafe") == 1
        assert wakes.of(session.ring, "call_soon") == 0
        assert wakes.of(everything.ring) == 0, "nobody waited on it"
        first = await reader
        assert first is not None
        assert (first[0].type, first[0].key, first[1]) == (EventType.EVICT, "0", 0)
        assert len(drain(session)) == 49
        assert len(drain(everything)) == 50

        reader = asyncio.create_task(everything.next())
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, bus.publish, EventType.EXPIRE, A)
        item = await reader
        assert item is not None
        assert item[0].type is EventType.EXPIRE

    run(test)


def test_rings_exist_only_while_followed() -> None:
    async def test() -> None:
        bus = EventBus()
        assert not bus.active
        one, two = bus.subscribe(session=A), bus.subscribe(session=A)
        everything = bus.subscribe()
        assert bus.active
        one.close()
        assert bus.ring_of(A) is two.ring
        two.close()
        two.close()  # idempotent
        assert bus.ring_of(A) is None
        bus.publish(HIT, A)
        assert two.ring.written == 0, "a dropped ring is not written"
        assert everything.ring.written == 1
        everything.close()
        assert not bus.active
        again = bus.subscribe(session=A)
        assert again.ring is not one.ring
        assert again.ring.written == 0

    run(test)


def test_close_ends_every_stream_after_what_was_published() -> None:
    async def test() -> None:
        bus = EventBus()
        waiting = bus.subscribe(session=A)
        behind = bus.subscribe(session=B)
        reader = asyncio.create_task(waiting.next())
        await asyncio.sleep(0)
        bus.publish(HIT, B, key="before")
        bus.close()
        bus.publish(HIT, B, key="after")
        assert await reader is None
        item = await behind.next()
        assert item is not None
        assert item[0].key == "before"
        assert await behind.next() is None
        assert waiting.closed
        assert behind.closed
        assert not bus.active

    run(test)
