"""The change follower on SQLite and a real PostgreSQL: every change once, in order, or a gap.

Writers use plain SQL through the driver, like any other program. Covered:
delivery of every change exactly once in commit order (on PostgreSQL also a
transaction that commits after a later one, with a smaller id); commit-to-
callback lag (p50 / p99 printed, loosely bounded); retention overflow,
database stop and restart, follower restart, a failing consumer and a
recreated log, each reported as a typed gap; pruning.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from bench.feed_lag import describe, measure
from sesscache.changes import Change, PruneResult, prune, read_changes
from sesscache.db import make_engine, prepare_database
from sesscache.feed import (
    ChangeFollower,
    FeedGap,
    FeedSettings,
    GapReason,
    Snapshot,
    percentile,
)
from tests.support.plain import connect, conninfo_params, run, run_all
from tests.support.polling import wait_until
from tests.support.postgres import PostgresServer

SETTINGS = FeedSettings(
    poll_interval=0.01, fallback_interval=0.5, reconnect_min=0.05, reconnect_max=0.3
)


class Recorder:
    """A consumer that records what it is told and lets tests wait for it."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.gaps: list[FeedGap] = []
        self.disconnects: list[str] = []
        self.fail_next = False
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self._condition = threading.Condition()

    def on_changes(self, changes: list[Change]) -> None:
        self.entered.set()
        self.hold.wait(20)
        with self._condition:
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("the consumer failed")
            self.changes.extend(changes)
            self._condition.notify_all()

    def on_gap(self, gap: FeedGap) -> None:
        with self._condition:
            self.gaps.append(gap)
            self._condition.notify_all()

    def on_disconnect(self, reason: str) -> None:
        with self._condition:
            self.disconnects.append(reason)
            self._condition.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        with self._condition:
            assert self._condition.wait_for(predicate, timeout), f"timed out waiting for {what}"

    def wait_gaps(self, count: int) -> FeedGap:
        self.wait(lambda: len(self.gaps) >= count, f"{count} gaps")
        return self.gaps[count - 1]

    def wait_ids(self, ids: list[int]) -> None:
        wanted = set(ids)
        self.wait(lambda: wanted <= {c.id for c in self.changes}, f"changes {sorted(wanted)}")

    def ids(self) -> list[int]:
        with self._condition:
            return [c.id for c in self.changes]


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    prepare_database(engine, persons=5)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def follow(database_url: str) -> Iterator[Callable[..., tuple[ChangeFollower, Recorder]]]:
    started: list[ChangeFollower] = []

    def make(settings: FeedSettings = SETTINGS) -> tuple[ChangeFollower, Recorder]:
        recorder = Recorder()
        follower = ChangeFollower(
            database_url,
            on_changes=recorder.on_changes,
            on_gap=recorder.on_gap,
            on_disconnect=recorder.on_disconnect,
            settings=settings,
        )
        started.append(follower)
        follower.start()
        return follower, recorder

    yield make
    for follower in started:
        follower.close()


def logged(engine: Engine, after: int = 0) -> list[Change]:
    with engine.connect() as connection:
        return read_changes(connection, after=after, limit=100_000)


def test_every_committed_change_is_delivered_once_in_order(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    # Small batches, and no fallback read: paging and the wake-up must do it all.
    settings = FeedSettings(poll_interval=0.01, fallback_interval=60.0, batch=4)
    follower, recorder = follow(settings)
    replica, replica_recorder = follow(settings)  # another server process, say
    gap = recorder.wait_gaps(1)
    replica_recorder.wait_gaps(1)
    assert gap.reason is GapReason.START
    assert gap.previous is None
    assert gap.position == logged(engine)[-1].id
    run_all(
        database_url,
        "INSERT INTO person (id, name) VALUES (100, 'feed 100')",
        "UPDATE person SET name = name || '!'",  # five rows, one statement
        "UPDATE address SET street = 'moved' WHERE person_id = 2",
        "DELETE FROM person WHERE id = 100",
        "INSERT INTO country (id, name) VALUES (100, 'Atlantis')",
    )
    expected = [c.id for c in logged(engine, gap.position)]
    assert len(expected) == 1 + 6 + 2 + 1 + 1
    recorder.wait_ids(expected)
    replica_recorder.wait_ids(expected)
    time.sleep(0.1)
    assert recorder.ids() == expected
    assert replica_recorder.ids() == expected
    assert replica.position == expected[-1]
    assert follower.position == follower.head == expected[-1]
    assert follower.delivered == len(expected)
    assert follower.gaps()[GapReason.START] == 1


@pytest.mark.postgres
def test_postgres_a_late_commit_with_a_smaller_id_is_delivered_not_skipped(
    postgres: PostgresServer, follow_pg: tuple[str, Engine]
) -> None:
    url, _engine = follow_pg
    recorder = Recorder()
    with ChangeFollower(
        url, on_changes=recorder.on_changes, on_gap=recorder.on_gap, settings=SETTINGS
    ) as follower:
        recorder.wait_gaps(1)
        with (
            psycopg.connect(**conninfo_params(url)) as first,
            psycopg.connect(**conninfo_params(url)) as second,
        ):
            first.execute("INSERT INTO person (id, name) VALUES (200, 'first begun')")
            second.execute("INSERT INTO person (id, name) VALUES (201, 'second begun')")
            second.commit()
            recorder.wait(lambda: any(c.row_id == 201 for c in recorder.changes), "201")
            position_while_open = follower.position
            first.execute("UPDATE person SET name = 'first, later' WHERE id = 200")
            first.commit()
            recorder.wait(lambda: len(recorder.changes) == 3, "the late transaction")
        # The position moves past the late rows on a read after their transaction
        # ended: wait for it while the follower still runs.
        wait_until(lambda: follower.position == follower.head, what="the position to catch up")
    by_row = {(c.row_id, c.op.value): c for c in recorder.changes}
    early, late = by_row[(200, "I")], by_row[(201, "I")]
    assert early.id < late.id  # allocated first, committed last
    assert [c.row_id for c in recorder.changes] == [201, 200, 200]
    assert len({c.id for c in recorder.changes}) == 3
    assert position_while_open < early.id  # not complete past the open transaction
    assert follower.position == follower.head == max(c.id for c in recorder.changes)


@pytest.fixture(scope="module")
def follow_pg(pg_database: tuple[str, str]) -> Iterator[tuple[str, Engine]]:
    """A prepared PostgreSQL database for the PostgreSQL-only tests of the module."""
    url, _conninfo = pg_database
    engine = make_engine(url)
    prepare_database(engine, persons=3)
    try:
        yield url, engine
    finally:
        engine.dispose()


def test_concurrent_writers_every_change_once_and_each_row_in_commit_order(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    """Writers hold transactions open for random times (some roll back): nothing lost or doubled."""
    _follower, recorder = follow()
    gap = recorder.wait_gaps(1)
    writers, transactions = 4, 15
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        connection = connect(database_url, autocommit=False)
        try:
            for number in range(transactions):
                row = rng.randint(1, 5)
                run(connection, f"UPDATE person SET name = 'w{seed} {number}' WHERE id = {row}")  # noqa: S608
                run(connection, f"UPDATE address SET street = 's{seed} {number}' WHERE id = {row}")  # noqa: S608
                time.sleep(rng.random() * 0.01)
                if rng.random() < 0.2:
                    connection.rollback()
                else:
                    connection.commit()
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    committed = [c.id for c in logged(engine, gap.position)]
    recorder.wait_ids(committed)
    time.sleep(0.2)
    delivered = recorder.ids()
    assert sorted(delivered) == committed  # every committed change, once
    by_row: dict[tuple[str, int], list[int]] = {}
    for change in recorder.changes:
        by_row.setdefault((change.table, change.row_id), []).append(change.id)
    for ids in by_row.values():
        assert ids == sorted(ids)  # one row's changes in commit order


def test_commit_to_callback_lag(
    engine: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    writes = 40
    lag = measure(database_url, writes=writes, interval=0.01, settings=SETTINGS)
    assert lag.count == writes
    assert lag.p99 is not None
    with capsys.disabled():
        print(f"\n{describe(f'[feed lag, {engine.dialect.name}]', lag)}")
    assert lag.p99 < 2.0  # loose: a shared, loaded machine


def test_falling_behind_retention_is_a_gap(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    follower, recorder = follow()
    recorder.wait_gaps(1)
    recorder.hold.clear()  # the consumer is stuck on the next batch
    run_all(database_url, "UPDATE person SET name = 'stuck' WHERE id = 1")
    assert recorder.entered.wait(10)
    run_all(
        database_url,
        *(f"UPDATE person SET name = 'behind {n}' WHERE id = 2" for n in range(10)),  # noqa: S608
    )
    result = prune_twice(engine, keep=2)
    assert result.deleted > 0
    recorder.hold.set()
    gap = recorder.wait_gaps(2)
    assert gap.reason is GapReason.RETENTION
    assert gap.position >= result.pruned_through
    run_all(database_url, "UPDATE person SET name = 'caught up' WHERE id = 3")
    newest = logged(engine)[-1].id
    recorder.wait_ids([newest])
    assert follower.gaps()[GapReason.RETENTION] == 1


def prune_twice(engine: Engine, **limits: Any) -> PruneResult:
    """Two prunes (on PostgreSQL the first may only set the horizon); their total."""
    deleted = 0
    for _ in range(2):
        with engine.begin() as connection:
            result = prune(connection, min_interval=0.0, **limits)
        deleted += result.deleted
    return PruneResult(deleted=deleted, pruned_through=result.pruned_through)


def test_prune_keeps_a_bounded_number_and_age(engine: Engine, database_url: str) -> None:
    run_all(database_url, *(f"UPDATE person SET name = 'p {n}' WHERE id = 4" for n in range(5)))  # noqa: S608
    ids = [c.id for c in logged(engine)]
    result = prune_twice(engine, keep=3)
    assert result.deleted == len(ids) - 3
    assert result.pruned_through == ids[-4]
    assert [c.id for c in logged(engine)] == ids[-3:]
    with engine.begin() as connection:
        assert not prune(connection, keep=0, min_interval=60.0).ran  # too soon: nothing
    assert [c.id for c in logged(engine)] == ids[-3:]
    everything = prune_twice(engine, keep=None, max_age=0.0, now=time.time() + 1)
    assert everything.deleted == 3
    assert everything.pruned_through == ids[-1]
    with engine.begin() as connection:
        again = prune(connection, keep=10, min_interval=0.0)
        state = connection.execute(text("SELECT pruned_through FROM sesscache_change_state"))
        assert again.pruned_through == state.scalar() == ids[-1]
    run_all(database_url, "UPDATE person SET name = 'after pruning' WHERE id = 1")
    assert [c.id for c in logged(engine)] == [ids[-1] + 1]  # ids are never reused


def test_prunes_within_the_limits_leave_followers_alone(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    follower, recorder = follow()
    recorder.wait_gaps(1)
    for _ in range(3):
        with engine.begin() as connection:
            assert not prune(connection, keep=10**6, min_interval=0.0).ran
    run_all(database_url, "UPDATE person SET name = 'still following' WHERE id = 5")
    recorder.wait_ids([logged(engine)[-1].id])
    assert [gap.reason for gap in recorder.gaps] == [GapReason.START]
    assert follower.gaps()[GapReason.RETENTION] == 0


def test_restarting_the_follower_reports_a_restart_gap(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    follower, recorder = follow()
    recorder.wait_gaps(1)
    follower.stop()
    run_all(database_url, "UPDATE person SET name = 'while stopped' WHERE id = 1")
    follower.start()
    gap = recorder.wait_gaps(2)
    assert gap.reason is GapReason.START
    assert gap.position == logged(engine)[-1].id
    run_all(database_url, "UPDATE person SET name = 'after restart' WHERE id = 1")
    newest = logged(engine)[-1].id
    recorder.wait_ids([newest])
    assert recorder.ids() == [newest]  # the write while stopped is covered by the gap


def test_a_failing_consumer_and_a_recreated_log_are_gaps(
    engine: Engine, database_url: str, follow: Callable[..., tuple[ChangeFollower, Recorder]]
) -> None:
    _follower, recorder = follow()
    recorder.wait_gaps(1)
    recorder.fail_next = True
    run_all(database_url, "UPDATE person SET name = 'boom' WHERE id = 1")
    assert recorder.wait_gaps(2).reason is GapReason.CONSUMER_ERROR
    run_all(database_url, "UPDATE sesscache_change_state SET epoch = 'another'")
    assert recorder.wait_gaps(3).reason is GapReason.LOG_RESET
    run_all(database_url, "UPDATE person SET name = 'fine' WHERE id = 1")
    newest = logged(engine)[-1].id
    recorder.wait_ids([newest])


@pytest.mark.postgres
def test_postgres_stopped_and_restarted_is_a_connection_lost_gap_then_resumes(
    postgres: PostgresServer, follow_pg: tuple[str, Engine]
) -> None:
    if not postgres.can_restart:
        pytest.skip("an external PostgreSQL server cannot be restarted")
    url, engine = follow_pg
    recorder = Recorder()
    with ChangeFollower(
        url,
        on_changes=recorder.on_changes,
        on_gap=recorder.on_gap,
        on_disconnect=recorder.on_disconnect,
        settings=SETTINGS,
    ) as follower:
        recorder.wait_gaps(1)
        try:
            postgres.stop("fast")
            recorder.wait(lambda: bool(recorder.disconnects), "the disconnect")
            assert not follower.connected
        finally:
            postgres.start_again()
        gap = recorder.wait_gaps(2)
        assert gap.reason is GapReason.CONNECTION_LOST
        assert follower.connected
        run_all(url, "UPDATE person SET name = 'after the outage' WHERE id = 1")
        newest = logged(engine)[-1].id
        recorder.wait_ids([newest])
        assert follower.gaps()[GapReason.CONNECTION_LOST] == 1


def test_snapshot_arithmetic() -> None:
    snapshot = Snapshot.parse("10:20:12,15")
    assert snapshot.xip == {12, 15}
    assert snapshot.finished(9)
    assert snapshot.finished(11)
    assert not snapshot.finished(12)
    assert not snapshot.finished(20)
    assert Snapshot.parse("5:5:").xip == frozenset()


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_the_sqlite_follower_needs_a_file() -> None:
    with pytest.raises(ValueError, match="memory"):
        ChangeFollower("sqlite://", on_changes=lambda _: None, on_gap=lambda _: None)
