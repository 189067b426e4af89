"""CreatePerson, UpdatePerson, DeletePerson end to end: real servers, the real client,
SQLite and PostgreSQL.

Every test makes its own persons (unique names), so tests share the module's
server and database without meeting. What the database holds is read with
plain SQL, never through the server.

Covered: each error status (INVALID_ARGUMENT naming the field, NOT_FOUND,
ALREADY_EXISTS, ABORTED for a stale etag and for a real race, UNAVAILABLE
with the database down), nothing half-written, the writer role, the identity
case (a street changed in session S: S's cached query is still a HIT without
SQL and shows the new street), a rename, a create and a delete invalidating
S's entries, plain SQL still working with the new ``version`` column, and the
``create`` / ``update`` / ``delete`` commands.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import IntegrityError

from sesscache import changes
from sesscache.db import make_engine, prepare_database
from sesscache_client import (
    Aborted,
    AlreadyExists,
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SesscacheError,
    Session,
    SessionNotFound,
    Unavailable,
)
from sesscache_client.cli import EXIT_ERROR, EXIT_INVALID_ARGUMENT, EXIT_NOT_FOUND, EXIT_OK
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.auth import parse_tokens
from sesscache_server.writes import is_duplicate_name
from tests.conftest import settings_for
from tests.support.cli import run_cli
from tests.support.postgres import PostgresServer
from tests.support.servers import ServerThread

TOKENS = "tok-r=reader,tok-w=wendy:writer,tok-admin=root:admin"
CODE = "60601"  # a fixture postal code (Chicago)
MISSING_ID = 2**31 - 1


@pytest.fixture(scope="module")
def engine(server: ServerThread, database_url: str) -> Iterator[Engine]:
    """Plain SQL on the module's database (made and seeded by ``server``)."""
    made = create_engine(database_url, pool_pre_ping=True)  # the outage test restarts it
    try:
        yield made
    finally:
        made.dispose()


def _name(tag: str = "w") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def _create(session: Session, *, streets: tuple[str, ...] = ("street 1",)) -> pb.Person:
    return session.create_person(_name(), addresses=[(street, CODE) for street in streets])


def _row(engine: Engine, person_id: int) -> tuple[str, str] | None:
    """(name, etag) of the committed row (the triggers raise the version too)."""
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT name, version FROM person WHERE id = :id"), {"id": person_id}
        ).first()
    return None if row is None else (row[0], f"v{row[1]}")


def _streets(engine: Engine, person_id: int) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text("SELECT street FROM address WHERE person_id = :id ORDER BY id"),
                {"id": person_id},
            )
        )


def _violations(error: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return dict(error.value.field_violations)


# -- create, update, delete: what they return and what the database holds -----------------


def test_create_returns_the_person_with_id_etag_and_addresses(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    name = _name()
    created = session.create_person(name, addresses=[("Main St 1", CODE), ("Main St 2", "10001")])
    assert created.id > 0
    assert created.name == name
    assert created.etag
    assert [(a.street, a.postal_code, a.city, a.country) for a in created.addresses] == [
        ("Main St 1", CODE, "Chicago", "United States"),
        ("Main St 2", "10001", "New York", "United States"),
    ]
    assert all(a.id > 0 for a in created.addresses)
    # The address triggers raise the version too: the etag is the committed one.
    assert _row(engine, created.id) == (name, created.etag)
    assert _streets(engine, created.id) == ["Main St 1", "Main St 2"]


def test_create_then_query_in_the_same_session(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    name = _name()
    before = session.query_persons(name=name)
    assert (before.cache_status, list(before.persons)) == (pb.CACHE_STATUS_MISS, [])
    assert session.query_persons(name=name).cache_status == pb.CACHE_STATUS_HIT

    created = session.create_person(name, addresses=[("Elm St 5", CODE)])

    # The cached empty result could not stay: it is gone, and the query finds the person.
    after = session.query_persons(name=name)
    assert after.cache_status == pb.CACHE_STATUS_MISS
    assert list(after.persons) == [created]
    assert session.get_stats().session.invalidations >= 1


def test_update_changes_name_and_street_and_the_etag(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    person = _create(session, streets=("Old St", "Other St"))
    first, second = person.addresses
    name = _name("renamed")
    updated = session.update_person(
        person.id, name=name, address_id=second.id, street="New St", etag=person.etag
    )
    assert (updated.id, updated.name) == (person.id, name)
    assert [a.street for a in updated.addresses] == ["Old St", "New St"]
    assert updated.etag != person.etag
    assert _row(engine, person.id) == (name, updated.etag)
    assert _streets(engine, person.id) == ["Old St", "New St"]

    # Name alone, street alone: each a change of its own, each a new etag.
    renamed = session.update_person(person.id, name=_name("again"), etag=updated.etag)
    moved = session.update_person(person.id, address_id=first.id, street="Third St")
    assert len({person.etag, updated.etag, renamed.etag, moved.etag}) == 4
    assert _streets(engine, person.id) == ["Third St", "New St"]
    # The etag QueryPersons shows is the one to send back.
    (queried,) = client.session(_name("reader")).query_persons(ids=[person.id]).persons
    assert queried.etag == moved.etag


def test_delete_removes_the_person_and_its_addresses(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    person = _create(session, streets=("A St", "B St"))
    cached = session.query_persons(ids=[person.id])
    assert list(cached.persons) == [person]
    assert session.query_persons(ids=[person.id]).cache_status == pb.CACHE_STATUS_HIT

    deleted = session.delete_person(person.id, etag=person.etag)
    assert deleted == person, "the person as it was"
    assert _row(engine, person.id) is None
    assert _streets(engine, person.id) == []

    after = session.query_persons(ids=[person.id])
    assert after.cache_status == pb.CACHE_STATUS_MISS
    assert list(after.persons) == []
    with pytest.raises(NotFound):
        session.delete_person(person.id)
    # The session lives on, and a new person never gets the deleted one's id.
    again = _create(session)
    assert again.id != person.id


def test_plain_sql_rows_work_with_the_version_column(
    client: Client, session_id: str, engine: Engine
) -> None:
    name = _name("sql")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO person (name) VALUES (:name)"), {"name": name})
    session = client.session(session_id)
    (person,) = session.query_persons(name=name).persons
    updated = session.update_person(person.id, name=_name("sql2"), etag=person.etag)
    assert _row(engine, person.id) == (updated.name, updated.etag)


def test_a_database_made_before_writes_gets_the_version_column(fresh_database_url: str) -> None:
    engine = make_engine(fresh_database_url)
    try:
        prepare_database(engine, persons=3)
        with engine.begin() as connection:
            # As it was before writes: no change-log triggers, no version column.
            dialect = changes.dialect_of(connection)
            present = changes._installed_triggers(connection, dialect)
            changes._drop_triggers(connection, dialect, present)
            connection.execute(text("ALTER TABLE person DROP COLUMN version"))
        assert prepare_database(engine, persons=3) == 0
        prepare_database(engine, persons=3)  # idempotent
        with engine.connect() as connection:
            versions = connection.scalars(text("SELECT version FROM person")).all()
        assert versions == [1, 1, 1]
    finally:
        engine.dispose()


# -- the writer's own session cache -------------------------------------------------------


def test_identity_case_a_street_change_is_served_by_the_cached_entry(
    client: Client, session_id: str, engine: Engine
) -> None:
    writer = client.session(_name("setup"))
    person = _create(writer, streets=("Before St",))
    session = client.session(session_id)
    miss = session.query_persons(name=person.name)
    assert miss.cache_status == pb.CACHE_STATUS_MISS
    hit = session.query_persons(name=person.name)
    assert (hit.cache_status, hit.sql_statements) == (pb.CACHE_STATUS_HIT, 0)
    (stored,) = session.list_cache_keys()

    (address,) = person.addresses
    updated = session.update_person(person.id, address_id=address.id, street="After St")
    assert [a.street for a in updated.addresses] == ["After St"]

    # The same entry, still a HIT with no SQL: its object is the session's object.
    for _ in range(2):  # the first hit renders again, the second is the fast path
        after = session.query_persons(name=person.name)
        assert after.cache_status == pb.CACHE_STATUS_HIT
        assert after.sql_statements == 0
        assert after.cache_key == miss.cache_key
        (shown,) = after.persons
        assert [a.street for a in shown.addresses] == ["After St"]
        assert shown.etag == updated.etag
    (entry,) = session.list_cache_keys()
    assert (entry.key, entry.stored_at) == (stored.key, stored.stored_at)
    assert entry.hits == 3
    assert entry.sql_statements == miss.sql_statements, "what a hit saves stays counted"
    assert session.get_stats().session.invalidations == 0
    assert _streets(engine, person.id) == ["After St"]


def test_a_refused_write_leaves_the_sessions_cached_objects_alone(
    client: Client, session_id: str
) -> None:
    person = _create(client.session(_name("setup")))
    (address,) = person.addresses
    session = client.session(session_id)
    session.query_persons(ids=[person.id])
    updated = session.update_person(person.id, address_id=address.id, street="Kept St")
    refusals: list[Callable[[], object]] = [
        lambda: session.update_person(person.id, name=_name(), etag=person.etag),
        lambda: session.update_person(MISSING_ID, name=_name()),
        lambda: session.update_person(person.id, address_id=MISSING_ID, street="x"),
    ]
    for refused in refusals:
        with pytest.raises((Aborted, NotFound, InvalidArgument)):
            refused()
    # The entry's rendering was dropped by the update: this hit renders from the
    # session's objects, which the refused writes did not expire (no SQL).
    after = session.query_persons(ids=[person.id])
    assert (after.cache_status, after.sql_statements) == (pb.CACHE_STATUS_HIT, 0)
    assert list(after.persons) == [updated]


def test_rename_invalidates_the_sessions_name_entries(client: Client, session_id: str) -> None:
    person = _create(client.session(_name("setup")))
    old, new = person.name, _name("new")
    session = client.session(session_id)
    assert list(session.query_persons(name=old).persons) == [person]
    assert list(session.query_persons(name=new).persons) == []
    assert session.query_persons(name=old).cache_status == pb.CACHE_STATUS_HIT
    assert session.query_persons(name=new).cache_status == pb.CACHE_STATUS_HIT

    with session.watch(types=["invalidate"], duration=20) as events:
        renamed = session.update_person(person.id, name=new)
        removed = {next(events).key for _ in range(2)}
    old_query = session.query_persons(name=old)
    new_query = session.query_persons(name=new)
    assert removed == {old_query.cache_key, new_query.cache_key}
    assert (old_query.cache_status, list(old_query.persons)) == (pb.CACHE_STATUS_MISS, [])
    assert new_query.cache_status == pb.CACHE_STATUS_MISS
    assert list(new_query.persons) == [renamed]
    assert session.query_persons(name=new).cache_status == pb.CACHE_STATUS_HIT


def test_a_basic_view_entry_shows_the_new_etag_after_a_street_change(
    client: Client, session_id: str
) -> None:
    person = _create(client.session(_name("setup")))
    session = client.session(session_id)
    session.query_persons(ids=[person.id], view="basic")
    (address,) = person.addresses
    updated = session.update_person(person.id, address_id=address.id, street="Basic St")
    after = session.query_persons(ids=[person.id], view="basic")
    assert after.cache_status == pb.CACHE_STATUS_HIT
    assert [(p.name, p.etag, len(p.addresses)) for p in after.persons] == [
        (person.name, updated.etag, 0)
    ]


# -- errors ------------------------------------------------------------------------------


LONG = "x" * 101


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, p: s.create_person(""), "person.name"),
        (lambda s, p: s.create_person(LONG), "person.name"),
        (lambda s, p: s.create_person("nul\x00"), "person.name"),
        (
            lambda s, p: s.create_person(_name(), addresses=[("", CODE)]),
            "person.addresses[0].street",
        ),
        (
            lambda s, p: s.create_person(_name(), addresses=[("A", CODE), ("B", "00000")]),
            "person.addresses[1].postal_code",
        ),
        (lambda s, p: s.update_person(0, name="x"), "id"),
        (lambda s, p: s.update_person(p.id), "name"),
        (lambda s, p: s.update_person(p.id, name=""), "name"),
        (lambda s, p: s.update_person(p.id, name=LONG), "name"),
        (
            lambda s, p: s.update_person(p.id, address_id=p.addresses[0].id, street="s" * 201),
            "address.street",
        ),
        (lambda s, p: s.update_person(p.id, address_id=MISSING_ID, street="x"), "address.id"),
        (lambda s, p: s.update_person(p.id, name="x", etag="e" * 65), "etag"),
        (lambda s, p: s.delete_person(-1), "id"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    client: Client,
    session_id: str,
    engine: Engine,
    call: Callable[[Session, pb.Person], object],
    field: str,
) -> None:
    session = client.session(session_id)
    person = _create(session)
    with pytest.raises(InvalidArgument) as refused:
        call(session, person)
    assert field in _violations(refused), refused.value.field_violations
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _row(engine, person.id) == (person.name, person.etag), "nothing changed"


def test_an_address_of_another_person_is_refused_and_nothing_is_written(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    person, other = _create(session), _create(session, streets=("Theirs",))
    cached = session.query_persons(ids=[person.id])
    with pytest.raises(InvalidArgument) as refused:
        session.update_person(
            person.id, name=_name("never"), address_id=other.addresses[0].id, street="Mine"
        )
    assert "address.id" in _violations(refused)
    # The name part was not written either: not in the database, not in the session.
    assert _row(engine, person.id) == (person.name, person.etag)
    assert _streets(engine, other.id) == ["Theirs"]
    again = session.query_persons(ids=[person.id])
    assert list(again.persons) == list(cached.persons)


def test_missing_person_is_not_found(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    calls: list[Callable[[], object]] = [
        lambda: session.update_person(MISSING_ID, name=_name()),
        lambda: session.delete_person(MISSING_ID),
    ]
    for call in calls:
        with pytest.raises(NotFound) as missing:
            call()
        assert not isinstance(missing.value, SessionNotFound)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        assert (missing.value.resource_type, missing.value.resource_name) == (
            "sesscache.v1.Person",
            str(MISSING_ID),
        )
        assert f"no person with id {MISSING_ID}" in missing.value.message


def test_duplicate_name_is_already_exists_and_nothing_is_written(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    taken = _create(session)
    person = _create(session, streets=("Keep St",))
    with pytest.raises(AlreadyExists):
        session.create_person(taken.name, addresses=[("Never St", CODE)])
    with engine.connect() as connection:
        count = connection.scalar(text("SELECT count(*) FROM address WHERE street = 'Never St'"))
    assert count == 0
    # A rename onto a taken name, with a street change: neither part is written.
    with pytest.raises(AlreadyExists) as duplicate:
        session.update_person(
            person.id, name=taken.name, address_id=person.addresses[0].id, street="Lost St"
        )
    assert "already has this name" in duplicate.value.message
    assert _row(engine, person.id) == (person.name, person.etag)
    assert _streets(engine, person.id) == ["Keep St"]
    # The session still works, and still sees the person as it is.
    (shown,) = session.query_persons(ids=[person.id]).persons
    assert (shown.name, [a.street for a in shown.addresses]) == (person.name, ["Keep St"])
    session.update_person(person.id, name=_name("fine"))


def test_only_the_unique_name_constraint_is_a_duplicate_name(database_url: str) -> None:
    """IntegrityErrors are told apart: another unique column, a foreign key, NOT NULL."""
    engine = make_engine(database_url)  # SQLite with foreign keys on, as the server has it

    def integrity_error(statement: str, **values: object) -> IntegrityError:
        with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
            connection.execute(text(statement), values)
        return raised.value

    try:
        insert_person = "INSERT INTO person (name) VALUES (:name)"
        name = _name()
        with engine.begin() as connection:
            connection.execute(text(insert_person), {"name": name})
        assert is_duplicate_name(integrity_error(insert_person, name=name))
        others = [
            integrity_error("INSERT INTO country (name) SELECT name FROM country LIMIT 1"),
            integrity_error(
                "INSERT INTO address (person_id, street, postal_code_id) VALUES (:id, 'x', 1)",
                id=MISSING_ID,
            ),
            integrity_error(insert_person, name=None),
        ]
        assert not any(is_duplicate_name(error) for error in others), others
    finally:
        engine.dispose()


def test_a_stale_etag_is_aborted_and_changes_nothing(
    client: Client, session_id: str, engine: Engine
) -> None:
    session = client.session(session_id)
    person = _create(session)
    changed = client.session(_name("other")).update_person(person.id, name=_name("moved"))
    with pytest.raises(Aborted) as stale:
        session.update_person(person.id, name=_name("late"), etag=person.etag)
    assert "read it again" in stale.value.message
    with pytest.raises(Aborted):
        session.delete_person(person.id, etag=person.etag)
    assert _row(engine, person.id) == (changed.name, changed.etag)
    # With the etag read afresh, both work.
    done = session.update_person(person.id, name=_name("now"), etag=changed.etag)
    session.delete_person(person.id, etag=done.etag)
    assert _row(engine, person.id) is None


def test_a_real_race_lets_exactly_one_conditional_update_through(
    client: Client, engine: Engine
) -> None:
    person = _create(client.session(_name("setup")))
    (address,) = person.addresses
    racers = 6
    start = threading.Barrier(racers)

    def race(number: int) -> str:
        session = client.session(_name(f"racer{number}"))
        start.wait()
        try:
            session.update_person(
                person.id, address_id=address.id, street=f"racer {number}", etag=person.etag
            )
        except Aborted:
            return "aborted"
        return f"racer {number}"

    with ThreadPoolExecutor(racers) as pool:
        outcomes = list(pool.map(race, range(racers)))
    winners = [outcome for outcome in outcomes if outcome != "aborted"]
    assert len(winners) == 1, outcomes
    assert _streets(engine, person.id) == winners
    row = _row(engine, person.id)
    assert row is not None
    assert row[0] == person.name
    assert row[1] != person.etag


def test_racing_creates_of_one_name_make_one_person(client: Client, engine: Engine) -> None:
    name = _name("race")
    racers = 5
    start = threading.Barrier(racers)

    def race(number: int) -> str:
        session = client.session(_name(f"creator{number}"))
        start.wait()
        try:
            session.create_person(name, addresses=[(f"racer {number}", CODE)])
        except AlreadyExists:
            return "already exists"
        return "created"

    with ThreadPoolExecutor(racers) as pool:
        outcomes = sorted(pool.map(race, range(racers)))
    assert outcomes == ["already exists"] * (racers - 1) + ["created"]
    with engine.connect() as connection:
        streets = connection.scalars(
            text(
                "SELECT a.street FROM address a JOIN person p ON p.id = a.person_id "
                "WHERE p.name = :name"
            ),
            {"name": name},
        ).all()
    assert len(streets) == 1, "the losers wrote no address"


def test_a_change_committed_between_read_and_write_is_aborted(
    client: Client, session_id: str, engine: Engine, database_url: str, backend: str
) -> None:
    """The version check itself: another writer holds the row while the call reads
    it, then commits a new version; the call's UPDATE then matches no row."""
    person = _create(client.session(_name("setup")))
    session = client.session(session_id)
    bump = "UPDATE person SET version = version + 1 WHERE id = ?"
    if backend == "sqlite":
        database = engine.url.database
        assert database is not None
        other = sqlite3.connect(database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(bump, (person.id,))
    else:
        connection = engine.connect()
        transaction = connection.begin()
        connection.execute(text(bump.replace("?", ":id")), {"id": person.id})
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(session.update_person, person.id, name=_name(), etag=person.etag)
        if backend == "postgres":
            _wait_for_a_lock_wait(engine)
        else:
            time.sleep(1.0)  # the call reads, then waits for SQLite's write lock
        assert not call.done()
        if backend == "sqlite":
            other.execute("COMMIT")
            other.close()
        else:
            transaction.commit()
            connection.close()
        with pytest.raises(Aborted) as aborted:
            call.result(timeout=30)
    # The version check caught it (on SQLite, a call slower than the sleep to
    # read would see the new version and fail the etag check instead: ABORTED too).
    message = aborted.value.message
    assert "meanwhile" in message or (backend == "sqlite" and "changed since" in message)
    row = _row(engine, person.id)
    assert row is not None
    assert row[0] == person.name
    assert row[1] != person.etag


def _wait_for_a_lock_wait(engine: Engine, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.scalar(query):
                return
        time.sleep(0.05)
    raise AssertionError("the call never waited for the row lock")


# -- the writer role ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(database_url: str, server: ServerThread) -> Iterator[ServerThread]:
    with ServerThread(settings_for(database_url, auth_tokens=TOKENS)) as running:
        yield running


def test_writes_need_the_writer_role(auth_server: ServerThread, engine: Engine) -> None:
    with Client(auth_server.target, timeout=20, token="tok-r") as reader:
        session = reader.session(_name("reader"))
        name = _name()
        calls: list[Callable[[], object]] = [
            lambda: session.create_person(name),
            lambda: session.update_person(1, name=name),
            lambda: session.delete_person(1),
        ]
        for call in calls:
            with pytest.raises(PermissionDenied) as denied:
                call()
            assert "needs the writer role" in denied.value.message
            assert "TOKEN=PRINCIPAL:writer" in denied.value.message
        assert session.query_persons(name=name).persons == []  # reading is fine
    for token in ("tok-w", "tok-admin"):
        with Client(auth_server.target, timeout=20, token=token) as writer:
            session = writer.session(_name(token))
            person = _create(session)
            session.update_person(person.id, name=_name())
            session.delete_person(person.id)
    with engine.connect() as connection:
        assert (
            connection.scalar(text("SELECT count(*) FROM person WHERE name = :n"), {"n": name}) == 0
        )


def test_token_roles_parse() -> None:
    tokens = parse_tokens("a=ann,w=will:writer,r=root:admin", source="test")
    roles = {p.name: (p.writer, p.admin, p.may_write) for p in tokens.values()}
    assert roles == {
        "ann": (False, False, False),
        "will": (True, False, True),
        "root": (False, True, True),
    }
    with pytest.raises(ValueError, match="TOKEN=PRINCIPAL:writer"):
        parse_tokens("a=ann:superuser", source="test")


def test_a_client_from_the_proto_sees_the_statuses(server: ServerThread) -> None:
    """The raw stub: codes and details as any gRPC client gets them."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.DeletePerson(pb.DeletePersonRequest(id=MISSING_ID), timeout=20)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as empty:
            stub.UpdatePerson(pb.UpdatePersonRequest(id=1), timeout=20)
        assert empty.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_client_checks_address_id_and_street_go_together(client: Client) -> None:
    with pytest.raises(InvalidArgument):
        client.session(_name()).update_person(1, address_id=1)


# -- the command line ---------------------------------------------------------------------


def test_cli_create_update_delete(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str, engine: Engine
) -> None:
    name = _name("cli")
    common = ("--session", session_id)
    status, out, err = run_cli(
        capsys, server, "--json", "create", *common, "--name", name, "--address", "Cli St", CODE
    )
    assert (status, err) == (EXIT_OK, "")
    created = json.loads(out)
    assert created["name"] == name
    assert created["addresses"][0]["street"] == "Cli St"
    person_id, address_id = created["id"], created["addresses"][0]["id"]

    status, out, err = run_cli(
        capsys,
        server,
        "update",
        *common,
        "--id",
        str(person_id),
        "--address-id",
        str(address_id),
        "--street",
        "Cli Ave",
        "--etag",
        created["etag"],
    )
    assert (status, err) == (EXIT_OK, "")
    assert "Cli Ave" in out
    assert f"updated: person {person_id}  etag: v" in out
    assert f"etag: {created['etag']}\n" not in out

    # A stale etag: ABORTED, exit status 1, said in the JSON error.
    status, out, err = run_cli(
        capsys,
        server,
        "--json",
        "delete",
        *common,
        "--id",
        str(person_id),
        "--etag",
        created["etag"],
    )
    assert (status, out) == (EXIT_ERROR, "")
    assert json.loads(err)["error"]["code"] == "ABORTED"

    status, out, err = run_cli(capsys, server, "delete", *common, "--id", str(person_id))
    assert (status, err) == (EXIT_OK, "")
    assert f"deleted: person {person_id}" in out
    assert _row(engine, person_id) is None

    status, out, err = run_cli(capsys, server, "delete", *common, "--id", str(person_id))
    assert status == EXIT_NOT_FOUND
    assert err.startswith(f"error: NOT_FOUND: no person with id {person_id}")

    status, _, err = run_cli(capsys, server, "create", *common, "--name", "")
    assert status == EXIT_INVALID_ARGUMENT
    assert "person.name" in err


def test_errors_are_sesscache_errors() -> None:
    for cls in (Aborted, AlreadyExists, NotFound):
        assert issubclass(cls, SesscacheError)
    assert issubclass(SessionNotFound, NotFound)


# -- last: it restarts the PostgreSQL cluster ----------------------------------------------


def test_writes_with_the_database_down_are_unavailable(
    backend: str, postgres: PostgresServer, make_server: Callable[..., ServerThread]
) -> None:
    if backend != "postgres":
        pytest.skip("stops the PostgreSQL test cluster")
    if not postgres.can_restart:
        pytest.skip("the test PostgreSQL is external and cannot be stopped")
    name = f"t_writes_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    try:
        server = make_server(url, pool_timeout=2.0, db_connect_timeout=2)
        with Client(server.target, timeout=30) as client:
            session = client.session("writes-outage")
            person = _create(session)
            postgres.stop("fast")
            try:
                with pytest.raises(Unavailable) as down:
                    session.update_person(person.id, name=_name())
                assert "database is unavailable" in down.value.message
            finally:
                postgres.start_again()
            after = session.update_person(person.id, name=_name("back"))
            assert after.etag != person.etag
    finally:
        postgres.drop_database(name)
