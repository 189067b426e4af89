"""Memory after a burst of sessions comes back (see :mod:`sesscache_server.memory`).

A real ``python -m sesscache_server`` child serves 3,000 sessions, each caching one
query, which are then ended: its resident memory must come back to within
10% (or 16 MiB, whichever is larger) of what it was before the burst. Before
the fix it stayed ~100 MiB up: garbage cycles waiting for a full collection,
and allocators keeping what was freed (see :mod:`sesscache_server.memory`).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from harness.child import Child
from sesscache_client import Client

SESSIONS = 3000
NAMES = 50
MiB = 1024 * 1024


def _name(i: int) -> str:
    return f"person {i % NAMES + 1:02d}"


@pytest.mark.slow
def test_rss_comes_back_after_a_burst_of_sessions(tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)]
    with Child(args) as server, Client(server.target, timeout=30) as client:
        process = psutil.Process(server.process.pid)
        # Every query shape once, so the caches bounded per shape are as full
        # before the start as after the burst.
        for i in range(NAMES):
            client.session(f"warm-{i}").query_persons(name=_name(i))
            client.session(f"warm-{i}").end()
        time.sleep(1)
        start = process.memory_info().rss

        # One call at a time: concurrent calls would also start more database
        # worker threads (up to --db-workers), each with a stack of its own.
        for i in range(SESSIONS):
            client.session(f"s-{i}").query_persons(name=_name(i))
        peak = process.memory_info().rss
        assert client.server_stats().sessions == SESSIONS
        for i in range(SESSIONS):
            client.session(f"s-{i}").end()
        assert client.server_stats().sessions == 0

        bound = max(start * 1.1, start + 16 * MiB)
        deadline = time.monotonic() + 15  # the upkeep releases memory every 5 s
        after = process.memory_info().rss
        while after > bound and time.monotonic() < deadline:
            time.sleep(0.5)
            after = process.memory_info().rss
        figures = (
            f"RSS start {start / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
            f"after the sessions ended {after / MiB:.1f} MiB (bound {bound / MiB:.1f} MiB)"
        )
        assert peak > start + 48 * MiB, f"the burst did not show: {figures}"
        assert after <= bound, figures
