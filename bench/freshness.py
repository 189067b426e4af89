"""Freshness figures: commit -> invalidated in every session, stale reads, false invalidations.

For SQLite and PostgreSQL (a throwaway cluster from tests.support.postgres), a
real server child process (:func:`bench.servers.sesscache`) and:

1. **Invalidation latency.** ``--sessions`` sessions each cache the full view
   of ``--writes`` persons (``ids=[p]``). An external writer commits one
   ``UPDATE person SET name = ...`` at a time with the driver itself
   (``sqlite3`` / ``psycopg``); a ``WatchCacheEvents`` stream of every session
   (admin) sees the invalidations. The figure per commit: from the commit's
   return to the last of its ``--sessions`` invalidate events received.
2. **Stale reads.** ``--rounds`` rounds of concurrent writers (one through the
   service's UpdatePerson, one with plain SQL) and readers in many sessions;
   after each round, once the server has applied the log's head, every
   session reads every person and each read is compared with the database.
3. **False invalidations.** One session caches queries of every kind (ids,
   exact names, name ranges, basic and full views); after each random person
   or address change (plain SQL), every entry removed whose result did not
   change is a false invalidation, every entry kept whose result changed a
   missed one (both should be 0).

``python -m bench.freshness`` prints the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import Child, sesscache
from sesscache.feed import percentile
from sesscache_client import Aborted, Client, Session
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support import plain


@dataclass
class Figures:
    label: str
    latencies: list[float]
    expected_events: int
    received_events: int
    reads_checked: int = 0
    stale_reads: int = 0
    changes_checked: int = 0
    false_invalidations: int = 0
    missed_invalidations: int = 0

    def lines(self) -> list[str]:
        ordered = sorted(self.latencies)
        if ordered:
            lag = (
                f"commit -> every affected entry invalidated: {len(ordered)} commits, "
                f"p50 {percentile(ordered, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(ordered, 0.99) * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms "
                f"({self.received_events}/{self.expected_events} invalidate events)"
            )
        else:
            lag = "commit -> invalidated: no samples"
        return [
            f"{self.label}: {lag}",
            f"{self.label}: stale reads {self.stale_reads} of {self.reads_checked} checked",
            f"{self.label}: false invalidations {self.false_invalidations}, missed "
            f"{self.missed_invalidations}, over {self.changes_checked} person/address changes",
        ]


def _sql(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    connection = plain.connect(url)
    lock = threading.Lock()

    def run(statement: str) -> list[tuple[Any, ...]]:
        with lock:
            return plain.run(connection, statement)

    return run


def _head(sql: Callable[[str], list[tuple[Any, ...]]]) -> int:
    return int(sql("SELECT max(id) FROM sesscache_change")[0][0] or 0)


def _wait_applied(client: Client, sql: Callable[[str], list[tuple[Any, ...]]]) -> None:
    head = _head(sql)
    deadline = time.monotonic() + 30
    while client.get_stats().feed.position < head:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not apply the change log in 30 s")
        time.sleep(0.005)


def _person_ids(sql: Callable[[str], list[tuple[Any, ...]]], count: int) -> list[int]:
    rows = sql(f"SELECT id FROM person ORDER BY id LIMIT {count}")  # noqa: S608
    return [int(row[0]) for row in rows]


# -- 1. latency -----------------------------------------------------------------------


def latency(client: Client, url: str, *, sessions: int, writes: int) -> tuple[list[float], int]:
    sql = _sql(url)
    persons = _person_ids(sql, writes)
    names = {pid: f"s{uuid.uuid4().hex[:8]}" for pid in persons}
    all_sessions = [client.session(f"lat-{n}-{uuid.uuid4().hex[:6]}") for n in range(sessions)]
    for session in all_sessions:
        for pid in persons:
            session.query_persons(ids=[pid])
    received: dict[int, list[float]] = {}
    lock = threading.Lock()
    with client.watch_all(types=["invalidate"], duration=None) as events:

        def read() -> None:
            for event in events:
                if event.table == "person" and event.reason == "change":
                    with lock:
                        received.setdefault(event.row_id, []).append(time.time())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        committed: dict[int, float] = {}
        for pid in persons:
            sql(f"UPDATE person SET name = '{names[pid]}' WHERE id = {pid}")  # noqa: S608
            committed[pid] = time.time()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with lock:
                    if len(received.get(pid, ())) >= sessions:
                        break
                time.sleep(0.001)
        time.sleep(0.2)
        events.cancel()
    latencies = []
    got = 0
    for pid in persons:
        times = received.get(pid, [])
        got += min(len(times), sessions)
        if len(times) >= sessions:
            latencies.append(max(sorted(times)[:sessions]) - committed[pid])
    return latencies, got


# -- 2. stale reads -----------------------------------------------------------------------


def _state(sql: Callable[[str], list[tuple[Any, ...]]], pid: int) -> tuple[Any, ...]:
    person = sql(f"SELECT name, version FROM person WHERE id = {pid}")  # noqa: S608
    streets = sql(f"SELECT street FROM address WHERE person_id = {pid} ORDER BY id")  # noqa: S608
    return (person[0][0], f"v{person[0][1]}", tuple(row[0] for row in streets))


def _shown(response: pb.QueryPersonsResponse) -> tuple[Any, ...] | None:
    if not response.persons:
        return None
    person = response.persons[0]
    return (person.name, person.etag, tuple(a.street for a in person.addresses))


def stale_reads(
    client: Client, url: str, *, sessions: int, persons: int, rounds: int, seconds: float
) -> tuple[int, int]:
    sql = _sql(url)
    ids = _person_ids(sql, persons)
    readers = [client.session(f"stale-{n}-{uuid.uuid4().hex[:6]}") for n in range(sessions)]
    writer = client.session(f"stale-writer-{uuid.uuid4().hex[:6]}")
    checked = stale = 0
    for _ in range(rounds):
        stop = threading.Event()

        def service_writes(stop: threading.Event = stop) -> None:
            rng = random.Random()
            while not stop.is_set():
                pid = rng.choice(ids)
                (person,) = writer.query_persons(ids=[pid], bypass_cache=True).persons
                if not person.addresses:
                    continue
                with contextlib.suppress(Aborted):
                    writer.update_person(
                        pid,
                        address_id=person.addresses[0].id,
                        street=f"svc {uuid.uuid4().hex[:6]}",
                        etag=person.etag,
                    )

        def sql_writes(stop: threading.Event = stop) -> None:
            rng = random.Random()
            own = _sql(url)
            while not stop.is_set():
                pid = rng.choice(ids)
                if rng.random() < 0.5:
                    own(
                        f"UPDATE address SET street = 'sql {uuid.uuid4().hex[:6]}' "  # noqa: S608
                        f"WHERE person_id = {pid}"
                    )
                else:
                    own(f"UPDATE person SET name = 'n{uuid.uuid4().hex[:8]}' WHERE id = {pid}")  # noqa: S608
                time.sleep(0.002)

        def reads(session: Session, stop: threading.Event = stop) -> None:
            rng = random.Random()
            while not stop.is_set():
                session.query_persons(ids=[rng.choice(ids)])

        threads = [threading.Thread(target=service_writes), threading.Thread(target=sql_writes)]
        threads += [threading.Thread(target=reads, args=(s,)) for s in readers[:4]]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        _wait_applied(client, sql)
        truth = {pid: _state(sql, pid) for pid in ids}
        for session in readers:
            for pid in ids:
                checked += 1
                if _shown(session.query_persons(ids=[pid])) != truth[pid]:
                    stale += 1
    return checked, stale


# -- 3. false invalidations ------------------------------------------------------------------


def false_invalidations(client: Client, url: str, *, changes: int) -> tuple[int, int, int]:
    sql = _sql(url)
    ids = _person_ids(sql, 40)
    names = {pid: str(sql(f"SELECT name FROM person WHERE id = {pid}")[0][0]) for pid in ids}  # noqa: S608
    ordered = sorted(names.values())
    rng = random.Random(7)
    queries: list[dict[str, Any]] = []
    for pid in rng.sample(ids, 10):
        queries.append({"ids": [pid]})
        queries.append({"ids": [pid], "view": "basic"})
        queries.append({"name": names[pid]})
    for _ in range(6):
        first, last = sorted(rng.sample(ordered, 2))
        queries.append({"name_first": first, "name_last": last, "page_size": 5})
    queries.append({"name": f"nobody {uuid.uuid4().hex[:6]}"})
    session = client.session(f"precision-{uuid.uuid4().hex[:6]}")
    cached = {}
    for index, query in enumerate(queries):
        response = session.query_persons(**query)
        cached[index] = (response.cache_key, list(response.persons))
    false = missed = 0
    for _ in range(changes):
        pid = rng.choice(ids)
        if rng.random() < 0.5:
            sql(f"UPDATE address SET street = 'p {uuid.uuid4().hex[:6]}' WHERE person_id = {pid}")  # noqa: S608
        else:
            sql(f"UPDATE person SET name = 'q{uuid.uuid4().hex[:8]}' WHERE id = {pid}")  # noqa: S608
        _wait_applied(client, sql)
        kept = {entry.key for entry in session.list_cache_keys()}
        for index, query in enumerate(queries):
            key, persons = cached[index]
            fresh = list(client.query_persons(bypass_cache=True, **query).persons)
            removed = key not in kept
            if removed and fresh == persons:
                false += 1
            if not removed and fresh != persons:
                missed += 1
            if removed:
                response = session.query_persons(**query)
                cached[index] = (response.cache_key, list(response.persons))
    return changes, false, missed


# -- running it -------------------------------------------------------------------------------


def run(label: str, url: str, args: argparse.Namespace, directory: Path) -> Figures:
    child: Child
    child, _ = sesscache(
        directory / f"{label}.log",
        url,
        seed_persons=max(200, args.writes),
        optional=(("--max-entries-per-session", "100000"),),
    )
    with child, Client(child.target, timeout=30) as client:
        latencies, got = latency(client, url, sessions=args.sessions, writes=args.writes)
        figures = Figures(label, latencies, args.sessions * args.writes, got)
        figures.reads_checked, figures.stale_reads = stale_reads(
            client, url, sessions=8, persons=20, rounds=args.rounds, seconds=args.seconds
        )
        (
            figures.changes_checked,
            figures.false_invalidations,
            figures.missed_invalidations,
        ) = false_invalidations(client, url, changes=args.changes)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10, help="sessions caching each person")
    parser.add_argument("--writes", type=int, default=50, help="external commits timed")
    parser.add_argument("--rounds", type=int, default=3, help="stale-read checker rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of each round")
    parser.add_argument("--changes", type=int, default=40, help="changes of the precision check")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one backend only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        if args.only in (None, "sqlite"):
            url = f"sqlite:///{directory / 'fresh.db'}"
            for line in run("sqlite", url, args, directory).lines():
                print(line, flush=True)
        if args.only in (None, "postgresql"):
            from tests.support.postgres import PostgresServer, PostgresUnavailableError

            try:
                with PostgresServer() as server:
                    url = server.create_database("bench_freshness")
                    for line in run("postgresql", url, args, directory).lines():
                        print(line, flush=True)
            except PostgresUnavailableError as error:
                print(f"postgresql: skipped ({error})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
