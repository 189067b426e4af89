"""Real sesscache servers for tests: in-process (a thread) or a child process.

:class:`ServerThread` runs the real aio server on its own event loop in a
background thread, listening on 127.0.0.1 port 0, so tests reach it through
real gRPC and can look at its registry. :class:`ServerProcess` runs
``python -m sesscache_server`` as a child process (for signals, the command line and
the compose file's command), and finds its port in the log line it prints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sesscache_server import app, config
from sesscache_server.child import SERVING_LINE

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread for every in-process server of the test run.

    grpc.aio keeps process-wide state tied to the loop it first ran on, so
    servers share one loop rather than each closing a loop of its own.
    """
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="test-servers", daemon=True).start()
    return loop


class ServerThread:
    """The server on the test run's shared event-loop thread."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = dataclasses.replace(settings, listen="127.0.0.1:0")
        self._loop = _shared_loop()
        self.running: app.Running | None = None

    @property
    def target(self) -> str:
        assert self.running is not None, "server not started"
        return f"127.0.0.1:{self.running.port}"

    def start(self) -> Self:
        engine = app.prepare(self.settings)
        self.running = self.run(app.start(self.settings, engine))
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float = 0) -> None:
        if self.running is not None:
            self.run(self.running.stop(grace))
            self.running = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess:
    """``python -m sesscache_server`` as a child process; its log is kept in :attr:`lines`."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``cwd``: run there (an installed server), without the checkout on ``PYTHONPATH``."""
        self.command = list(command or [sys.executable, "-m", "sesscache_server", *args])
        checkout = {"PYTHONPATH": str(ROOT)} if cwd is None else {}
        self.env = {**os.environ, **checkout, **(env or {})}
        self.cwd = ROOT if cwd is None else cwd
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def target(self) -> str:
        assert self.port is not None, "server not serving"
        return f"127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout: float = 60) -> Self:
        self._process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                self._reader_join()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = SERVING_LINE.search(line)
            if match and self.port is None:
                self.port = int(match.group(2))
                self._ready.set()

    def _reader_join(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader_join()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def stop(self) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        return self.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
