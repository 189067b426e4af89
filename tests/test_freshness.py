"""Freshness end to end: real servers following the change log, SQLite and PostgreSQL.

Rows are changed with plain SQL through the driver (``sqlite3`` / ``psycopg``),
never through the service, unless a test is about the service's writes.
Each test makes its own persons (unique names) so tests share the module's
server and database; the ones that need a server of their own (restart,
retention, outage) start one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine

from sesscache import changes
from sesscache_client import Client, Session
from sesscache_client.cli import _event_line
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support import plain
from tests.support.cli import run_cli
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer
from tests.support.servers import ServerThread

CODE_ID = 1  # a fixture postal code


def _name(prefix: str = "f") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _head(url: str) -> int:
    connection = plain.connect(url)
    try:
        rows = plain.run(connection, "SELECT max(id) FROM sesscache_change")
    finally:
        connection.close()
    return int(rows[0][0] or 0)


def wait_applied(client: Client, url: str, timeout: float = 10.0) -> pb.FeedStats:
    """Wait until the server has applied every change committed so far."""
    head = _head(url)
    deadline = time.monotonic() + timeout
    while True:
        feed = client.get_stats().feed
        if feed.position >= head:
            return feed
        if time.monotonic() > deadline:
            raise AssertionError(f"feed at {feed.position}, log head {head}")
        time.sleep(0.01)


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _insert_person(url: str, name: str, streets: tuple[str, ...] = ("Main St",)) -> int:
    connection = plain.connect(url)
    try:
        plain.run(connection, f"INSERT INTO person (name) VALUES ('{name}')")  # noqa: S608
        person_id = int(plain.run(connection, f"SELECT id FROM person WHERE name = '{name}'")[0][0])  # noqa: S608
        for street in streets:
            plain.run(
                connection,
                "INSERT INTO address (person_id, street, postal_code_id) "  # noqa: S608
                f"VALUES ({person_id}, '{street}', {CODE_ID})",
            )
    finally:
        connection.close()
    return person_id


def _keys(session: Session) -> set[str]:
    return {entry.key for entry in session.list_cache_keys()}


@pytest.fixture
def sql(database_url: str) -> Callable[[str], None]:
    def run(statement: str) -> None:
        plain.run_all(database_url, statement)

    return run


def test_an_external_rename_is_a_miss_in_every_session(
    client: Client, database_url: str, sql: Callable[[str], None]
) -> None:
    sessions = [client.session(_name("s")), client.session(_name("t"))]
    (before,) = sessions[0].query_persons(name="person 10").persons
    for session in sessions:
        session.query_persons(name="person 10")
        session.query_persons(name="person 10 renamed")
        assert session.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_HIT
    sql(f"UPDATE person SET name = 'person 10 renamed' WHERE id = {before.id}")  # noqa: S608
    wait_applied(client, database_url)
    for session in sessions:
        old = session.query_persons(name="person 10")
        assert old.cache_status == pb.CACHE_STATUS_MISS
        assert old.miss.reason == pb.MISS_REASON_CHANGED
        assert old.miss.change_id > 0
        assert old.miss.detail == f"person {before.id} (update)"
        assert list(old.persons) == []
        new = session.query_persons(name="person 10 renamed")
        assert new.miss.reason == pb.MISS_REASON_CHANGED
        assert [(p.id, p.name) for p in new.persons] == [(before.id, "person 10 renamed")]


def test_precision_unaffected_entries_stay(
    client: Client, database_url: str, sql: Callable[[str], None]
) -> None:
    prefix = _name("p")
    a, b, c = (_insert_person(database_url, f"{prefix}-{n}") for n in "abc")
    session = client.session(_name("s"))
    queries: dict[str, dict[str, object]] = {
        "a": {"ids": [a]},
        "b": {"ids": [b]},
        "c-name": {"name": f"{prefix}-c"},
        "range": {"name_first": f"{prefix}-a", "name_last": f"{prefix}-b"},
        "b-basic": {"ids": [b], "view": "basic"},
        "nobody": {"name": f"{prefix}-zzz"},
    }
    keys = {label: session.query_persons(**q).cache_key for label, q in queries.items()}  # type: ignore[arg-type]
    wait_applied(client, database_url)
    assert _keys(session) == set(keys.values())

    # The street of b's address: the entries holding b go (its basic view too: the
    # trigger raised b's version, which its etag shows); a's and c's stay.
    sql(f"UPDATE address SET street = 'Moved St' WHERE person_id = {b}")  # noqa: S608
    wait_applied(client, database_url)
    gone = {keys["b"], keys["range"], keys["b-basic"]}
    assert _keys(session) == set(keys.values()) - gone
    # An unrelated person (a new one, named outside every criterion): nothing goes.
    _insert_person(database_url, _name("elsewhere"))
    sql(f"UPDATE person SET name = '{_name('x')}' WHERE name = 'person 40'")  # noqa: S608
    wait_applied(client, database_url)
    assert _keys(session) == set(keys.values()) - gone
    # A new person matching a cached name: only that entry goes.
    _insert_person(database_url, f"{prefix}-zzz")
    wait_applied(client, database_url)
    gone.add(keys["nobody"])
    assert _keys(session) == set(keys.values()) - gone
    # c renamed into the range: the range entry (gone already) and c's name entry go.
    sql(f"UPDATE person SET name = '{prefix}-aa' WHERE id = {c}")  # noqa: S608
    wait_applied(client, database_url)
    gone.add(keys["c-name"])
    assert _keys(session) == set(keys.values()) - gone
    assert _keys(session) == {keys["a"]}
    refreshed = session.query_persons(ids=[b])
    assert [a.street for a in refreshed.persons[0].addresses] == ["Moved St"]


def test_a_street_changed_with_sql_reaches_other_sessions(
    client: Client, database_url: str, sql: Callable[[str], None]
) -> None:
    person = _insert_person(database_url, _name(), streets=("Old St",))
    sessions = [client.session(_name("s")) for _ in range(3)]
    for session in sessions:
        session.query_persons(ids=[person])
    sql(f"UPDATE address SET street = 'New St' WHERE person_id = {person}")  # noqa: S608
    wait_applied(client, database_url)
    for session in sessions:
        response = session.query_persons(ids=[person])
        assert response.miss.reason == pb.MISS_REASON_CHANGED
        assert [a.street for a in response.persons[0].addresses] == ["New St"]


def test_identity_case_the_writer_keeps_its_hit_others_are_invalidated(
    client: Client, database_url: str
) -> None:
    writer, other = client.session(_name("s")), client.session(_name("t"))
    person_id = _insert_person(database_url, _name(), streets=("Before St",))
    for session in (writer, other):
        session.query_persons(ids=[person_id])
    (person,) = writer.query_persons(ids=[person_id]).persons
    writer.update_person(person_id, address_id=person.addresses[0].id, street="After St")
    wait_applied(client, database_url)
    hit = writer.query_persons(ids=[person_id])
    assert (hit.cache_status, hit.sql_statements) == (pb.CACHE_STATUS_HIT, 0)
    assert [a.street for a in hit.persons[0].addresses] == ["After St"]
    seen = other.query_persons(ids=[person_id])
    assert seen.miss.reason == pb.MISS_REASON_CHANGED
    assert [a.street for a in seen.persons[0].addresses] == ["After St"]
    # The writer's own change never removed its entry, even once applied.
    assert writer.get_stats().session.invalidations == 0


def test_watch_and_stats_show_change_invalidations(
    client: Client, database_url: str, sql: Callable[[str], None]
) -> None:
    person = _insert_person(database_url, _name())
    session = client.session(_name("w"))
    key = session.query_persons(ids=[person]).cache_key
    with session.watch(types=["invalidate"], duration=10.0) as events:
        sql(f"UPDATE person SET name = '{_name('renamed')}' WHERE id = {person}")  # noqa: S608
        event = next(iter(events))
    assert (event.type, event.key, event.reason) == (
        pb.CACHE_EVENT_TYPE_INVALIDATE,
        key,
        "change",
    )
    assert (event.table, event.row_id) == ("person", person)
    assert event.change_id > 0
    feed = wait_applied(client, database_url)
    assert feed.position >= event.change_id
    assert feed.head >= feed.position
    assert feed.invalidations["change"] >= 1
    assert feed.gaps["start"] == 1
    assert feed.connected
    assert feed.changes >= 1
    assert 0 < feed.lag_p50_ms <= feed.lag_p99_ms
    entry = next(iter(session.list_cache_keys()), None)
    assert entry is None
    session.query_persons(ids=[person])
    (entry,) = session.list_cache_keys()
    assert entry.fresh_as_of >= event.change_id


def test_restart_starts_with_a_gap(
    make_server: Callable[..., ServerThread], fresh_database_url: str
) -> None:
    first = make_server(fresh_database_url)
    with Client(first.target) as client:
        client.session("r").query_persons(name="person 01")
        assert client.get_stats().feed.gaps["start"] == 1
    first.stop()
    second = make_server(fresh_database_url)
    with Client(second.target) as client:
        stats = client.get_stats().feed
        assert stats.gaps["start"] == 1
        assert stats.position >= _head(fresh_database_url)
        response = client.session("r").query_persons(name="person 01")
        assert response.miss.reason == pb.MISS_REASON_NEW_SESSION


def test_retention_overflow_is_a_gap_that_clears_every_cache(
    make_server: Callable[..., ServerThread], fresh_database_url: str
) -> None:
    server = make_server(fresh_database_url, change_poll_interval=0.5)
    with Client(server.target) as client:
        session = client.session("kept")
        session.query_persons(name="person 02")
        session.query_persons(name="person 03")
        wait_applied(client, fresh_database_url)
        engine = create_engine(fresh_database_url)
        try:
            # Changes pruned before the follower read them: it cannot vouch for them.
            with engine.begin() as connection:
                connection.exec_driver_sql("UPDATE person SET name = 'moved' WHERE id = 45")
                # Two prunes between two reads: a PostgreSQL follower cannot tell
                # whether late rows went too; on SQLite the first one is enough.
                changes.prune(connection, keep=0, min_interval=0)
                changes.prune(connection, keep=0, min_interval=0)
        finally:
            engine.dispose()
        wait_for(lambda: client.get_stats().feed.gaps["retention"] == 1, what="retention gap")
        assert _keys(session) == set()
        missed = session.query_persons(name="person 02")
        assert missed.miss.reason == pb.MISS_REASON_CHANGED
        assert missed.miss.detail == "feed gap: retention"
        assert session.query_persons(name="person 02").cache_status == pb.CACHE_STATUS_HIT


@pytest.fixture
def own_postgres(postgres: PostgresServer) -> PostgresServer:
    if not postgres.can_restart:
        pytest.skip("the test PostgreSQL is external and cannot be stopped")
    return postgres


def test_feed_loss_and_recovery_with_postgres_stopped(
    backend: str,
    request: pytest.FixtureRequest,
    make_server: Callable[..., ServerThread],
) -> None:
    if backend != "postgres":
        pytest.skip("stops the PostgreSQL test cluster")
    postgres: PostgresServer = request.getfixturevalue("own_postgres")
    name = f"t_fresh_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    try:
        server = make_server(url, pool_timeout=2.0, db_connect_timeout=2, freshness_timeout=0.5)
        with Client(server.target, timeout=30) as client:
            session = client.session("outage")
            session.query_persons(name="person 04")
            assert session.query_persons(name="person 04").cache_status == pb.CACHE_STATUS_HIT
            postgres.stop("fast")
            try:
                wait_for(lambda: not client.get_stats().feed.connected, what="feed lost")
                # Past --freshness-timeout: every cache cleared, counted.
                wait_for(lambda: client.get_stats().feed.gaps["disconnected"] == 1, what="timeout")
                assert _keys(session) == set()
            finally:
                postgres.start_again()
            wait_for(lambda: client.get_stats().feed.gaps["connection_lost"] == 1, what="recovery")
            feed = client.get_stats().feed
            assert feed.connected
            # Serving again, cached again.
            back = session.query_persons(name="person 04")
            assert back.miss.reason == pb.MISS_REASON_CHANGED
            assert [p.name for p in back.persons] == ["person 04"]
            assert session.query_persons(name="person 04").cache_status == pb.CACHE_STATUS_HIT
    finally:
        postgres.drop_database(name)


def test_the_cli_shows_the_feed_and_change_invalidations(
    capsys: pytest.CaptureFixture[str],
    server: ServerThread,
    client: Client,
    database_url: str,
    sql: Callable[[str], None],
) -> None:
    person = _insert_person(database_url, _name())
    session = client.session(_name("cli"))
    session.query_persons(ids=[person])
    with session.watch(types=["invalidate"], duration=10.0) as events:
        sql(f"UPDATE person SET name = '{_name('cli')}' WHERE id = {person}")  # noqa: S608
        event = next(iter(events))
    assert _event_line(event).endswith(f"change {event.change_id}: person {person}")
    wait_applied(client, database_url)
    status, out, err = run_cli(capsys, server, "stats")
    assert (status, err) == (0, "")
    assert "change feed: connected, position " in out
    assert "lag commit->applied: p50 " in out
    assert "removals by reason: change " in out
    assert "gaps by reason: " in out
    assert "start 1" in out


@pytest.mark.redis
def test_a_reference_change_reaches_every_session_and_the_shared_redis_once(
    make_server: Callable[..., ServerThread],
    fresh_database_url: str,
    redis_server: RedisServer,
) -> None:
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as connection:
        connection.flushdb()
    # Two replicas sharing one database and one Redis shared region.
    replicas = [make_server(fresh_database_url, redis_url=redis_server.url) for _ in range(2)]
    clients = [Client(replica.target) for replica in replicas]
    try:
        sessions = [c.session(_name("ref")) for c in clients]
        for session in sessions:
            (person,) = session.query_persons(name="person 01").persons
        city = person.addresses[0].city
        with redis_server.client() as connection:
            assert connection.keys("sesscache:default:*"), "the address bits are shared"
        plain.run_all(
            fresh_database_url,
            f"UPDATE city SET name = 'Renamed {city}' WHERE name = '{city}'",  # noqa: S608
        )
        for c in clients:
            wait_applied(c, fresh_database_url)
        for session in sessions:
            response = session.query_persons(name="person 01")
            assert response.miss.reason == pb.MISS_REASON_CHANGED
            assert response.miss.detail.startswith("city ")
            assert response.persons[0].addresses[0].city == f"Renamed {city}"
        with redis_server.client() as connection:
            claims = connection.keys("sesscache:claim:*")
        # One claim for the change: one replica cleared the shared region for it.
        assert [key.decode() for key in claims] == [f"sesscache:claim:{response.miss.change_id}"]
    finally:
        for c in clients:
            c.close()
