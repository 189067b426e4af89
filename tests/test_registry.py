"""The session registry: sessions scoped by the caller's session id, and their lifecycle.

Shows that the scope comes from the context variable, not the thread: the
same scope key reaches the same Session from any thread, different keys (or
principals) reach different Sessions, and work handed to a thread pool with
``context_for`` runs against the right Session (and its cache); that asking
for the Session outside any scope raises ``NoScope``; that ephemeral
sessions are removed on release; that ``end`` reports whether the session
existed and how many cache keys it dropped; that ``max_sessions`` evicts the
least recently used idle session and raises ``RegistryFull`` when all are
busy; and that ``reap`` ends idle sessions (and drops expired entries from
the idle sessions it keeps) but never touches one in use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.region import CacheRegion
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sesscache import tracking
from sesscache.backend import store_for
from sesscache.caching import QueryCache
from sesscache.db import make_engine, prepare_database
from sesscache.fixtures import person_name
from sesscache.models import Person
from sesscache.queries import PersonQuery
from sesscache.regions import LOCAL_REGION, make_regions
from sesscache.registry import (
    Ended,
    Limits,
    NoScope,
    RegistryFull,
    ScopeKey,
    SessionRegistry,
    SessionState,
)
from sesscache.store import Description, SessionStore


def make_registry(limits: Limits | None = None) -> SessionRegistry:
    """A registry of unbound Sessions (scoping needs no database)."""
    return SessionRegistry(sessionmaker(), limits=limits)


@pytest.fixture
def registry() -> Iterator[SessionRegistry]:
    registry = make_registry()
    yield registry
    registry.close_all()


def session_of(registry: SessionRegistry, key: ScopeKey) -> Session:
    with registry.scope(key) as session:
        return session


def in_thread(registry: SessionRegistry, key: ScopeKey) -> Session:
    """The Session ``key`` reaches from a brand-new thread."""
    found: list[Session] = []
    thread = threading.Thread(target=lambda: found.append(session_of(registry, key)))
    thread.start()
    thread.join(timeout=30)
    assert len(found) == 1
    return found[0]


def has_session(registry: SessionRegistry, key: ScopeKey) -> bool:
    with registry.scope_if_exists(key) as session:
        return session is not None


# -- scope ------------------------------------------------------------------------------


def test_same_key_from_two_threads_reaches_the_same_session(registry: SessionRegistry) -> None:
    key = ("", "shared")
    first = in_thread(registry, key)
    second = in_thread(registry, key)
    assert first is second
    assert session_of(registry, key) is first  # and from this thread too


def test_different_keys_reach_different_sessions(registry: SessionRegistry) -> None:
    keys = [("", "a"), ("", "b"), ("other", "a")]
    sessions = [session_of(registry, key) for key in keys]
    assert len({id(s) for s in sessions}) == 3
    assert [session_of(registry, key) for key in keys] == sessions
    assert all(isinstance(store_for(s, create=False), SessionStore) for s in sessions)


def test_one_thread_reaches_whichever_session_its_scope_names(
    registry: SessionRegistry,
) -> None:
    with registry.scope(("", "outer")) as outer:
        with registry.scope(("", "inner")) as inner:
            assert registry.current_session() is inner
        assert registry.current_session() is outer
    assert inner is not outer
    with pytest.raises(NoScope):
        registry.current_session()


def test_no_scope_outside_any_scope(registry: SessionRegistry) -> None:
    with pytest.raises(NoScope, match="no session scope"):
        registry.current_session()
    region = make_regions(registry.current_session)[LOCAL_REGION]
    with pytest.raises(NoScope):
        region.get("k")
    # Nor in a fresh thread, whatever scope this thread had.
    errors: list[BaseException] = []

    def outside() -> None:
        try:
            registry.current_session()
        except NoScope as error:
            errors.append(error)

    with registry.scope(("", "mine")):
        thread = threading.Thread(target=outside)
        thread.start()
        thread.join(timeout=30)
    assert len(errors) == 1


def test_context_for_runs_work_in_a_pool_against_the_right_session(
    registry: SessionRegistry,
) -> None:
    keys = [("", f"s{i}") for i in range(8)]
    expected = {key: session_of(registry, key) for key in keys}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            key: pool.submit(registry.context_for(key).run, registry.current_session)
            for key in keys * 3
        }
        got = {key: future.result(timeout=30) for key, future in futures.items()}
    assert got == expected
    with pytest.raises(NoScope):  # the caller's own context is untouched
        registry.current_session()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    prepare_database(engine, persons=10)
    yield engine
    engine.dispose()


def test_pool_threads_cache_on_the_session_of_their_scope(engine: Engine) -> None:
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    registry = SessionRegistry(factory)
    QueryCache(make_regions(registry.current_session)).listen(factory)

    def work(number: int) -> tuple[list[tracking.Outcome], Person, Session]:
        query = PersonQuery(name=person_name(number), full=False)
        session = registry.current_session()
        with tracking.track() as tracker:
            found = [session.scalars(query.statement()).one() for _ in range(2)]
        assert found[0] is found[1]
        return [lookup.outcome for lookup in tracker.lookups], found[0], session

    try:
        keys = {("", f"s{n}"): n for n in range(1, 7)}
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {
                key: pool.submit(registry.context_for(key).run, work, number)
                for key, number in keys.items()
            }
            results = {key: future.result(timeout=30) for key, future in futures.items()}
        for key, (outcomes, person, session) in results.items():
            assert outcomes == [tracking.Outcome.MISS, tracking.Outcome.HIT]
            assert person.name == person_name(keys[key])
            with registry.scope(key) as own:
                assert session is own
                store = store_for(own, create=False)
                assert store is not None
                assert len(store) == 1
    finally:
        registry.close_all()


# -- lifecycle --------------------------------------------------------------------------


def put(registry: SessionRegistry, region: CacheRegion, state: SessionState, count: int) -> None:
    with registry.scope(state.key):
        for i in range(count):
            region.set(f"key-{i}", i)


def test_ephemeral_sessions_are_removed_on_release(registry: SessionRegistry) -> None:
    region = make_regions(registry.current_session)[LOCAL_REGION]
    one = registry.open(None, principal="p")
    two = registry.open(None, principal="p")
    assert one.ephemeral
    assert two.ephemeral
    assert one.key != two.key
    assert one.principal == "p"
    assert len(registry) == 0  # ephemeral sessions are not listed
    put(registry, region, one, 2)
    session = session_of(registry, one.key)
    assert has_session(registry, one.key)

    registry.acquire(one)  # a second user: not removed yet
    registry.release(one)
    assert not one.ended
    assert has_session(registry, one.key)
    registry.release(one)
    assert one.ended
    assert not has_session(registry, one.key)
    assert session_of(registry, one.key) is not session
    registry.release(two)
    assert two.ended
    assert registry.states() == []


def test_end_reports_keys_dropped_and_whether_it_existed(registry: SessionRegistry) -> None:
    region = make_regions(registry.current_session)[LOCAL_REGION]
    state = registry.open("s1", principal="p", peer="ipv4:127.0.0.1:1")
    assert (state.session_id, state.principal, state.peer) == ("s1", "p", "ipv4:127.0.0.1:1")
    assert registry.get("s1", principal="p") is state
    assert registry.get("s1") is None  # another principal's
    put(registry, region, state, 3)
    old = session_of(registry, state.key)
    registry.release(state)

    ended = registry.end(state)
    assert (ended.existed, ended.keys_dropped) == (True, 3)
    assert state.ended
    assert registry.get("s1", principal="p") is None
    assert not has_session(registry, state.key)
    again = registry.end(state)
    assert (again.existed, again.keys_dropped) == (False, 0)

    reopened = registry.open("s1", principal="p")
    assert reopened is not state
    with registry.scope(reopened.key) as session:
        assert session is not old
        assert region.get("key-0") is NO_VALUE
        assert len(region.backend.store()) == 0
    registry.release(reopened)


def test_end_of_a_session_never_used(registry: SessionRegistry) -> None:
    state = registry.open("unused")
    registry.release(state)
    assert registry.store_of(state) is None
    assert registry.end(state) == Ended(existed=True, keys_dropped=0)
    assert registry.get("unused") is None
    assert registry.end(state) == Ended(existed=False, keys_dropped=0)


def test_store_of_reports_the_session_cache(registry: SessionRegistry) -> None:
    region = make_regions(registry.current_session)[LOCAL_REGION]
    state = registry.open("s1")
    assert registry.store_of(state) is None
    put(registry, region, state, 2)
    store = registry.store_of(state)
    assert store is not None
    assert len(store) == 2
    assert store.max_entries == registry.limits.max_entries
    assert store.max_bytes == registry.limits.max_bytes
    registry.release(state)


def test_full_registry_evicts_the_least_recently_used_idle_session() -> None:
    registry = make_registry(Limits(max_sessions=2))
    try:
        region = make_regions(registry.current_session)[LOCAL_REGION]
        a = registry.open("a")
        put(registry, region, a, 1)
        registry.release(a)
        b = registry.open("b")
        put(registry, region, b, 1)
        registry.release(b)
        registry.release(registry.open("a"))  # a is now more recently used than b

        c = registry.open("c")
        assert registry.sessions_evicted == 1
        assert b.ended
        assert not a.ended
        assert not has_session(registry, b.key)
        assert has_session(registry, a.key)
        assert [s.session_id for s in registry.states()] == ["a", "c"]
        registry.release(c)
    finally:
        registry.close_all()


def test_full_registry_of_busy_sessions_refuses_a_new_one() -> None:
    registry = make_registry(Limits(max_sessions=2))
    try:
        a, b = registry.open("a"), registry.open("b")
        with pytest.raises(RegistryFull, match="maximum of 2 sessions"):
            registry.open("c")
        assert [s.session_id for s in registry.states()] == ["a", "b"]
        assert registry.sessions_evicted == 0
        assert not a.ended
        assert not b.ended
        assert registry.open("a") is a  # an existing session is still served
        registry.release(a)
        registry.release(a)
        c = registry.open("c")  # now a is idle and goes
        assert a.ended
        assert [s.session_id for s in registry.states()] == ["b", "c"]
        registry.release(b)
        registry.release(c)
    finally:
        registry.close_all()


def test_reap_ends_idle_sessions_but_never_one_in_use() -> None:
    registry = make_registry(Limits(idle_timeout=60.0))
    try:
        region = make_regions(registry.current_session)[LOCAL_REGION]
        idle = registry.open("idle")
        put(registry, region, idle, 2)
        registry.release(idle)
        busy = registry.open("busy")
        put(registry, region, busy, 2)
        now = time.monotonic()

        assert registry.reap(now=now) == []
        assert registry.reap(now=now + 59.0) == []
        assert registry.reap(now=now + 3600.0) == [idle]
        assert idle.ended
        assert not busy.ended
        assert registry.sessions_expired == 1
        assert not has_session(registry, idle.key)
        assert has_session(registry, busy.key)
        assert [s.session_id for s in registry.states()] == ["busy"]

        registry.release(busy)
        assert registry.reap(now=time.monotonic() + 30.0) == []  # just released
        assert registry.reap(now=time.monotonic() + 61.0) == [busy]
        assert registry.sessions_expired == 2
        assert len(registry) == 0
    finally:
        registry.close_all()


@dataclass(frozen=True)
class Expiring:
    """A payload that describes itself with an expiry, as cached query results do."""

    seconds: float

    def describe(self) -> Description:
        return Description(expiration_time=self.seconds)


def test_reap_expires_entries_of_idle_sessions_only() -> None:
    registry = make_registry(Limits(idle_timeout=60.0))
    try:
        stale = CachedValue(Expiring(1.0), {"ct": time.time() - 10, "v": 1})
        fresh = CachedValue(Expiring(3600.0), {"ct": time.time(), "v": 1})
        idle, busy = registry.open("idle"), registry.open("busy")
        for state in (idle, busy):
            session_of(registry, state.key)
            store = registry.store_of(state)
            assert store is not None
            store.put("stale", stale, "local_session")
            store.put("fresh", fresh, "local_session")
        registry.release(idle)

        assert registry.reap() == []  # nobody idle for a minute yet
        idle_store, busy_store = registry.store_of(idle), registry.store_of(busy)
        assert idle_store is not None
        assert busy_store is not None
        assert [e.key for e in idle_store] == ["fresh"]
        assert idle_store.expirations == 1
        assert [e.key for e in busy_store] == ["stale", "fresh"]  # in use: untouched
        assert busy_store.expirations == 0
        registry.release(busy)
    finally:
        registry.close_all()


def test_reap_without_idle_timeout_ends_nothing() -> None:
    registry = make_registry(Limits(idle_timeout=None))
    try:
        registry.release(registry.open("s"))
        assert registry.reap(now=time.monotonic() + 10**9) == []
        assert len(registry) == 1
    finally:
        registry.close_all()


def test_close_all_ends_every_session(registry: SessionRegistry) -> None:
    states = [registry.open(f"s{i}") for i in range(3)]
    for state in states:
        session_of(registry, state.key)
    registry.close_all()
    assert all(state.ended for state in states)
    assert len(registry) == 0
    assert not any(has_session(registry, state.key) for state in states)


def test_quota_per_principal_evicts_that_principals_own_sessions() -> None:
    """At its quota a principal ends its own least recently used idle session; at the
    server's limit, the principal holding the most sessions gives one up, never one
    holding fewer."""
    registry = make_registry(Limits(max_sessions=6, max_sessions_per_principal=4))
    try:
        alice = [registry.open(f"a{n}", principal="alice") for n in range(2)]
        for state in alice:
            registry.release(state)
        for n in range(4):
            registry.release(registry.open(f"b{n}", principal="bob"))
        assert len(registry) == 6
        registry.release(registry.open("b4", principal="bob"))  # bob at his quota
        assert [s.session_id for s in registry.states() if s.principal == "bob"] == [
            "b1",
            "b2",
            "b3",
            "b4",
        ]
        assert not any(state.ended for state in alice)
        registry.release(registry.open("a2", principal="alice"))  # server full: bob pays
        assert not any(state.ended for state in alice)
        assert registry.usage_of("bob")[2] == 3
        assert registry.usage_of("alice")[2] == 3
        assert registry.limits_hit == {}

        # Alice holds as many as bob: when all of bob's are busy, hers may go.
        busy = [registry.open(f"b{n}", principal="bob") for n in range(2, 5)]
        busy.append(registry.open("b9", principal="bob"))
        assert sum(state.ended for state in alice) == 1
        with pytest.raises(RegistryFull) as refused:  # bob at his quota, all busy
            registry.open("b10", principal="bob")
        assert refused.value.limit == "max_sessions_per_principal"
        # Alice now holds fewer than bob, so bob's next new session never ends hers.
        registry.limits = Limits(max_sessions=6, max_sessions_per_principal=10)
        with pytest.raises(RegistryFull) as refused:
            registry.open("b10", principal="bob")
        assert refused.value.limit == "max_sessions"
        assert registry.limits_hit == {"max_sessions_per_principal": 1, "max_sessions": 1}
        assert registry.usage_of("alice")[2] == 2
        for state in busy:
            registry.release(state)
    finally:
        registry.close_all()


def test_handles_are_looked_up_and_forgotten_with_their_session(registry: SessionRegistry) -> None:
    state = registry.open("s1", principal="p")
    registry.release(state)
    assert registry.by_handle(state.handle) is state
    assert registry.page(after_serial=0, limit=10) == [state]
    registry.end(state)
    assert registry.by_handle(state.handle) is None
    assert registry.page(after_serial=0, limit=10) == []


def test_totals_follow_every_store_and_trim_ends_the_heaviest_principals_session() -> None:
    registry = make_registry(Limits(max_cache_bytes=None))
    try:
        region = make_regions(registry.current_session)[LOCAL_REGION]
        light = registry.open("light", principal="alice")
        put(registry, region, light, 1)
        registry.release(light)
        heavy = [registry.open(f"h{n}", principal="bob") for n in range(3)]
        for state in heavy:
            put(registry, region, state, 3)
            registry.release(state)
        stores = [registry.store_of(state) for state in registry.states()]
        assert registry.entries == sum(len(s) for s in stores if s is not None) == 10
        assert registry.bytes == sum(s.bytes for s in stores if s is not None) > 0
        assert registry.trim() == 0  # no limit

        registry.limits = Limits(max_cache_bytes=registry.bytes - 1)
        assert registry.trim() == 1
        assert heavy[0].ended, "bob's least recently used session goes"
        assert not light.ended
        assert registry.limits_hit == {"max_cache_bytes": 1}
        assert registry.entries == 7
    finally:
        registry.close_all()
