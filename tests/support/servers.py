"""Real sesscache servers for tests, in process: :class:`ServerThread`.

:class:`ServerThread` runs the real aio server on its own event loop in a
background thread, listening on 127.0.0.1 port 0, so tests reach it through
real gRPC and can look at its registry. For ``python -m sesscache_server`` as a
child process (signals, the command line, the compose file's command) tests
use :class:`harness.child.Child`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sesscache_server import app, config

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
