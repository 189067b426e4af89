"""The freshness component without a server: queueing while a call holds a session,
the store race, the writer's own changes, gaps (no follower, no database writes).

Changes are handed to :class:`Freshness` as the follower would (on the loop);
the stores are real :class:`~sesscache.store.SessionStore` objects of a real
registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from dogpile.cache.api import CachedValue
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from sesscache.changes import Change, Op
from sesscache.core import CacheCore
from sesscache.feed import FeedGap, GapReason
from sesscache.freshness import PENDING_MAX, RING, Freshness, OwnWrite
from sesscache.precision import Dependencies
from sesscache.queries import PersonQuery
from sesscache.registry import SessionRegistry, SessionState
from sesscache.store import Entry, RemovalReason, SessionStore, digest_of

KEY = "q:ids=7"
DEPS = Dependencies.for_person_query(PersonQuery(ids=(7,)), [7])


def _change(change_id: int, person_id: int = 7, txid: int | None = None) -> Change:
    row = {"id": person_id, "name": f"n{change_id}", "version": change_id}
    return Change(change_id, "person", Op.UPDATE, person_id, row, row, time.time(), txid)


def _run(test: Callable[[Freshness, CacheCore], Awaitable[None]]) -> None:
    async def main() -> None:
        engine = create_engine("sqlite://")
        registry = SessionRegistry(sessionmaker(engine))
        freshness = Freshness(registry, "sqlite:///unused.db")
        registry.observer = freshness
        freshness._gap(FeedGap(GapReason.START, 0, None, "test", time.time()))
        with ThreadPoolExecutor(1) as executor:
            await test(freshness, CacheCore(registry, executor, freshness))
        engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 10))


def _store(core: CacheCore, state: SessionState) -> SessionStore:
    with core.registry.scope(state.key):
        core.registry.current_session()
    store = core.registry.store_of(state)
    assert store is not None
    return store


def _put(store: SessionStore) -> Entry:
    return store.put(KEY, CachedValue("rows", {"ct": time.time()}), "local_session")


def test_a_change_while_a_call_holds_the_session_waits_for_it() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        async with core.session("s", principal="") as state:
            store = _store(core, state)
            freshness.stored(state, KEY, _put(store), DEPS)
        async with core.session("s", principal="") as state:
            freshness._apply([_change(5)], 5)
            assert store.peek(KEY) is not None, "never under a running call"
        assert store.peek(KEY) is None, "applied when the call let go"
        removal = store.removals[digest_of(KEY)]
        assert (removal.reason, removal.change, removal.detail) == (
            RemovalReason.CHANGED,
            5,
            "person 7 (update)",
        )
        assert freshness.indexed() == 0

    _run(test)


def test_an_entry_stored_after_a_change_it_raced_is_removed_at_once() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        async with core.session("s", principal="") as state:
            store = _store(core, state)
            entry = _put(store)  # the work read the old row...
            freshness._apply([_change(5)], 5)  # ...while the change was applied
            freshness.stored(state, KEY, entry, DEPS)
            assert store.peek(KEY) is None
            assert store.removals[digest_of(KEY)].change == 5
        async with core.session("s", principal="") as state:
            freshness.stored(state, KEY, _put(store), DEPS)
            freshness._apply([_change(6, person_id=8)], 6)  # another person
        assert store.peek(KEY) is not None
        assert store.peek(KEY).fresh_as_of == 5  # type: ignore[union-attr]

    _run(test)


def test_a_call_older_than_the_ring_drops_what_it_stored() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        async with core.session("s", principal="") as state:
            store = _store(core, state)
            entry = _put(store)
            others = [_change(n, person_id=1000 + n) for n in range(1, RING + 2)]
            freshness._apply(others, RING + 1)
            freshness.stored(state, KEY, entry, DEPS)
        assert store.peek(KEY) is None
        assert "too many changes" in store.removals[digest_of(KEY)].detail

    _run(test)


def test_the_writers_own_changes_are_skipped_for_it_only() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        stores = {}
        for name in ("writer", "other"):
            async with core.session(name, principal="") as state:
                stores[name] = _store(core, state)
                freshness.stored(state, KEY, _put(stores[name]), DEPS)
        async with core.session("writer", principal="") as state:
            freshness.wrote(state, OwnWrite(after=4, through=5))
        freshness._apply([_change(5)], 5)
        assert stores["writer"].peek(KEY) is not None
        assert stores["other"].peek(KEY) is None
        freshness._apply([_change(6)], 6)  # someone else's, later
        assert stores["writer"].peek(KEY) is None

    _run(test)


def test_a_gap_clears_every_session_and_is_counted() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        async with core.session("s", principal="") as state:
            store = _store(core, state)
            freshness.stored(state, KEY, _put(store), DEPS)
        freshness._gap(FeedGap(GapReason.RETENTION, 9, 3, "pruned", time.time()))
        assert len(store) == 0
        assert store.removals[digest_of(KEY)].detail == "feed gap: retention"
        assert freshness.stats().gaps == {"start": 1, "retention": 1}
        assert freshness.position == 9

    _run(test)


def test_changes_queued_behind_a_long_call_are_bounded() -> None:
    async def test(freshness: Freshness, core: CacheCore) -> None:
        async with core.session("s", principal="") as state:
            store = _store(core, state)
            freshness.stored(state, KEY, _put(store), DEPS)
        async with core.session("s", principal="") as state:
            freshness._apply([_change(n) for n in range(1, PENDING_MAX + 10)], PENDING_MAX + 9)
            assert len(Freshness.of(state).pending) <= PENDING_MAX
        assert store.peek(KEY) is None
        assert store.removals[digest_of(KEY)].detail == "too many changes while a call ran"

    _run(test)
