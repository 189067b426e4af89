"""The change log: triggers record plain SQL writes on every tracked table, on both backends.

Writes go through the driver itself (``sqlite3`` / ``psycopg``), as another
program's would. Also: the person version (etag) the triggers maintain, that
schema creation is idempotent, upgrades an older database, and is safe when
several starters race, and (PostgreSQL) one notification per statement.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from sesscache import changes
from sesscache.changes import Change, Op, read_changes
from sesscache.db import make_engine, prepare_database
from sesscache.fixtures import seed
from sesscache.models import Base
from tests.support.plain import connect, conninfo_params, run, run_all
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    prepare_database(engine, persons=3)
    try:
        yield engine
    finally:
        engine.dispose()


def head(engine: Engine) -> int:
    with engine.connect() as connection:
        value = connection.execute(text("SELECT max(id) FROM sesscache_change")).scalar()
    return int(value or 0)


def since(engine: Engine, after: int) -> list[Change]:
    with engine.connect() as connection:
        return read_changes(connection, after=after)


def test_plain_sql_on_every_table_is_logged(engine: Engine, database_url: str) -> None:
    before = head(engine)
    started = time.time()
    run_all(
        database_url,
        "INSERT INTO country (id, name) VALUES (90, 'Mexico')",
        "UPDATE country SET name = 'Mexico!' WHERE id = 90",
        "INSERT INTO city (id, name, country_id) VALUES (90, 'Monterrey', 90)",
        "UPDATE city SET name = 'Monterrey NL' WHERE id = 90",
        "INSERT INTO postal_code (id, code, city_id) VALUES (90, '64000', 90)",
        "UPDATE postal_code SET code = '64001' WHERE id = 90",
        "INSERT INTO person (id, name) VALUES (90, 'new person')",
        "UPDATE person SET name = 'renamed' WHERE id = 90",
        "INSERT INTO address (id, person_id, street, postal_code_id) VALUES (90, 90, 'Main', 90)",
        "UPDATE address SET street = 'Side' WHERE id = 90",
        "DELETE FROM address WHERE id = 90",
        "DELETE FROM person WHERE id = 90",
        "DELETE FROM postal_code WHERE id = 90",
        "DELETE FROM city WHERE id = 90",
        "DELETE FROM country WHERE id = 90",
    )
    logged = since(engine, before)
    assert [(c.table, c.op, c.row_id) for c in logged] == [
        ("country", Op.INSERT, 90),
        ("country", Op.UPDATE, 90),
        ("city", Op.INSERT, 90),
        ("city", Op.UPDATE, 90),
        ("postal_code", Op.INSERT, 90),
        ("postal_code", Op.UPDATE, 90),
        ("person", Op.INSERT, 90),
        ("person", Op.UPDATE, 90),
        ("address", Op.INSERT, 90),
        ("person", Op.UPDATE, 90),  # the address bumped its person's version
        ("address", Op.UPDATE, 90),
        ("person", Op.UPDATE, 90),
        ("address", Op.DELETE, 90),
        ("person", Op.UPDATE, 90),
        ("person", Op.DELETE, 90),
        ("postal_code", Op.DELETE, 90),
        ("city", Op.DELETE, 90),
        ("country", Op.DELETE, 90),
    ]
    ids = [c.id for c in logged]
    assert ids == sorted(set(ids))
    assert logged[0].old is None
    assert logged[0].new == {"id": 90, "name": "Mexico"}
    assert logged[7].old == {"id": 90, "name": "new person", "version": 1}
    assert logged[7].new == {"id": 90, "name": "renamed", "version": 2}
    assert logged[10].old == {"id": 90, "person_id": 90, "street": "Main", "postal_code_id": 90}
    assert logged[10].new == {"id": 90, "person_id": 90, "street": "Side", "postal_code_id": 90}
    assert logged[-1].new is None
    assert logged[-1].old == {"id": 90, "name": "Mexico!"}
    for change in logged:
        assert started - 5 <= change.committed_at <= time.time() + 5
        if engine.dialect.name == "postgresql":
            assert change.txid is not None
        else:
            assert change.txid is None


def version(url: str, person_id: int) -> int:
    connection = connect(url)
    try:
        rows = run(connection, f"SELECT version FROM person WHERE id = {int(person_id)}")  # noqa: S608
    finally:
        connection.close()
    return int(rows[0][0])


def test_the_person_version_is_an_etag_the_triggers_maintain(
    engine: Engine, database_url: str
) -> None:
    url = database_url
    run_all(url, "INSERT INTO person (id, name) VALUES (91, 'v')")
    assert version(url, 91) == 1
    run_all(url, "UPDATE person SET name = 'v2' WHERE id = 91")
    assert version(url, 91) == 2
    run_all(url, "UPDATE person SET name = name WHERE id = 91")
    assert version(url, 91) == 3
    run_all(url, "UPDATE person SET version = 10 WHERE id = 91")  # set explicitly: kept
    assert version(url, 91) == 10
    run_all(
        url, "INSERT INTO address (id, person_id, street, postal_code_id) VALUES (91, 91, 'a', 1)"
    )
    assert version(url, 91) == 11
    run_all(url, "UPDATE address SET street = 'b' WHERE id = 91")
    assert version(url, 91) == 12
    run_all(url, "INSERT INTO person (id, name) VALUES (92, 'w')")
    run_all(url, "UPDATE address SET person_id = 92 WHERE id = 91")  # moved: both bumped
    assert (version(url, 91), version(url, 92)) == (13, 2)
    run_all(url, "DELETE FROM address WHERE id = 91")
    assert (version(url, 91), version(url, 92)) == (13, 3)

    # Optimistic concurrency: the update naming the old version loses.
    connection = connect(url)
    try:
        first = connection.execute("UPDATE person SET name = 'x' WHERE id = 91 AND version = 13")
        assert first.rowcount == 1
        second = connection.execute("UPDATE person SET name = 'y' WHERE id = 91 AND version = 13")
        assert second.rowcount == 0
    finally:
        connection.close()
    assert version(url, 91) == 14


def dialect_of(engine: Engine) -> changes.Dialect:
    with engine.connect() as connection:
        return changes.dialect_of(connection)


def triggers(engine: Engine) -> frozenset[str]:
    with engine.connect() as connection:
        return changes._installed_triggers(connection, changes.dialect_of(connection))


def test_schema_creation_is_idempotent_and_repairs_a_dropped_trigger(
    engine: Engine, database_url: str
) -> None:
    dialect = dialect_of(engine)
    assert triggers(engine) == changes.trigger_names(dialect)
    assert prepare_database(engine, persons=3) == 0
    with engine.begin() as connection:
        assert changes.install(connection) == changes.InstallResult(
            added_version=False, triggers=False
        )
    drop = (
        "DROP TRIGGER sesscache_person_log ON person"
        if dialect == "postgresql"
        else "DROP TRIGGER sesscache_person_au"
    )
    run_all(database_url, drop)
    assert triggers(engine) != changes.trigger_names(dialect)
    with engine.begin() as connection:
        assert changes.install(connection).triggers
    assert triggers(engine) == changes.trigger_names(dialect)
    before = head(engine)
    run_all(database_url, "UPDATE person SET name = 'again' WHERE id = 1")
    assert [(c.table, c.op) for c in since(engine, before)] == [("person", Op.UPDATE)]


def test_an_existing_database_gets_the_version_column_and_the_log(
    fresh_database_url: str,
) -> None:
    engine = make_engine(fresh_database_url)
    try:
        with engine.begin() as connection:  # yesterday's schema and data, no change log
            Base.metadata.create_all(connection)
        with Session(engine) as session:
            seed(session, persons=2)
            session.commit()
        run_all(fresh_database_url, "ALTER TABLE person DROP COLUMN version")
        assert prepare_database(engine, persons=2) == 0
        assert version(fresh_database_url, 1) == 1
        run_all(fresh_database_url, "UPDATE person SET name = 'upgraded' WHERE id = 1")
        assert version(fresh_database_url, 1) == 2
        logged = since(engine, 0)
        assert [(c.table, c.op, c.row_id) for c in logged] == [("person", Op.UPDATE, 1)]
    finally:
        engine.dispose()


def test_concurrent_starters_create_the_schema_once(fresh_database_url: str) -> None:
    starters = 4
    barrier = threading.Barrier(starters)
    added: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        engine = make_engine(fresh_database_url)
        try:
            barrier.wait()
            added.append(prepare_database(engine, persons=4))
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(added)[:-1] == [0] * (starters - 1)
    assert sorted(added)[-1] > 0
    engine = make_engine(fresh_database_url)
    try:
        dialect = dialect_of(engine)
        assert triggers(engine) == changes.trigger_names(dialect)
        with engine.connect() as connection:
            assert (
                connection.execute(text("SELECT count(*) FROM sesscache_change_state")).scalar()
                == 1
            )
        before = head(engine)
        run_all(fresh_database_url, "UPDATE person SET name = 'once' WHERE id = 2")
        assert len(since(engine, before)) == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_notifies_once_per_statement_at_commit(postgres: PostgresServer) -> None:
    name = "t_notify_once"
    url = postgres.create_database(name)
    engine = make_engine(url)
    try:
        prepare_database(engine, persons=3)
        with (
            psycopg.connect(**conninfo_params(url), autocommit=True) as listener,
            psycopg.connect(**conninfo_params(url)) as writer,
        ):
            listener.execute(f"LISTEN {changes.CHANNEL}")
            writer.execute("UPDATE person SET name = name || '!'")  # three rows, one statement
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before the commit
            writer.commit()
            received = list(listener.notifies(timeout=5.0, stop_after=1))
            received += list(listener.notifies(timeout=0.2))
        assert len(received) == 1
        assert json.loads(received[0].payload)["table"] == "person"
    finally:
        engine.dispose()
        postgres.drop_database(name)
