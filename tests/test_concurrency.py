"""Concurrency through real servers: one session's calls in turn, different sessions side by side.

Shows that:

- 32 client threads hammering one shared session and a session each get
  a right answer every time; the shared session ends with exactly one
  entry per distinct query, stored by exactly one MISS (its calls ran one
  at a time), and every other call on it was a hit (SQLite and PostgreSQL);
- a session whose miss waits on a slow database (on PostgreSQL the test
  holds ``LOCK TABLE person IN ACCESS EXCLUSIVE MODE``) does not stall the
  cache hits of other sessions: they keep being served fast while it waits,
  and a second call of the waiting session queues behind the first;
- a call that its client cancels, or whose deadline passes, while its
  database work waits leaves the session usable and consistent: once the
  database answers, the next call succeeds and the key listing holds only
  complete entries.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from sesscache.registry import SessionRegistry
from sesscache_client import Client, DeadlineExceeded, Session
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from tests.support.polling import wait_until
from tests.support.postgres import table_locked, waiting_on_lock
from tests.support.servers import ServerThread

LOCAL = "local_session"
THREADS = 32
MakeServer = Callable[..., ServerThread]


def name(number: int) -> str:
    return f"person {number:02d}"


def local_entries(session: Session) -> list[pb.CacheEntry]:
    return [entry for entry in session.list_cache_keys() if entry.region == LOCAL]


def registry_of(server: ServerThread) -> SessionRegistry:
    assert server.running is not None
    return server.running.registry


# -- many threads ---------------------------------------------------------------------------


def test_32_clients_hammer_one_session_and_a_session_each(
    database_url: str, make_server: MakeServer
) -> None:
    server = make_server(database_url)
    run = uuid.uuid4().hex[:8]
    hot_id = f"hot-{run}"
    rounds = 12
    answers: list[tuple[str, str, int]] = []  # (session, key, cache status) of every call
    problems: list[str] = []
    lock = threading.Lock()

    def check(session: Session, response: pb.QueryPersonsResponse, expected: list[str]) -> None:
        got = [p.name for p in response.persons]
        if got != expected:
            problems.append(f"{session.id}: expected {expected}, got {got}")
        if response.cache_status == pb.CACHE_STATUS_HIT and response.sql_statements:
            problems.append(f"{session.id}: a HIT ran {response.sql_statements} statements")
        if response.cache_status not in (pb.CACHE_STATUS_HIT, pb.CACHE_STATUS_MISS):
            problems.append(f"{session.id}: cache status {response.cache_status}")
        with lock:
            answers.append((session.id, response.cache_key, response.cache_status))

    def worker(thread: int) -> None:
        with Client(server.target, timeout=60) as client:
            hot = client.session(hot_id)
            own = client.session(f"own-{run}-{thread}")
            for call in range(rounds):
                number = 1 + (thread + call) % 10
                check(hot, hot.query_persons(name=name(number)), [name(number)])
                first, last = 1 + thread % 5, 3 + thread % 5
                page = own.query_persons(name_first=name(first), name_last=name(last))
                check(own, page, [name(n) for n in range(first, last + 1)])
                mine = 40 + call % 3
                check(own, own.query_persons(ids=[mine], view="basic"), [name(mine)])

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(worker, thread) for thread in range(THREADS)]:
            future.result(timeout=120)
    assert problems == []
    assert len(answers) == THREADS * rounds * 3

    with Client(server.target, timeout=30) as client:
        for session_id in {session_id for session_id, _, _ in answers}:
            calls = [(key, status) for s, key, status in answers if s == session_id]
            misses = Counter(key for key, status in calls if status == pb.CACHE_STATUS_MISS)
            entries = local_entries(client.session(session_id))
            keys = [entry.key for entry in entries]
            # One entry per distinct query, stored by exactly one MISS; all else were hits.
            assert sorted(keys) == sorted({key for key, _ in calls}), session_id
            assert set(misses.values()) == {1}, (session_id, misses)
            assert sum(entry.hits for entry in entries) == len(calls) - len(keys), session_id
        hot_entries = local_entries(client.session(hot_id))
        assert len(hot_entries) == 10
        assert sum(e.hits for e in hot_entries) == THREADS * rounds - 10
    assert len(registry_of(server)) == THREADS + 1


# -- a slow database ------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_session_waiting_on_the_database_does_not_stall_other_sessions_hits(
    pg_database: tuple[str, str], make_server: MakeServer
) -> None:
    url, conninfo = pg_database
    server = make_server(url)
    with Client(server.target, timeout=30) as client:
        warm = [client.session(f"warm-{n}") for n in range(8)]
        for n, session in enumerate(warm):
            session.query_persons(name=name(n + 1))
            assert session.query_persons(name=name(n + 1)).cache_status == pb.CACHE_STATUS_HIT
        slow = client.session("slow")
        outcome: list[pb.QueryPersonsResponse | BaseException] = []

        def slow_miss() -> None:
            try:
                outcome.append(slow.query_persons(name=name(30)))
            except BaseException as error:  # reported below
                outcome.append(error)

        def hits(thread: int, until: float, latencies: list[float]) -> None:
            with Client(server.target, timeout=5) as own:
                while time.monotonic() < until:
                    n = (thread + len(latencies)) % len(warm)
                    started = time.perf_counter()
                    response = own.session(warm[n].id).query_persons(name=name(n + 1))
                    latencies.append(time.perf_counter() - started)
                    assert response.cache_status == pb.CACHE_STATUS_HIT
                    assert [p.name for p in response.persons] == [name(n + 1)]

        def measure(seconds: float) -> list[float]:
            """Latencies of other sessions' hits from 4 threads for ``seconds``."""
            per_thread: list[list[float]] = [[] for _ in range(4)]
            with ThreadPoolExecutor(4) as pool:
                until = time.monotonic() + seconds
                for future in [pool.submit(hits, t, until, per_thread[t]) for t in range(4)]:
                    future.result(timeout=30)
            return sorted(latency for latencies in per_thread for latency in latencies)

        baseline = measure(0.75)  # nobody waiting: the reference on this machine, now
        waiter = threading.Thread(target=slow_miss)
        with table_locked(conninfo):
            waiter.start()
            wait_until(lambda: waiting_on_lock(conninfo) == 1, what="the slow miss waiting")
            during = measure(1.5)
            # The slow session is still waiting: the hits were all served meanwhile.
            assert waiter.is_alive()
            assert outcome == []
            # Its own next call queues behind it (calls of one session run in turn).
            with (
                Client(server.target, timeout=0.3) as impatient,
                pytest.raises(DeadlineExceeded),
            ):
                impatient.session("slow").query_persons(name=name(31))
            assert waiting_on_lock(conninfo) == 1
        waiter.join(30)
        (result,) = outcome
        assert isinstance(result, pb.QueryPersonsResponse), result
        assert result.cache_status == pb.CACHE_STATUS_MISS
        assert [p.name for p in result.persons] == [name(30)]

    def p99(latencies: list[float]) -> float:
        return latencies[int(0.99 * (len(latencies) - 1))]

    for label, latencies, seconds in (("before", baseline, 0.75), ("during", during, 1.5)):
        print(
            f"hits of other sessions {label} one session's wait on the database: "
            f"{len(latencies) / seconds:.0f}/s, median {statistics.median(latencies) * 1e3:.2f} "
            f"ms, p99 {p99(latencies) * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms"
        )
    # A stalled hit would take the rest of the 1.5 s wait. The 100 ms bound allows for
    # a busy machine: it is raised to 3 x the p99 measured without the wait, if larger.
    assert during[-1] < 1.0
    assert p99(during) < max(0.1, 3 * p99(baseline))
    assert len(during) >= 100
    assert len(during) / 1.5 >= 0.25 * len(baseline) / 0.75


@pytest.mark.postgres
def test_cancelled_and_timed_out_calls_leave_the_session_usable(
    pg_database: tuple[str, str], make_server: MakeServer
) -> None:
    url, conninfo = pg_database
    server = make_server(url)
    registry = registry_of(server)
    with Client(server.target, timeout=30) as client:
        timed_out, cancelled = client.session("deadline"), client.session("cancelled")
        first = timed_out.query_persons(name=name(1))
        cancelled.query_persons(name=name(1))
        with table_locked(conninfo):
            # Past its deadline while its miss waits for the database.
            with Client(server.target, timeout=0.3) as impatient:
                with pytest.raises(DeadlineExceeded):
                    impatient.session("deadline").query_persons(name=name(21))
                wait_until(lambda: waiting_on_lock(conninfo) == 1, what="abandoned miss waiting")
                # The work still holds the session: its next call waits its turn.
                with pytest.raises(DeadlineExceeded):
                    impatient.session("deadline").query_persons(name=name(1))

            # Cancelled by its client while its miss waits for the database.
            with grpc.insecure_channel(server.target) as channel:
                future = pb_grpc.SessionCacheStub(channel).QueryPersons.future(
                    pb.QueryPersonsRequest(name=name(22)),
                    timeout=30,
                    metadata=(("session-id", "cancelled"),),
                )
                wait_until(lambda: waiting_on_lock(conninfo) == 2, what="cancelled miss waiting")
                assert future.cancel()  # type: ignore[no-untyped-call]
                with pytest.raises(grpc.FutureCancelledError):
                    future.result()
            for session_id in ("deadline", "cancelled"):
                state = registry.get(session_id)
                assert state is not None
                assert state.lock.locked(), "the session is free while its work still runs"

        # Once the database answers, the abandoned work finishes and frees the session.
        def unlocked(session_id: str) -> bool:
            state = registry.get(session_id)
            return state is not None and not state.lock.locked()

        for session_id in ("deadline", "cancelled"):
            wait_until(functools.partial(unlocked, session_id), what=f"{session_id} unlocked")
        for session, abandoned in ((timed_out, 21), (cancelled, 22)):
            # Not half-written: each entry listed is complete and served as a right hit.
            entries = local_entries(session)
            keys = [entry.key for entry in entries]
            assert len(keys) == len(set(keys)) in (1, 2)
            assert keys[0] == first.cache_key
            for entry in entries:
                assert entry.rows == 1
            again = session.query_persons(name=name(abandoned))
            assert [p.name for p in again.persons] == [name(abandoned)]
            expected = pb.CACHE_STATUS_HIT if len(keys) == 2 else pb.CACHE_STATUS_MISS
            assert again.cache_status == expected
            hit = session.query_persons(name=name(1))
            assert hit.cache_status == pb.CACHE_STATUS_HIT
            assert [p.name for p in hit.persons] == [name(1)]
            assert [e.key for e in local_entries(session)] == [first.cache_key, again.cache_key]
        assert all(state.users == 0 for state in registry.states())
