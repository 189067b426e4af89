"""Server child processes for the benchmarks: the floor and sesscache.

Each server runs as ``python -m ...`` in its own process (a
:class:`harness.child.Child`), with stdout and stderr going to a log file
(the real server logs each call at info level; the bench keeps that cost,
and keeps it off the terminal). The port is read from the ``serving on
HOST:PORT`` line of that log; the child reports its CPU time and resident
memory (psutil).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from harness.child import ROOT, Child

__all__ = ["Child", "floor", "server_flags", "sesscache"]

#: Seeding the benchmark's database may take a while on a loaded machine.
START_TIMEOUT = 300.0


def floor(log_path: Path) -> Child:
    """The floor server (:mod:`bench.floor`): a bare grpc.aio server, an empty handler."""
    return Child(
        ["--listen", "127.0.0.1:0"],
        module="bench.floor",
        name="floor",
        log_path=log_path,
        start_timeout=START_TIMEOUT,
    )


@cache
def server_flags() -> frozenset[str]:
    """The flags ``python -m sesscache_server --help`` lists."""
    result = subprocess.run(
        [sys.executable, "-m", "sesscache_server", "--help"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))


def sesscache(
    log_path: Path,
    database_url: str,
    *,
    seed_persons: int,
    log_level: str = "info",
    optional: Sequence[tuple[str, str]] = (),
) -> tuple[Child, list[str]]:
    """A sesscache server, and the optional flags it does not know (left out).

    ``optional`` flags (such as ``--max-entries-per-session``) are passed only
    when ``python -m sesscache_server --help`` lists them.
    """
    args = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--seed-persons",
        str(seed_persons),
        "--log-level",
        log_level,
    ]
    known = server_flags()
    missing: list[str] = []
    for flag, value in optional:
        if flag in known:
            args += [flag, value]
        else:
            missing.append(flag)
    child = Child(args, name="sesscache", log_path=log_path, start_timeout=START_TIMEOUT)
    return child, missing
