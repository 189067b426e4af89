"""The server under soak: ``python -m sesscache_server`` as a child process, watched from outside.

:class:`ServerChild` starts the real server with the soak's limits, at debug
log level, on 127.0.0.1 port 0 with Prometheus metrics on another free
port. A reader thread follows its log: it finds the ports, counts the debug
lines for each eviction and expiry (sessions evicted to make room, sessions
expired after idling, cache entries evicted or expired), and keeps the last
lines for error reports. :meth:`ServerChild.rss` is the resident memory of
the process (psutil); :meth:`ServerChild.metrics` reads ``/metrics``.
Both soak modes (:mod:`soak` and :mod:`soak.hostile`) start their server
with it; ``env`` adds variables such as ``SESSCACHE_AUTH_TOKENS``, and
``log_level`` other than debug leaves the eviction counts at 0.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
from prometheus_client.parser import text_string_to_metric_families

from sesscache_server.child import SERVING_LINE, die_with_parent

ROOT = Path(__file__).resolve().parents[1]

_METRICS = re.compile(r"metrics on http://(\S+):(\d+)/metrics")
#: The start of a log record (continuation lines, e.g. of a traceback, lack it).
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
MAX_BLOCKS = 5
MAX_BLOCK_LINES = 60
#: Debug lines of sesscache.registry and sesscache.store, by what they count.
EVENTS = {
    "sessions_evicted": re.compile(r"sesscache\.registry: session (\S+) evicted to make room"),
    "sessions_expired": re.compile(r"sesscache\.registry: session (\S+) expired after idling"),
    "entries_evicted": re.compile(r"sesscache\.store: cache entry \S+ evicted"),
    "entries_expired": re.compile(r"sesscache\.store: cache entry \S+ expired"),
}


class ServerChild:
    """``python -m sesscache_server ARGS`` in a child process, its log followed by a thread."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
    ) -> None:
        #: Extra environment variables (e.g. ``SESSCACHE_AUTH_TOKENS``: kept off the
        #: command line, where process listings would show them).
        self.env = dict(env or {})
        self.command = [
            sys.executable,
            "-m",
            "sesscache_server",
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            f"--log-level={log_level}",
            *args,
        ]
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        #: Ids of the sessions the server evicted or reaped (its debug lines name them).
        self.ended_by_server: set[str] = set()
        self.problems: list[str] = []  # ERROR / Traceback lines
        #: The first ERROR records and tracebacks whole, continuation lines included.
        self.problem_texts: list[list[str]] = []
        self._block: list[str] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ps: psutil.Process | None = None

    @property
    def target(self) -> str:
        assert self.port is not None, "the server is not serving"
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    def start(self, timeout: float = 120.0) -> Self:
        self._process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets a signal, no locks
        )
        self._ps = psutil.Process(self._process.pid)
        self._reader = threading.Thread(target=self._read, name="server-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._process.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(
                    f"the server exited with {self._process.returncode}:\n" + "\n".join(self.tail)
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server is not serving after {timeout:g}s")
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if " DEBUG " in line:
                for name, pattern in EVENTS.items():
                    if match := pattern.search(line):
                        self.counts[name] += 1
                        if name.startswith("sessions_"):
                            self.ended_by_server.add(match.group(1))
                        break
                continue
            problem = " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
            if problem:
                self.problems.append(line)
            self._keep_problem_text(line, problem)
            if self.port is None and (match := SERVING_LINE.search(line)):
                self.port = int(match.group(2))
            if self.metrics_port is None and (match := _METRICS.search(line)):
                self.metrics_port = int(match.group(2))
            if self.port is not None and self.metrics_port is not None:
                self._ready.set()

    def _keep_problem_text(self, line: str, problem: bool) -> None:
        """Each ERROR record (or stray traceback) with the lines that carry on from it."""
        if _RECORD.match(line) and not problem:
            self._block = None
        elif problem and (self._block is None or _RECORD.match(line)):
            if len(self.problem_texts) < MAX_BLOCKS:
                self._block = [line]
                self.problem_texts.append(self._block)
            else:
                self._block = None
        elif self._block is not None and len(self._block) < MAX_BLOCK_LINES:
            self._block.append(line)

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        assert self._ps is not None
        return int(self._ps.memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, by name (labels dropped: gauges and totals)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.labels:
                    samples[sample.name] = float(sample.value)
        return samples

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; return the exit status (None if never started)."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        return self._process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
