"""Process faults: SIGTERM under load, SIGKILL and restart, on ``sesscache_server`` children.

Shows that:

- on SIGTERM while client threads call in a loop, the health service turns
  NOT_SERVING (seen by a ``Watch`` stream), calls already in flight complete
  (on PostgreSQL: misses held in the database by a table lock the test
  takes, released after the signal), new calls are refused cleanly with
  UNAVAILABLE and nothing else, and the process exits 0 within its grace
  period, with nothing in its log worse than INFO;
- after SIGKILL mid-load and a restart on the same database (SQLite file or
  PostgreSQL database) and the same port, the server serves again (the same
  client reconnects), the database is intact (row counts and a checksum of
  every table equal), and the sessions are gone, by design: the real client
  raises ``SessionNotFound`` for the old session, with a message that says
  a restart ends sessions.

Database outages are in ``tests/test_outage.py``.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, func, select, text

from harness.child import Child
from sesscache.models import Base
from sesscache_client import Client, SesscacheError, SessionNotFound, Unavailable
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support.polling import wait_until
from tests.support.postgres import PostgresServer, table_locked, waiting_on_lock

GRACE = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_process(
    database_url: str, *, listen: str = "127.0.0.1:0", grace: float = GRACE
) -> Child:
    return Child(
        [
            f"--listen={listen}",
            f"--database-url={database_url}",
            f"--grace={grace}",
            "--db-startup-attempts=3",
        ]
    )


def name(number: int) -> str:
    return f"person {number:02d}"


def snapshot(database_url: str) -> dict[str, Any]:
    """Row count of every table, and a checksum of all rows, in primary-key order."""
    engine = create_engine(database_url)
    counts: dict[str, Any] = {}
    digest = hashlib.sha256()
    try:
        with engine.connect() as connection:
            for table in Base.metadata.sorted_tables:
                counts[table.name] = connection.scalar(select(func.count()).select_from(table))
                rows = connection.execute(select(table).order_by(*table.primary_key.columns))
                digest.update(repr(rows.all()).encode())
            if engine.dialect.name == "sqlite":
                counts["integrity_check"] = connection.scalar(text("PRAGMA integrity_check"))
    finally:
        engine.dispose()
    counts["checksum"] = digest.hexdigest()
    return counts


@dataclass
class Load:
    """Client threads calling in a loop, each in a session of its own, recording outcomes."""

    target: str
    threads: int = 6
    stop: threading.Event = field(default_factory=threading.Event)
    # (thread, monotonic time the call ended, status name, right answer)
    outcomes: list[tuple[int, float, str, bool]] = field(default_factory=list)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def _run(self, thread: int) -> None:
        with Client(self.target, timeout=30) as client:
            session = client.session(f"load-{thread}")
            call = 0
            while not self.stop.is_set():
                number = 1 + (thread * 7 + call) % 50
                try:
                    response = session.query_persons(name=name(number))
                    status, right = "OK", [p.name for p in response.persons] == [name(number)]
                except SesscacheError as error:
                    status, right = error.code.name, True
                self.outcomes.append((thread, time.monotonic(), status, right))
                call += 1
                if status != "OK":
                    time.sleep(0.02)  # refused: do not spin

    def join(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(60)

    def calls(self, thread: int | None = None) -> list[tuple[int, float, str, bool]]:
        return [o for o in list(self.outcomes) if thread is None or o[0] == thread]


class HealthWatch:
    """A ``grpc.health.v1.Health/Watch`` stream read in a thread: the statuses it sent.

    ``until``: cancel the stream once this status arrives (a watcher that has
    seen NOT_SERVING goes elsewhere); with None the server ends it, see
    :func:`test_an_open_health_watch_does_not_hold_the_shutdown`.
    """

    def __init__(self, target: str, *, until: int | None = NOT_SERVING) -> None:
        self.statuses: list[tuple[float, int]] = []
        self.until = until
        self._channel = grpc.insecure_channel(target)
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._stream:
                self.statuses.append((time.monotonic(), response.status))
                if response.status == self.until:
                    self._stream.cancel()
        except grpc.RpcError:
            pass  # cancelled, or the server went away: the stream ends

    def seen(self) -> list[int]:
        return [status for _, status in self.statuses]

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(10)
        self._channel.close()


def test_sigterm_under_load_drains_refuses_and_exits_0(database_url: str) -> None:
    process = server_process(database_url).start()
    load: Load | None = None
    watch: HealthWatch | None = None
    try:
        watch = HealthWatch(process.target)
        wait_until(lambda: watch is not None and watch.seen() == [SERVING], what="SERVING")
        load = Load(process.target).start()
        wait_until(lambda: load is not None and len(load.calls()) >= 60, what="calls flowing")

        process.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = process.wait(GRACE + 10)
        exited = time.monotonic() - signalled
        # Every thread goes on calling until it has been refused a few times.
        wait_until(
            lambda: all(
                len([o for o in load.calls(t) if o[1] > signalled + exited]) >= 3
                for t in range(load.threads)
            ),
            what="calls after the exit",
        )
        load.join()
    finally:
        if load is not None:
            load.join()
        if watch is not None:
            watch.close()
        process.stop()

    log = process.log_text()
    assert code == 0, f"exit status {code}:\n{log}"
    assert exited < GRACE, f"exit took {exited:.2f}s"
    assert watch.seen()[:2] == [SERVING, NOT_SERVING], watch.seen()
    assert all(right for *_, right in load.calls()), "a wrong answer"
    before = [o for o in load.calls() if o[1] < signalled]
    after = [o for o in load.calls() if o[1] > signalled + exited]
    assert before
    assert {status for _, _, status, _ in before} == {"OK"}
    # Refused cleanly: no call ended other than OK or UNAVAILABLE, except that gRPC
    # itself cancels calls that were in transit, received but not yet handed to the
    # server, when it stops (CANCELLED, grpc/grpc#41785): at most one per thread.
    statuses = Counter(status for _, _, status, _ in load.calls())
    assert set(statuses) <= {"OK", "UNAVAILABLE", "CANCELLED"}, statuses
    cancelled = [o for o in load.calls() if o[2] == "CANCELLED"]
    assert all(signalled < o[1] < signalled + exited for o in cancelled)
    assert len(cancelled) <= load.threads
    print(f"calls: {dict(statuses)}; exit {exited:.2f}s after SIGTERM")
    assert {status for _, _, status, _ in after} == {"UNAVAILABLE"}
    lines = process.lines
    (draining,) = [i for i, line in enumerate(lines) if "shutting down: draining" in line]
    assert any(line.endswith("sesscache.server: stopped") for line in lines[draining:]), log
    assert "Traceback" not in log
    assert not [line for line in process.lines if " ERROR " in line or " WARNING " in line]


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, psycopg conninfo) of a fresh PostgreSQL database for each test.

    Overrides the module-wide one of conftest: these tests kill servers mid-call.
    """
    database = f"t_faults_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(database)
    try:
        yield url, postgres.conninfo(database)
    finally:
        postgres.drop_database(database)


def _in_flight(client: Client, count: int) -> tuple[list[threading.Thread], dict[int, Any]]:
    results: dict[int, Any] = {}

    def miss(n: int) -> None:
        try:
            results[n] = client.session(f"inflight-{n}").query_persons(name=name(20 + n))
        except BaseException as error:  # reported by the test
            results[n] = error

    threads = [threading.Thread(target=miss, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


@pytest.mark.postgres
def test_sigterm_lets_calls_in_flight_complete(pg_database: tuple[str, str]) -> None:
    url, conninfo = pg_database
    process = server_process(url).start()
    watch: HealthWatch | None = None
    try:
        watch = HealthWatch(process.target)
        with Client(process.target, timeout=30) as client:
            client.session("warm").query_persons(name=name(1))
            with table_locked(conninfo):
                threads, results = _in_flight(client, 3)
                wait_until(lambda: waiting_on_lock(conninfo) == 3, what="3 calls in flight")
                process.signal(signal.SIGTERM)
                signalled = time.monotonic()
                wait_until(
                    lambda: watch is not None and NOT_SERVING in watch.seen(),
                    what="NOT_SERVING",
                )
                # New calls are refused, while the calls in flight still wait.
                with Client(process.target, timeout=5) as late:

                    def refused() -> bool:
                        try:
                            late.session("late").query_persons(name=name(1))
                        except Unavailable:
                            return True
                        return False

                    wait_until(refused, what="a new call refused")
                assert process.process.poll() is None
                assert results == {}
            for thread in threads:
                thread.join(GRACE)
            code = process.wait(GRACE)
            exited = time.monotonic() - signalled
    finally:
        if watch is not None:
            watch.close()
        process.stop()
    assert code == 0, process.log_text()
    assert exited < GRACE
    for n in range(3):
        response = results[n]
        assert isinstance(response, pb.QueryPersonsResponse), response
        assert [p.name for p in response.persons] == [name(20 + n)]
        assert response.cache_status == pb.CACHE_STATUS_MISS


@pytest.mark.postgres
def test_sigterm_exits_within_the_grace_period_even_if_the_database_hangs(
    pg_database: tuple[str, str],
) -> None:
    url, conninfo = pg_database
    grace = 1.0
    process = server_process(url, grace=grace).start()
    try:
        with Client(process.target, timeout=30) as client:
            client.session("warm").query_persons(name=name(1))
            with table_locked(conninfo):
                threads, results = _in_flight(client, 2)
                wait_until(lambda: waiting_on_lock(conninfo) == 2, what="2 calls in flight")
                process.signal(signal.SIGTERM)
                signalled = time.monotonic()
                # Give it the grace period and some: the database never answers meanwhile.
                while process.process.poll() is None and time.monotonic() < signalled + grace + 3:
                    time.sleep(0.05)
                exited = process.process.poll() is not None
            for thread in threads:
                thread.join(30)
    finally:
        process.stop()
    # The calls in flight were cancelled after the grace period: UNAVAILABLE.
    assert all(isinstance(results[n], Unavailable) for n in range(2)), results
    assert exited, f"still running {grace + 3:.0f}s after SIGTERM (grace {grace:.0f}s)"


def test_an_open_health_watch_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    # Not a database matter: SQLite only.
    process = server_process(f"sqlite:///{tmp_path / 'watch.db'}").start()
    watch = HealthWatch(process.target, until=None)
    try:
        wait_until(lambda: watch.seen() == [SERVING], what="SERVING")
        process.signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: NOT_SERVING in watch.seen(), what="NOT_SERVING")
        code = process.wait(GRACE + 10)
        exited = time.monotonic() - signalled
    finally:
        watch.close()
        process.stop()
    assert code == 0
    assert exited < GRACE / 2, f"no call in flight but the watch, yet exit took {exited:.2f}s"


def test_sigkill_and_restart_serve_again_with_the_database_intact_and_sessions_gone(
    database_url: str,
) -> None:
    first = server_process(database_url).start()
    port = first.port
    before = snapshot(database_url)
    assert before["person"] == 50
    load: Load | None = None
    second: Child | None = None
    try:
        with Client(first.target, timeout=5) as client:
            old = client.session(f"old-{uuid.uuid4().hex[:8]}")
            key = old.query_persons(name=name(10)).cache_key
            assert [e.key for e in old.list_cache_keys() if e.region == "local_session"] == [key]

            load = Load(first.target).start()
            wait_until(lambda: load is not None and len(load.calls()) >= 60, what="calls flowing")
            first.signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
            load.join()
            assert all(right for *_, right in load.calls())
            assert {status for _, _, status, _ in load.calls()} <= {"OK", "UNAVAILABLE"}
            assert snapshot(database_url) == before

            second = server_process(database_url, listen=f"127.0.0.1:{port}").start()
            assert second.port == port

            def serving() -> bool:
                try:
                    return client.health() == "SERVING"
                except Unavailable:
                    return False

            # The same client (and channel) reaches the restarted server.
            wait_until(serving, timeout=30, what="the restarted server SERVING")
            with pytest.raises(SessionNotFound) as gone:
                old.list_cache_keys()
            assert gone.value.session_id == old.id
            assert "restarted" in str(gone.value)
            # Naming the old id starts a new, empty session.
            again = old.query_persons(name=name(10))
            assert again.cache_status == pb.CACHE_STATUS_MISS
            assert [p.name for p in again.persons] == [name(10)]
            assert [e.key for e in old.list_cache_keys() if e.region == "local_session"] == [key]
        assert snapshot(database_url) == before
    finally:
        if load is not None:
            load.join()
        first.stop()
        if second is not None:
            assert second.stop() == 0
    assert "Traceback" not in second.log_text()
