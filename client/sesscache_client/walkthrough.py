"""``python -m sesscache_client.walkthrough``: the README walk-through, checked, against a server.

One session, five steps, each printed as it happens::

    1. query  name='person 10'  -> MISS  (the query runs, its page is stored)
    2. query  name='person 10'  -> HIT   (served from the session cache, no SQL)
    3. keys                     -> lists the key of steps 1 and 2
    4. end                      -> the session existed and dropped its keys
    5. query  name='person 10'  -> MISS  (a new, empty session of the same id)

It first waits up to ``--wait`` seconds for the server to be SERVING. Exit
status: 0 when every step behaved as above, 1 when one did not (a
``FAILED: ...`` line says which) or the server could not be reached, 2 for a
usage error. ``docker compose --profile tools run --rm client`` runs it
against the compose stack.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from sesscache_client._client import DEFAULT_TARGET, Client, Session, new_session_id
from sesscache_client.cli import TARGET_ENV
from sesscache_client.errors import SesscacheError, Unavailable
from sesscache_client.v1 import sesscache_pb2

__all__ = ["WalkthroughFailed", "main", "one_line", "run", "wait_serving"]

EXIT_OK = 0
EXIT_FAILED = 1


class WalkthroughFailed(Exception):
    """A step did not observe what the walk-through expects."""


def _status(response: sesscache_pb2.QueryPersonsResponse) -> str:
    return sesscache_pb2.CacheStatus.Name(response.cache_status).removeprefix("CACHE_STATUS_")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise WalkthroughFailed(message)


def wait_serving(client: Client, seconds: float) -> None:
    """Return once the server answers SERVING; raise WalkthroughFailed after ``seconds``."""
    deadline = time.monotonic() + seconds
    status = "UNREACHABLE"
    while True:
        try:
            status = client.health()
        except Unavailable:
            status = "UNREACHABLE"
        if status == "SERVING":
            return
        if time.monotonic() >= deadline:
            raise WalkthroughFailed(
                f"server {client.target} not SERVING after {seconds:g}s: {status}"
            )
        time.sleep(0.5)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (a cache key holds SQL) as one space."""
    return " ".join(text.split())


def _query(session: Session, name: str, label: str) -> sesscache_pb2.QueryPersonsResponse:
    response = session.query_persons(name=name)
    print(
        f"{label} {name!r}: {_status(response)}  persons: {len(response.persons)}  "
        f"sql statements: {response.sql_statements}",
        flush=True,
    )
    return response


def run(client: Client, session_id: str, name: str) -> None:
    """The five steps in session ``session_id``; raise WalkthroughFailed on a surprise."""
    with client.session(session_id) as session:
        first = _query(session, name, "1. query")
        _expect(
            first.cache_status == sesscache_pb2.CACHE_STATUS_MISS,
            f"step 1: expected MISS, got {_status(first)}",
        )
        _expect(bool(first.persons), f"step 1: no person named {name!r}")
        _expect(bool(first.cache_key), "step 1: no cache key")
        print(f"   key: {one_line(first.cache_key)}", flush=True)

        second = _query(session, name, "2. query again")
        _expect(
            second.cache_status == sesscache_pb2.CACHE_STATUS_HIT,
            f"step 2: expected HIT, got {_status(second)}",
        )
        _expect(second.sql_statements == 0, f"step 2: a HIT ran {second.sql_statements} SQL")
        _expect(second.cache_key == first.cache_key, "step 2: the key differs from step 1's")

        entries = session.list_cache_keys()
        print(
            f"3. keys: {len(entries)} cache {'entry' if len(entries) == 1 else 'entries'}",
            flush=True,
        )
        for entry in entries:
            mark = "  <- the key of steps 1 and 2" if entry.key == first.cache_key else ""
            print(
                f"   {entry.digest or '-'}  region: {entry.region}  rows: {entry.rows}  "
                f"hits: {entry.hits}{mark}",
                flush=True,
            )
        _expect(
            any(entry.key == first.cache_key for entry in entries),
            f"step 3: the key of steps 1 and 2 is not listed: {one_line(first.cache_key)}",
        )

        ended = session.end()
        print(
            f"4. end: session {session_id} ended  existed: {'yes' if ended.existed else 'no'}  "
            f"keys dropped: {ended.keys_dropped}",
            flush=True,
        )
        _expect(ended.existed, "step 4: the session did not exist")
        _expect(ended.keys_dropped >= 1, "step 4: no keys dropped")

        third = _query(session, name, "5. query after end")
        _expect(
            third.cache_status == sesscache_pb2.CACHE_STATUS_MISS,
            f"step 5: expected MISS after end, got {_status(third)}",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sesscache_client.walkthrough",
        description="Run the README walk-through against a sesscache server and check it: "
        "query (MISS), query (HIT), keys, end, query (MISS).",
    )
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"server address (env {TARGET_ENV}, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--session", metavar="ID", help="session id (default: walkthrough-<random>)"
    )
    parser.add_argument(
        "--name",
        default="person 10",
        metavar="N",
        help="the person to query (default: %(default)s)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the server to be SERVING (default: %(default)g)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds per call (default: %(default)g)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the walk-through; return the exit status."""
    args = build_parser().parse_args(argv)
    target = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    session_id = args.session or f"walkthrough-{new_session_id()}"
    print(f"sesscache walk-through: target {target}, session {session_id}", flush=True)
    try:
        with Client(target, timeout=args.timeout) as client:
            wait_serving(client, args.wait)
            run(client, session_id, args.name)
    except WalkthroughFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (SesscacheError, ValueError) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("walk-through OK: MISS, HIT, keys, end, MISS", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
