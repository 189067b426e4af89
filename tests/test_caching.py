"""Query caching on a real database (SQLite and PostgreSQL), as the dogpile_caching example shows.

Shows, for both database backends: a ``FromCache`` hit from the session-local
region returns the very objects of the session (``is``) and emits no SQL
(counted both by :func:`sesscache.tracking.track` and by an independent
``before_cursor_execute`` listener); removing a session drops its cache, so
the next query is a miss emitting SQL again; ``RelationshipCache`` serves the
postal code, city and country of a second session's addresses from the shared
``default`` region, merged into that session, so the second session emits one
statement only; ``invalidate`` removes exactly one key; ``expiration_time``
and ``ignore_expiration`` are obeyed; keys are stable for equal statements and
differ with the parameters; and the filters of ``PersonQuery.statement`` return
the right persons, cached or not.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache.region import CacheRegion
from sqlalchemy import Engine, bindparam, event, inspect, select
from sqlalchemy.orm import Session, object_session, sessionmaker

from sesscache import tracking
from sesscache.backend import store_for
from sesscache.caching import CachedResult, FromCache, QueryCache
from sesscache.db import make_engine, prepare_database
from sesscache.fixtures import person_name
from sesscache.models import Address, Person
from sesscache.queries import PersonQuery
from sesscache.regions import LOCAL_REGION, SHARED_REGION, RegionSettings, make_regions
from sesscache.registry import SessionRegistry
from sesscache.store import SessionStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    """The module's database (only read by these tests), schema made and seeded."""
    engine = make_engine(database_url)
    prepare_database(engine)
    yield engine
    engine.dispose()


@dataclass
class Stack:
    """The library wired up as the server wires it."""

    engine: Engine
    registry: SessionRegistry
    regions: dict[str, CacheRegion]
    cache: QueryCache

    def store(self, session: Session) -> SessionStore:
        store = store_for(session, create=False)
        assert store is not None
        return store


@pytest.fixture
def make_stack(engine: Engine) -> Iterator[Callable[..., Stack]]:
    registries: list[SessionRegistry] = []

    def make(settings: RegionSettings | None = None) -> Stack:
        factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
        registry = SessionRegistry(factory)
        registries.append(registry)
        regions = make_regions(registry.current_session, settings)
        cache = QueryCache(regions)
        cache.listen(factory)
        return Stack(engine, registry, regions, cache)

    yield make
    for registry in registries:
        registry.close_all()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@dataclass
class Measured:
    """What a block did: the tracker's view and the raw statements the engine ran."""

    tracker: tracking.CallTracker
    statements: list[str]

    @property
    def outcomes(self) -> list[tuple[str, tracking.Outcome]]:
        return [(lookup.region, lookup.outcome) for lookup in self.tracker.lookups]


@contextmanager
def measure(engine: Engine) -> Iterator[Measured]:
    """Count SQL two ways: the library's tracker and our own cursor listener."""
    statements: list[str] = []

    def listener(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        with tracking.track() as tracker:
            yield Measured(tracker, statements)
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def persons(session: Session, query: PersonQuery, *, cached: bool = True) -> list[Person]:
    return list(session.scalars(query.statement(cached=cached)).unique())


def names(found: Sequence[Person]) -> list[str]:
    return [p.name for p in found]


def objects_of(row: Any) -> Sequence[Any]:
    return tuple(row) if isinstance(row, Sequence) else (row,)


MISS = (LOCAL_REGION, tracking.Outcome.MISS)
HIT = (LOCAL_REGION, tracking.Outcome.HIT)


# -- the session-local region ---------------------------------------------------------


def test_hit_is_the_session_object_and_emits_no_sql(stack: Stack) -> None:
    query = PersonQuery(first=person_name(10), last=person_name(12))
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as miss:
            first = persons(session, query)
        assert names(first) == [person_name(n) for n in (10, 11, 12)]
        assert miss.outcomes == [MISS]
        assert miss.tracker.sql_statements == len(miss.statements) == 1

        with measure(stack.engine) as hit:
            second = persons(session, query)
        assert hit.outcomes == [HIT]
        assert hit.tracker.sql_statements == 0
        assert hit.statements == []
        assert len(second) == 3
        for cached, original in zip(second, first, strict=True):
            assert cached is original
            assert object_session(cached) is session
            assert session.get(Person, cached.id) is cached
        # The entry holds the identity-map objects themselves.
        entry = stack.store(session).peek(hit.tracker.lookups[0].key)
        assert entry is not None
        payload = entry.value.payload
        assert isinstance(payload, CachedResult)
        assert entry.rows == 3
        cached_objects = {id(obj) for row in payload.frozen.data for obj in objects_of(row)}
        assert {id(p) for p in first} <= cached_objects


def test_uncached_statement_always_emits_sql(stack: Stack) -> None:
    query = PersonQuery(name=person_name(5), full=False)
    with stack.registry.scope(("", "s1")) as session:
        for _ in range(2):
            with measure(stack.engine) as done:
                assert names(persons(session, query, cached=False)) == [person_name(5)]
            assert done.outcomes == []
            assert done.tracker.sql_statements == len(done.statements) == 1
        assert len(stack.store(session)) == 0


def test_ending_the_session_drops_its_cache(stack: Stack) -> None:
    registry = stack.registry
    query = PersonQuery(name=person_name(7))
    state = registry.open("s1")
    with registry.scope(state.key) as session:
        old = persons(session, query)
        with measure(stack.engine) as hit:
            persons(session, query)
        assert hit.outcomes == [HIT]
    registry.release(state)
    ended = registry.end(state)
    assert ended.existed
    assert ended.keys_dropped == 1
    assert inspect(old[0]).detached

    state = registry.open("s1")
    with registry.scope(state.key) as fresh:
        assert fresh is not session
        with measure(stack.engine) as again:
            new = persons(fresh, query)
        assert again.outcomes == [MISS]
        assert again.tracker.sql_statements == len(again.statements) == 1
        assert new[0] is not old[0]
        assert new[0].name == old[0].name
    registry.release(state)


def test_scoped_remove_drops_the_cache(stack: Stack) -> None:
    query = PersonQuery(name=person_name(8))
    with stack.registry.scope(("", "s1")) as session:
        persons(session, query)
        store = stack.store(session)
        assert len(store) == 1
        stack.registry.scoped.remove()
    with stack.registry.scope(("", "s1")) as fresh:
        assert fresh is not session
        with measure(stack.engine) as again:
            persons(fresh, query)
        assert again.outcomes == [MISS]
        assert len(again.statements) == 1
        assert stack.store(fresh) is not store


def test_sessions_do_not_share_the_local_region(stack: Stack) -> None:
    query = PersonQuery(name=person_name(9))
    with stack.registry.scope(("", "one")) as one:
        in_one = persons(one, query)
    with stack.registry.scope(("", "two")) as two, measure(stack.engine) as done:
        in_two = persons(two, query)
    assert done.outcomes[0] == MISS
    assert in_two[0] is not in_one[0]
    assert object_session(in_two[0]) is two


# -- the shared region ------------------------------------------------------------------


def test_address_bits_come_from_the_shared_region(stack: Stack) -> None:
    query = PersonQuery(first=person_name(1), last=person_name(6))

    def bits(found: Sequence[Person]) -> list[Address]:
        addresses = [address for person in found for address in person.addresses]
        assert len(addresses) == 6
        return addresses

    with stack.registry.scope(("", "first")) as first, measure(stack.engine) as filling:
        first_addresses = bits(persons(first, query))
        first_view = [(a.postal_code.code, a.city.name, a.country.name) for a in first_addresses]
    shared_misses = [o for o in filling.outcomes if o[0] == SHARED_REGION]
    assert shared_misses
    assert {o[1] for o in shared_misses} == {tracking.Outcome.MISS}
    assert filling.tracker.sql_statements == len(filling.statements) == 1 + len(shared_misses)

    with stack.registry.scope(("", "second")) as second, measure(stack.engine) as served:
        second_addresses = bits(persons(second, query))
        second_view = [(a.postal_code.code, a.city.name, a.country.name) for a in second_addresses]
    # Exactly one statement: the person + addresses query; the rest is cached.
    assert served.tracker.sql_statements == len(served.statements) == 1
    assert "person" in served.statements[0]
    assert "address" in served.statements[0]
    assert served.outcomes[0] == MISS
    shared = [o for o in served.outcomes if o[0] == SHARED_REGION]
    assert shared
    assert {o[1] for o in shared} == {tracking.Outcome.HIT}
    assert second_view == first_view
    assert {country for _, _, country in second_view} <= {"United States", "Canada"}

    for mine, theirs in zip(second_addresses, first_addresses, strict=True):
        for attribute in ("postal_code", "city", "country"):
            merged, original = getattr(mine, attribute), getattr(theirs, attribute)
            assert merged is not original
            assert object_session(merged) is second
            assert object_session(original) is first


# -- invalidation, expiry --------------------------------------------------------------


def test_invalidate_removes_exactly_one_key(stack: Stack) -> None:
    ten, eleven = PersonQuery(name=person_name(10)), PersonQuery(name=person_name(11))
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as filled:
            persons(session, ten)
            persons(session, eleven)
        ten_key, eleven_key = (lookup.key for lookup in filled.tracker.lookups)
        store = stack.store(session)
        assert {entry.key for entry in store} == {ten_key, eleven_key}

        removed = stack.cache.invalidate(ten.statement(), FromCache(LOCAL_REGION))
        assert removed == ten_key
        assert {entry.key for entry in store} == {eleven_key}

        with measure(stack.engine) as after:
            persons(session, ten)
            persons(session, eleven)
        assert after.outcomes == [MISS, HIT]
        assert len(after.statements) == 1


def test_invalidate_with_own_cache_key(stack: Stack) -> None:
    option = FromCache(LOCAL_REGION, cache_key="my key")
    statement = select(Person).where(Person.name == person_name(3)).options(option)
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as done:
            session.scalars(statement).all()
        assert done.tracker.lookups[0].key == "my key"
        assert "my key" in stack.store(session)
        assert stack.cache.invalidate(statement, option) == "my key"
        assert "my key" not in stack.store(session)


def test_unknown_region_is_an_error(stack: Stack) -> None:
    statement = select(Person).options(FromCache("nowhere"))
    with (
        stack.registry.scope(("", "s1")) as session,
        pytest.raises(ValueError, match="no cache region named 'nowhere'"),
    ):
        session.scalars(statement).all()


def _named(number: int, option: FromCache) -> Any:
    return select(Person).where(Person.name == person_name(number)).options(option)


def test_expiration_time_of_the_option_is_respected(stack: Stack) -> None:
    statement = _named(4, FromCache(LOCAL_REGION, expiration_time=0.3))
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as fresh:
            session.scalars(statement).all()
            session.scalars(statement).all()
        assert fresh.outcomes == [MISS, HIT]
        (entry,) = stack.store(session)
        assert entry.expires_at == pytest.approx(entry.stored_at + 0.3)

        time.sleep(0.35)
        store = stack.store(session)
        assert store.expire() == [entry]
        assert store.expirations == 1
        with measure(stack.engine) as stale:
            session.scalars(statement).all()
        assert stale.outcomes == [MISS]
        assert len(stale.statements) == 1


def test_expiration_time_of_the_region_is_respected(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(RegionSettings(local_expiration=0.2))
    regional = _named(5, FromCache(LOCAL_REGION))
    forever = _named(6, FromCache(LOCAL_REGION, expiration_time=-1))
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as fresh:
            session.scalars(regional).all()
            session.scalars(forever).all()
            session.scalars(regional).all()
        assert fresh.outcomes == [MISS, MISS, HIT]
        time.sleep(0.25)
        with measure(stack.engine) as later:
            session.scalars(regional).all()
            session.scalars(forever).all()
        assert later.outcomes == [MISS, HIT]
        assert len(later.statements) == 1


def test_ignore_expiration_serves_a_stale_value(stack: Stack) -> None:
    strict = _named(12, FromCache(LOCAL_REGION, expiration_time=0.05))
    lenient = _named(13, FromCache(LOCAL_REGION, expiration_time=0.05, ignore_expiration=True))
    with stack.registry.scope(("", "s1")) as session:
        with measure(stack.engine) as filled:
            old = session.scalars(lenient).one()
            session.scalars(strict).one()
        assert filled.outcomes == [MISS, MISS]
        time.sleep(0.1)
        with measure(stack.engine) as later:
            assert session.scalars(lenient).one() is old
            session.scalars(strict).one()
        assert later.outcomes == [HIT, MISS]
        assert later.tracker.sql_statements == len(later.statements) == 1


# -- keys -------------------------------------------------------------------------------


def test_keys_are_stable_and_follow_the_parameters() -> None:
    cache = QueryCache({})

    def key(query: PersonQuery) -> str:
        return cache.key_for(query.statement()).key

    base = PersonQuery(name=person_name(1))
    assert key(base) == key(PersonQuery(name=person_name(1)))
    assert QueryCache({}).key_for(base.statement()).key == key(base)  # not per instance
    variants = [
        base,
        PersonQuery(name=person_name(2)),
        PersonQuery(name=person_name(1), limit=10),
        PersonQuery(name=person_name(1), after_id=3),
        PersonQuery(name=person_name(1), full=False),
        PersonQuery(ids=(1, 2)),
        PersonQuery(ids=(1, 3)),
        PersonQuery(first=person_name(1)),
        PersonQuery(last=person_name(1)),
    ]
    assert len({key(q) for q in variants}) == len(variants)

    info = cache.key_for(PersonQuery(name=person_name(2), limit=4).statement())
    assert info.key.startswith(info.statement)
    assert sorted(info.parameters.values(), key=str) == [5, person_name(2)]

    by_parameter = select(Person).where(Person.name == bindparam("wanted"))
    one = cache.key_for(by_parameter, {"wanted": "a"})
    assert one == cache.key_for(by_parameter, {"wanted": "a"})
    assert one.key != cache.key_for(by_parameter, {"wanted": "b"}).key
    assert one.parameters == {"wanted": "a"}


def test_keys_are_the_same_in_another_process() -> None:
    program = (
        "from sesscache.caching import QueryCache\n"
        "from sesscache.queries import PersonQuery\n"
        "print(QueryCache({}).key_for(PersonQuery(ids=(4, 2), after_id=1).statement()).key)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    here = QueryCache({}).key_for(PersonQuery(ids=(4, 2), after_id=1).statement()).key
    assert done.stdout == here + "\n"


def test_executed_key_is_the_computed_key(stack: Stack) -> None:
    query = PersonQuery(first=person_name(20), limit=3)
    with stack.registry.scope(("", "s1")) as session, measure(stack.engine) as done:
        persons(session, query)
    assert done.tracker.lookups[0].key == stack.cache.key_for(query.statement()).key


# -- PersonQuery ------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [True, False])
def test_person_query_filters(stack: Stack, cached: bool) -> None:
    with stack.registry.scope(("", "s1")) as session:
        ids = {p.name: p.id for p in session.scalars(select(Person))}

        def run(query: PersonQuery) -> list[str]:
            return names(persons(session, query, cached=cached))

        assert run(PersonQuery(name=person_name(17))) == [person_name(17)]
        assert run(PersonQuery(name="nobody")) == []
        assert run(PersonQuery(first=person_name(48))) == [person_name(n) for n in (48, 49, 50)]
        assert run(PersonQuery(last=person_name(2))) == [person_name(1), person_name(2)]
        assert run(PersonQuery(first=person_name(20), last=person_name(22))) == [
            person_name(n) for n in (20, 21, 22)
        ]
        wanted = (ids[person_name(30)], ids[person_name(3)], ids[person_name(44)])
        assert run(PersonQuery(ids=wanted)) == [person_name(n) for n in (3, 30, 44)]
        assert run(PersonQuery(ids=wanted, first=person_name(4))) == [
            person_name(30),
            person_name(44),
        ]
        # limit: one row more than the page, to tell whether more follow.
        assert run(PersonQuery(limit=4)) == [person_name(n) for n in range(1, 6)]
        assert run(PersonQuery(after_id=ids[person_name(45)], limit=10)) == [
            person_name(n) for n in range(46, 51)
        ]

        walked: list[str] = []
        after = 0
        while True:
            page = persons(session, PersonQuery(after_id=after, limit=7), cached=cached)
            walked += names(page[:7])
            if len(page) <= 7:
                break
            after = page[6].id
        assert walked == [person_name(n) for n in range(1, 51)]

    with stack.registry.scope(("", "s2")) as session:
        thin = persons(session, PersonQuery(name=person_name(2), full=False), cached=cached)
        assert "addresses" not in thin[0].__dict__
        full = persons(session, PersonQuery(name=person_name(1)), cached=cached)
        assert "addresses" in full[0].__dict__
        assert len(full[0].addresses) == 1
