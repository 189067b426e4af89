"""Running the server as a child process: what tools and tests share.

The server announces itself with one log line, ``sesscache serving on
HOST:PORT`` (see :func:`sesscache_server.app.serve`); with ``--listen HOST:0`` that
line is how a parent learns the port it got. :data:`SERVING_LINE` matches
it; :func:`die_with_parent` makes a child get SIGTERM when its parent dies,
so a benchmark or soak that is killed leaves no server behind.
"""

from __future__ import annotations

import ctypes
import re
import signal
import sys

#: The log line of a server (or of the benchmark's floor server) that serves.
SERVING_LINE = re.compile(r"serving on (\S+):(\d+)")

_PR_SET_PDEATHSIG = 1


def serving_port(text: str) -> int | None:
    """The port in the first ``serving on HOST:PORT`` line of ``text``, if any."""
    match = SERVING_LINE.search(text)
    return int(match.group(2)) if match else None


def die_with_parent() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: SIGTERM the child when the parent dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
