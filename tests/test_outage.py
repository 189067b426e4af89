"""Database faults on a real PostgreSQL: start-up retries, an outage mid-service, recovery.

The test cluster is stopped and started again for real. While it is down:
cache hits of existing sessions are still served (they never touch the
database), anything that needs the database gets UNAVAILABLE with a message
a person can act on, and when it is back the server recovers by itself (the
pool's pre-ping replaces connections broken by the restart).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from harness.child import Child
from sesscache_client import Client, Unavailable
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support.polling import wait_until
from tests.support.postgres import PostgresServer
from tests.support.servers import ServerThread

pytestmark = pytest.mark.postgres


@pytest.fixture
def restartable(postgres: PostgresServer) -> PostgresServer:
    if not postgres.can_restart:
        pytest.skip("the test PostgreSQL is external and cannot be stopped")
    return postgres


def test_outage_serves_hits_refuses_misses_and_recovers(
    restartable: PostgresServer, make_server: Callable[..., ServerThread]
) -> None:
    name = "t_outage"
    url = restartable.create_database(name)
    server = make_server(url, pool_timeout=2.0, db_connect_timeout=2)
    timeline: list[tuple[str, float]] = []
    t0 = time.monotonic()

    def mark(event: str) -> None:
        timeline.append((event, round(time.monotonic() - t0, 3)))

    with Client(server.target, timeout=20) as client:
        cached = client.session("outage-cached")
        assert cached.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_MISS

        restartable.stop("fast")
        mark("database stopped")
        try:
            # A hit of an existing session: served, no SQL.
            hit = cached.query_persons(name="person 10")
            assert hit.cache_status == pb.CACHE_STATUS_HIT
            assert hit.sql_statements == 0
            assert [p.name for p in hit.persons] == ["person 10"]
            mark("hit served during outage")

            # A miss needs the database: UNAVAILABLE, with a clear message.
            with pytest.raises(Unavailable) as raised:
                cached.query_persons(name="person 11")
            mark("UNAVAILABLE for a miss")
            assert "database is unavailable" in raised.value.message
            fresh = client.session("outage-fresh")
            with pytest.raises(Unavailable):
                fresh.query_persons(name="person 12")

            # The failed miss left the session usable and not half-written.
            keys = [entry.key for entry in cached.list_cache_keys()]
            assert keys == [hit.cache_key]
            assert cached.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_HIT
        finally:
            restartable.start_again()
            mark("database started")

        def recovered() -> bool:
            try:
                fresh.query_persons(name="person 12")
            except Unavailable:
                return False
            return True

        wait_until(recovered, timeout=30, what="the service to recover", interval=0.1)
        mark("service recovered")
        after = cached.query_persons(name="person 11")
        assert after.cache_status == pb.CACHE_STATUS_MISS
        assert [p.name for p in after.persons] == ["person 11"]
        # The session kept its cache through the outage.
        assert cached.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_HIT
    print("outage timeline (s since start):", timeline)
    restartable.drop_database(name)


def test_startup_retries_then_gives_up_without_traceback(restartable: PostgresServer) -> None:
    url = restartable.url("postgres").replace(f":{restartable.port}/", ":1/")
    process = Child(
        [
            "--listen=127.0.0.1:0",
            f"--database-url={url}",
            "--db-startup-attempts=3",
            "--db-startup-max-backoff=0.2",
        ]
    ).start(wait=False)
    code = process.wait(60)
    log = process.log_text()
    assert code == 1, log
    assert log.count("database unreachable") == 2, log
    assert "retrying in" in log
    assert "giving up" in log
    assert "Traceback" not in log


def test_startup_waits_for_the_database(restartable: PostgresServer) -> None:
    name = "t_late"
    url = restartable.create_database(name)
    restartable.stop("fast")
    process = Child(
        [
            "--listen=127.0.0.1:0",
            f"--database-url={url}",
            "--db-startup-attempts=40",
            "--db-startup-max-backoff=0.5",
        ]
    ).start(wait=False)
    try:
        wait_until(lambda: "database unreachable" in process.log_text(), timeout=30)
        restartable.start_again()
        process.wait_serving(60)
        with Client(process.target, timeout=20) as client:
            response = client.session("late").query_persons(name="person 01")
            assert [p.name for p in response.persons] == ["person 01"]
    finally:
        if not restartable.running:
            restartable.start_again()
        assert process.stop() == 0
        restartable.drop_database(name)
