"""Commit-to-callback lag of the change feed: ``python -m bench.feed_lag [--writes N] [--url URL]``.

Commits ``--writes`` single-row updates, one every ``--interval`` seconds,
each in its own transaction, and prints p50 / p99 / max of the time from
the change row's ``committed_at`` to the follower's ``on_changes`` callback.
Without ``--url`` it measures a temporary SQLite file and a throwaway
PostgreSQL server (from :mod:`tests.support.postgres`, skipped when
PostgreSQL is not installed). :func:`measure` is what the tests call.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text

from sesscache.changes import Change
from sesscache.db import make_engine, prepare_database
from sesscache.feed import ChangeFollower, FeedGap, FeedSettings, Lag


def measure(
    url: str, *, writes: int = 200, interval: float = 0.005, settings: FeedSettings | None = None
) -> Lag:
    """Prepare the database at ``url``, follow it, commit ``writes`` updates; the lag."""
    engine = make_engine(url)
    try:
        prepare_database(engine, persons=3)
        delivered = threading.Semaphore(0)
        started = threading.Event()

        def on_changes(changes: list[Change]) -> None:
            for _ in changes:
                delivered.release()

        def on_gap(_gap: FeedGap) -> None:
            started.set()

        with ChangeFollower(
            url, on_changes=on_changes, on_gap=on_gap, settings=settings
        ) as follower:
            if not started.wait(30):
                raise RuntimeError("the follower did not start")
            for number in range(writes):
                with engine.begin() as connection:
                    connection.execute(
                        text("UPDATE person SET name = :name WHERE id = 1"),
                        {"name": f"lag {number}"},
                    )
                time.sleep(interval)
            for _ in range(writes):
                if not delivered.acquire(timeout=30):
                    raise RuntimeError("a change was not delivered within 30 s")
            return follower.lag()
    finally:
        engine.dispose()


def describe(label: str, lag: Lag) -> str:
    """One line: the label and the figures in milliseconds."""
    if lag.p50 is None or lag.p99 is None or lag.max is None:
        return f"{label}: no samples"
    return (
        f"{label}: {lag.count} commits, commit -> callback p50 {lag.p50 * 1000:.1f} ms, "
        f"p99 {lag.p99 * 1000:.1f} ms, max {lag.max * 1000:.1f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_lag", description=__doc__)
    parser.add_argument("--writes", type=int, default=200, help="commits to measure")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between commits")
    parser.add_argument("--url", help="a database URL (default: SQLite and a throwaway PostgreSQL)")
    args = parser.parse_args(argv)
    if args.url:
        print(describe(args.url, measure(args.url, writes=args.writes, interval=args.interval)))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'feed.db'}"
        print(describe("sqlite", measure(url, writes=args.writes, interval=args.interval)))
    from tests.support.postgres import PostgresServer, PostgresUnavailableError

    try:
        with PostgresServer() as server:
            url = server.create_database("feed_lag")
            lag = measure(url, writes=args.writes, interval=args.interval)
            print(describe("postgresql", lag))
    except PostgresUnavailableError as error:
        print(f"postgresql: skipped ({error})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
