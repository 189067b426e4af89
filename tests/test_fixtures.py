"""The fixture data and ``prepare_database``, on SQLite and PostgreSQL.

Shows that seeding is deterministic (two fresh databases get identical data,
however the person count was reached), idempotent (seeding twice adds
nothing; raising the count adds only the new persons, lowering it removes
nothing), has the expected shape (5 cities in 2 countries, ``person 01`` ..
``person 50`` with one address each), and that ``prepare_database`` run by
several threads, and by several processes, on one fresh database at once
neither crashes nor duplicates anything. (Several processes are tried on
PostgreSQL; SQLite's file lock is per open file, so threads already show it.)
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from sesscache.db import make_engine, prepare_database
from sesscache.fixtures import CITIES, DEFAULT_PERSONS, person_name, seed
from sesscache.models import Address, City, Country, Person, PostalCode
from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]

#: Rows the default fixtures consist of: countries, cities, postal codes, persons, addresses.
CODES = sum(len(codes) for _, _, codes in CITIES)
DEFAULT_ROWS = 2 + 5 + CODES + 2 * DEFAULT_PERSONS

Row = tuple[int, str, str, str, str, str]


@pytest.fixture
def new_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], str]]:
    """Make further fresh databases of ``backend`` for one test."""
    made: list[str] = []
    postgres: PostgresServer | None = None

    def make() -> str:
        nonlocal postgres
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'extra-{uuid.uuid4().hex[:8]}.db'}"
        if postgres is None:
            postgres = request.getfixturevalue("postgres")
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return postgres.create_database(name)

    yield make
    for name in made:
        assert postgres is not None
        postgres.drop_database(name)


@pytest.fixture
def engines() -> Iterator[Callable[[str], Engine]]:
    """Engines made by the test, all disposed of at the end."""
    made: list[Engine] = []

    def make(url: str) -> Engine:
        engine = make_engine(url)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def dump(engine: Engine) -> list[Row]:
    """Every person with its address, postal code, city and country, by person id."""
    statement = (
        select(Person.id, Person.name, Address.street, PostalCode.code, City.name, Country.name)
        .join(Address, Address.person_id == Person.id)
        .join(PostalCode, PostalCode.id == Address.postal_code_id)
        .join(City, City.id == PostalCode.city_id)
        .join(Country, Country.id == City.country_id)
        .order_by(Person.id, Address.id)
    )
    with Session(engine) as session:
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in session.execute(statement)]


def counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Country, City, PostalCode, Person, Address)
        }


def expected_counts(persons: int) -> dict[str, int]:
    return {
        "country": 2,
        "city": 5,
        "postal_code": CODES,
        "person": persons,
        "address": persons,
    }


def test_fixture_data_has_the_expected_shape(
    fresh_database_url: str, engines: Callable[[str], Engine]
) -> None:
    engine = engines(fresh_database_url)
    assert prepare_database(engine) == DEFAULT_ROWS == 129
    assert counts(engine) == expected_counts(50)
    rows = dump(engine)
    assert [row[1] for row in rows] == [person_name(n) for n in range(1, 51)]
    assert rows[0][1] == "person 01"
    assert rows[-1][1] == "person 50"
    assert [row[2] for row in rows] == [f"street {n:02d}" for n in range(1, 51)]
    country_of = {city: country for city, country, _ in CITIES}
    codes_of = {city: codes for city, _, codes in CITIES}
    for _, _, _, code, city, country in rows:
        assert country_of[city] == country
        assert code in codes_of[city]
    with Session(engine) as session:
        assert sorted(session.scalars(select(Country.name))) == ["Canada", "United States"]
        assert len(set(session.scalars(select(City.name)))) == 5
    # The choice of postal code varies between persons: it is not one constant.
    assert len({row[3] for row in rows}) > 5


def test_two_fresh_databases_get_identical_data(
    fresh_database_url: str, new_database: Callable[[], str], engines: Callable[[str], Engine]
) -> None:
    one, two = engines(fresh_database_url), engines(new_database())
    assert prepare_database(one) == prepare_database(two) == DEFAULT_ROWS
    assert dump(one) == dump(two)
    assert len(dump(one)) == 50


def test_seeding_twice_adds_nothing(
    fresh_database_url: str, engines: Callable[[str], Engine]
) -> None:
    engine = engines(fresh_database_url)
    assert prepare_database(engine) == DEFAULT_ROWS
    before = dump(engine)
    assert prepare_database(engine) == 0
    assert prepare_database(engine, persons=10) == 0  # lowering the count removes nothing
    assert dump(engine) == before
    assert counts(engine) == expected_counts(50)
    with Session(engine) as session, session.begin():
        assert seed(session) == 0


def test_raising_the_count_adds_only_new_persons(
    fresh_database_url: str, new_database: Callable[[], str], engines: Callable[[str], Engine]
) -> None:
    grown = engines(fresh_database_url)
    assert prepare_database(grown, persons=50) == DEFAULT_ROWS
    before = dump(grown)
    assert prepare_database(grown, persons=60) == 20  # ten persons, ten addresses
    after = dump(grown)
    assert after[:50] == before
    assert [row[1] for row in after[50:]] == [person_name(n) for n in range(51, 61)]
    assert counts(grown) == expected_counts(60)
    # Reaching 60 in two steps gives exactly what reaching it at once does.
    direct = engines(new_database())
    assert prepare_database(direct, persons=60) == DEFAULT_ROWS + 20
    assert dump(direct) == after


def test_negative_person_count_is_refused() -> None:
    with Session() as session, pytest.raises(ValueError, match="must not be negative"):
        seed(session, persons=-1)


def test_prepare_from_many_threads_at_once(
    fresh_database_url: str, engines: Callable[[str], Engine]
) -> None:
    starters = 6
    # One engine per starter, as separate server processes would have.
    starter_engines = [engines(fresh_database_url) for _ in range(starters)]
    barrier = threading.Barrier(starters)

    def start(engine: Engine) -> int:
        barrier.wait(timeout=30)
        return prepare_database(engine)

    with ThreadPoolExecutor(max_workers=starters) as pool:
        added = list(pool.map(start, starter_engines))
    assert sorted(added) == [0] * (starters - 1) + [DEFAULT_ROWS]
    check = engines(fresh_database_url)
    assert counts(check) == expected_counts(50)
    assert [row[1] for row in dump(check)] == [person_name(n) for n in range(1, 51)]


STARTER = """
import sys
from sesscache.db import make_engine, prepare_database
engine = make_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # start together
try:
    print(prepare_database(engine))
finally:
    engine.dispose()
"""


@pytest.fixture
def postgres_database(postgres: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database, whatever ``backend`` the module runs with."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.mark.postgres
def test_prepare_from_many_processes_at_once(
    postgres_database: str, engines: Callable[[str], Engine]
) -> None:
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, postgres_database],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    added: list[int] = []
    try:
        for starter in starters:  # every process imported and configured...
            assert starter.stdout is not None
            assert starter.stdout.readline() == "ready\n"
        for starter in starters:  # ...before any of them starts preparing
            assert starter.stdin is not None
            starter.stdin.write("go\n")
            starter.stdin.flush()
        for starter in starters:
            out, err = starter.communicate(timeout=60)
            assert starter.returncode == 0, err
            added.append(int(out))
    finally:
        for starter in starters:
            if starter.poll() is None:
                starter.kill()
                starter.communicate()
    assert sorted(added) == [0, 0, DEFAULT_ROWS]
    check = engines(postgres_database)
    assert counts(check) == expected_counts(50)
    assert [row[1] for row in dump(check)] == [person_name(n) for n in range(1, 51)]
