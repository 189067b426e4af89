"""Precision: a change invalidates exactly the cached results it can alter.

The property test runs real ``PersonQuery`` statements on SQLite and a real
PostgreSQL, indexes their dependencies, applies random plain-SQL writes
(inserts, renames, no-op updates and deletes of persons; new, edited, moved
and deleted addresses; reference table edits), reads the changes the
triggers logged, and compares :meth:`DependencyIndex.affected` with the
queries run again:

- missed invalidations (a result changed, its key not affected): 0, always;
- false invalidations (affected, result unchanged) for person and address
  writes: 0, measured over every example and printed. Reference tables are
  coarse by design (module docstring of :mod:`sesscache.precision`).

Each example runs inside one transaction that is rolled back, so examples
start from the same seeded database; the change rows written inside it are
visible to that transaction. Plus unit tests of the interval index against
brute force, and of the range and page semantics.
"""

# ruff: noqa: S608 - the writes are literal SQL built from generated integers and fixed names.

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sesscache.changes import Change, Op, read_changes
from sesscache.db import make_engine, prepare_database
from sesscache.models import Person
from sesscache.precision import (
    Dependencies,
    DependencyIndex,
    IntervalIndex,
    NameRange,
    names_sort_by_codepoint,
)
from sesscache.queries import PersonQuery

PERSONS = 6
NAMES = ["person 01", "person 03", "person 035", "person 06", "anna", "zed", "person 1", "b"]
FIRSTS = [None, "", "a", "person 02", "person 04"]
LASTS = [None, "person 04", "person 05", "person 1", "z"]


def sqlite_engine(url: str) -> Engine:
    """An engine whose transactions and savepoints are SQLite's own (the pysqlite recipe)."""
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    prepared = make_engine(database_url)
    prepare_database(prepared, persons=PERSONS)
    prepared.dispose()
    engine = (
        sqlite_engine(database_url)
        if database_url.startswith("sqlite")
        else make_engine(database_url)
    )
    try:
        yield engine
    finally:
        engine.dispose()


Result = tuple[tuple[Any, ...], ...]


def run_query(connection: Connection, query: PersonQuery) -> tuple[Result, Dependencies]:
    """The result as the cache would serve it, and its dependencies."""
    with Session(bind=connection) as session:
        persons: Sequence[Person] = (
            session.execute(query.statement(cached=False)).unique().scalars().all()
        )
        rows: list[tuple[Any, ...]] = []
        address_ids: list[int] = []
        for person in persons:
            addresses: tuple[tuple[Any, ...], ...] = ()
            if query.full:
                addresses = tuple((a.id, a.street, a.postal_code_id) for a in person.addresses)
                address_ids.extend(a.id for a in person.addresses)
            rows.append((person.id, person.name, person.version, addresses))
        deps = Dependencies.for_person_query(query, [p.id for p in persons], address_ids)
    return tuple(rows), deps


@dataclass(frozen=True)
class Write:
    """One random write: its kind (``person`` / ``address`` / ``reference``) and SQL."""

    kind: str
    statements: tuple[str, ...]


person_ids = st.integers(1, PERSONS + 3)
address_ids = st.integers(1, PERSONS + 4)
new_address_ids = st.integers(PERSONS + 1, PERSONS + 4)
names = st.sampled_from(NAMES)

writes = st.one_of(
    st.builds(
        lambda i, n: Write("person", (f"INSERT INTO person (id, name) VALUES ({i}, '{n}')",)),
        person_ids,
        names,
    ),
    st.builds(
        lambda i, n: Write("person", (f"UPDATE person SET name = '{n}' WHERE id = {i}",)),
        person_ids,
        names,
    ),
    st.builds(
        lambda i: Write("person", (f"UPDATE person SET name = name WHERE id = {i}",)), person_ids
    ),
    st.builds(
        lambda i: Write(
            "person",
            (f"DELETE FROM address WHERE person_id = {i}", f"DELETE FROM person WHERE id = {i}"),
        ),
        person_ids,
    ),
    st.builds(
        lambda a, p: Write(
            "address",
            (
                "INSERT INTO address (id, person_id, street, postal_code_id) "
                f"VALUES ({a}, {p}, 'new street', 1)",
            ),
        ),
        new_address_ids,
        person_ids,
    ),
    st.builds(
        lambda a: Write("address", (f"UPDATE address SET street = 'edited' WHERE id = {a}",)),
        address_ids,
    ),
    st.builds(
        lambda a, p: Write("address", (f"UPDATE address SET person_id = {p} WHERE id = {a}",)),
        address_ids,
        person_ids,
    ),
    st.builds(
        lambda a, c: Write("address", (f"UPDATE address SET postal_code_id = {c} WHERE id = {a}",)),
        address_ids,
        st.integers(1, 5),
    ),
    st.builds(lambda a: Write("address", (f"DELETE FROM address WHERE id = {a}",)), address_ids),
    st.builds(
        lambda t: Write("reference", (t,)),
        st.sampled_from(
            [
                "UPDATE postal_code SET code = code || 'x' WHERE id = 1",
                "UPDATE city SET name = name || 'x' WHERE id = 2",
                "UPDATE country SET name = name || 'x' WHERE id = 1",
            ]
        ),
    ),
)

queries = st.builds(
    PersonQuery,
    name=st.one_of(st.none(), names),
    first=st.sampled_from(FIRSTS),
    last=st.sampled_from(LASTS),
    ids=st.lists(person_ids, max_size=3, unique=True).map(lambda ids: tuple(sorted(ids))),
    after_id=st.integers(0, 3),
    limit=st.integers(1, 4),
    full=st.booleans(),
)


@dataclass
class Tally:
    writes: int = 0
    checked: int = 0
    changed: int = 0
    false_invalidations: int = 0
    coarse: int = 0


def head(connection: Connection) -> int:
    return int(connection.execute(text("SELECT max(id) FROM sesscache_change")).scalar() or 0)


def check(
    connection: Connection, query_list: list[PersonQuery], write_list: list[Write], tally: Tally
) -> None:
    """One example: cache the queries, apply the writes one by one, compare."""
    index = DependencyIndex[int](codepoint_names=names_sort_by_codepoint(connection))
    before: dict[int, Result] = {}
    for key, query in enumerate(query_list):
        before[key], deps = run_query(connection, query)
        index.add(key, deps)
    position = head(connection)
    for write in write_list:
        savepoint = connection.begin_nested()
        try:
            for statement in write.statements:
                connection.execute(text(statement))
        except DBAPIError:
            savepoint.rollback()
            continue
        savepoint.commit()
        changes: list[Change] = read_changes(connection, after=position)
        if changes:
            position = changes[-1].id
        affected = index.affected_by(changes)
        after: dict[int, Result] = {}
        for key, query in enumerate(query_list):
            after[key], deps = run_query(connection, query)
            if key in affected:
                index.add(key, deps)  # the cache stores the new result
        changed = {key for key in before if before[key] != after[key]}
        assert changed <= affected, f"missed {changed - affected} after {write}"
        tally.writes += 1
        tally.checked += len(query_list)
        tally.changed += len(changed)
        if write.kind == "reference":
            tally.coarse += len(affected - changed)
        else:
            tally.false_invalidations += len(affected - changed)
            assert affected == changed, f"false {affected - changed} after {write}"
        before = after


def test_affected_is_exactly_what_changed(
    engine: Engine, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()

    @settings(
        max_examples=40 if backend == "sqlite" else 20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        query_list=st.lists(queries, min_size=4, max_size=8),
        write_list=st.lists(writes, min_size=1, max_size=6),
    )
    def example(query_list: list[PersonQuery], write_list: list[Write]) -> None:
        with engine.connect() as connection:
            outer = connection.begin()
            try:
                check(connection, query_list, write_list, tally)
            finally:
                outer.rollback()

    example()
    with capsys.disabled():
        print(
            f"\n[precision, {backend}] {tally.writes} writes applied to cached results: "
            f"{tally.checked} checks, {tally.changed} results changed, "
            f"person/address false invalidations {tally.false_invalidations}, "
            f"reference-table coarse invalidations {tally.coarse}"
        )
    assert tally.writes > 50
    assert tally.false_invalidations == 0


# -- units ---------------------------------------------------------------------------------


intervals = st.tuples(
    st.one_of(st.none(), st.integers(0, 12)), st.one_of(st.none(), st.integers(0, 12))
)


@settings(max_examples=150, deadline=None)
@given(
    operations=st.lists(st.tuples(st.booleans(), intervals), max_size=40),
    points=st.lists(st.integers(-1, 13), min_size=1, max_size=10),
    min_buffer=st.sampled_from([0, 1, 3, 32]),
)
def test_interval_index_agrees_with_brute_force(
    operations: list[tuple[bool, tuple[int | None, int | None]]],
    points: list[int],
    min_buffer: int,
) -> None:
    index = IntervalIndex[int](min_buffer=min_buffer)
    counts: dict[tuple[int | None, int | None], int] = {}
    for add, (lo, hi) in operations:
        if lo is not None and hi is not None and lo >= hi:
            continue
        if add:
            index.add(lo, hi)
            counts[(lo, hi)] = counts.get((lo, hi), 0) + 1
        elif counts.get((lo, hi)):
            index.remove(lo, hi)
            counts[(lo, hi)] -= 1
            if not counts[(lo, hi)]:
                del counts[(lo, hi)]
        for point in points:
            expected = {
                (lo_, hi_)
                for (lo_, hi_) in counts
                if (lo_ is None or lo_ <= point) and (hi_ is None or point < hi_)
            }
            assert index.stab(point) == expected
    assert len(index) == len(counts)


def person_change(
    op: Op, old: dict[str, Any] | None, new: dict[str, Any] | None, change_id: int = 1
) -> Change:
    row = new or old
    assert row is not None
    return Change(change_id, "person", op, int(row["id"]), old, new, 0.0)


def test_inclusive_ranges_and_pages() -> None:
    assert "person 05" in NameRange.inclusive("person 01", "person 05")
    assert "person 050" not in NameRange.inclusive("person 01", "person 05")
    assert "person 00" not in NameRange.inclusive("person 01", None)
    index = DependencyIndex[str]()
    # A full page of ids 1..3 (limit 2 fetched 3 rows): id 4 cannot enter it.
    index.add("full", Dependencies.for_person_query(PersonQuery(limit=2), [1, 2, 3]))
    index.add("open", Dependencies.for_person_query(PersonQuery(limit=5), [1, 2, 3]))
    index.add(
        "range",
        Dependencies.for_person_query(PersonQuery(first="b", last="c", limit=5), [2]),
    )
    index.add("named", Dependencies.for_person_query(PersonQuery(name="zed"), []))
    inserted = person_change(Op.INSERT, None, {"id": 4, "name": "bob", "version": 1})
    assert index.affected(inserted) == {"open", "range"}
    renamed = person_change(
        Op.UPDATE, {"id": 9, "name": "x", "version": 1}, {"id": 9, "name": "zed", "version": 2}
    )
    assert index.affected(renamed) == {"open", "named"}
    index.discard("open")
    index.discard("range")
    assert index.affected(inserted) == set()
    assert len(index) == 2


def test_reference_tables_are_coarse_and_rows_exact() -> None:
    index = DependencyIndex[str]()
    index.add("full", Dependencies.for_person_query(PersonQuery(full=True), [1], [1]))
    index.add("bare", Dependencies.for_person_query(PersonQuery(full=False), [1]))
    index.add("bit", Dependencies(rows=frozenset({("postal_code", 7)})))
    change = Change(1, "postal_code", Op.UPDATE, 7, {"id": 7}, {"id": 7}, 0.0)
    assert index.affected(change) == {"full", "bit"}
    other = Change(2, "postal_code", Op.UPDATE, 8, {"id": 8}, {"id": 8}, 0.0)
    assert index.affected(other) == {"full"}


def test_unknown_collation_makes_ranges_coarse() -> None:
    index = DependencyIndex[str](codepoint_names=False)
    index.add("range", Dependencies.for_person_query(PersonQuery(first="b", last="c"), []))
    change = person_change(Op.INSERT, None, {"id": 4, "name": "zzz", "version": 1})
    assert index.affected(change) == {"range"}


def build(entries: int, rng: random.Random) -> DependencyIndex[int]:
    """An index of ``entries`` results of every shape, over a wide name and id space."""
    index = DependencyIndex[int]()
    for key in range(entries):
        name = f"n{rng.randrange(10**9):09d}"
        person = rng.randrange(10**9)
        shapes = (
            PersonQuery(name=name),
            PersonQuery(first=name, last=name + "5"),
            PersonQuery(ids=(rng.randrange(10**9),)),
            PersonQuery(
                after_id=person - 1, limit=1
            ),  # a page: the window (person - 1, person + 1]
        )
        query = shapes[key % len(shapes)]
        index.add(key, Dependencies.for_person_query(query, [person, person + 1], [person]))
    return index


def seconds_per_lookup(index: DependencyIndex[int], rng: random.Random) -> float:
    changes = [
        person_change(
            Op.UPDATE,
            {"id": rng.randrange(10**9), "name": f"n{rng.randrange(10**9):09d}", "version": 1},
            {"id": rng.randrange(10**9), "name": f"n{rng.randrange(10**9):09d}", "version": 2},
        )
        for _ in range(300)
    ]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for change in changes:
            index.affected(change)
        best = min(best, time.perf_counter() - started)
    return best / len(changes)


def test_lookups_are_sub_linear_in_the_number_of_entries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(12)
    small = seconds_per_lookup(build(1_000, rng), rng)
    large = seconds_per_lookup(build(16_000, rng), rng)
    with capsys.disabled():
        print(
            f"\n[precision] affected() per person change: {small * 1e6:.1f} us with 1,000 "
            f"entries, {large * 1e6:.1f} us with 16,000"
        )
    assert large < small * 6  # linear would be 16 times; loose for a shared machine
