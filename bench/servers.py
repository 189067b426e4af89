"""Server child processes for the benchmarks: the floor and sesscache.

Each server runs as ``python -m ...`` in its own process, with stdout and
stderr going to a log file (the real server logs each call at info level;
the bench keeps that cost, and keeps it off the terminal). The port is read
from the ``serving on HOST:PORT`` line of that log. :class:`Child` also
reports the process's CPU time and resident memory (psutil).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

from sesscache_server.child import die_with_parent, serving_port

ROOT = Path(__file__).resolve().parents[1]


class Child:
    """A server process whose log goes to ``log_path``."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.command = [sys.executable, *args]
        self.log_path = log_path
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None

    @property
    def target(self) -> str:
        assert self.port is not None, f"{self.name} is not serving"
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} is not started"
        return self._process.pid

    def start(self, timeout: float = 300.0) -> Self:
        """Start the process and wait for its ``serving on`` line."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads run yet)
            )
        self._ps = psutil.Process(self._process.pid)
        deadline = time.monotonic() + timeout
        while self.port is None:
            port = serving_port(self.log_path.read_text(errors="replace"))
            if port is not None:
                self.port = port
                break
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not serving after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (all its threads)."""
        assert self._ps is not None
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """Resident set size, bytes."""
        assert self._ps is not None
        return int(self._ps.memory_info().rss)

    def stop(self) -> int | None:
        """SIGTERM, wait (kill after 30 s); the exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def floor(log_path: Path) -> Child:
    """The floor server (:mod:`bench.floor`): a bare grpc.aio server, an empty handler."""
    return Child("floor", ["-m", "bench.floor", "--listen", "127.0.0.1:0"], log_path)


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
        "-m",
        "sesscache_server",
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
    return Child("sesscache", args, log_path), missing
