"""The server under soak: ``python -m sesscache_server`` as a child process, watched from outside.

:func:`server` makes the :class:`harness.child.Child` both soak modes
(:mod:`soak` and :mod:`soak.hostile`) start: the real server with the
soak's limits, on 127.0.0.1 port 0, its log in a temporary file (read at the
end for ERROR lines and tracebacks); ``env`` adds variables such as
``SESSCACHE_AUTH_TOKENS`` (kept off the command line, where process
listings would show them). :func:`get_stats` reads the server's counters
through ``GetStats`` (as an admin), :func:`events` the evictions and
expiries among them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from harness.child import Child
from sesscache_client import Client
from sesscache_client.v1 import sesscache_pb2 as pb

__all__ = ["events", "get_stats", "server"]


def server(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, log_level: str = "info"
) -> Child:
    """The soak's server (not started)."""
    return Child(
        ["--listen=127.0.0.1:0", f"--log-level={log_level}", *args],
        env=env,
        start_timeout=120.0,
    )


def get_stats(child: Child, token: str | None = None) -> pb.GetStatsResponse:
    """The server's ``GetStats`` (``token``: an admin's, when auth is on)."""
    with Client(child.target, timeout=30, token=token) as client:
        return client.get_stats()


def events(stats: pb.CacheStats) -> Counter[str]:
    """The sessions and entries the server evicted or expired, as the soak reports them."""
    return Counter(
        sessions_evicted=stats.sessions_evicted,
        sessions_expired=stats.sessions_expired,
        entries_evicted=stats.evictions,
        entries_expired=stats.expirations,
    )
