"""A throwaway Redis server for the test suite.

:class:`RedisServer` starts Debian's ``redis-server`` on 127.0.0.1 on a free
port, with no persistence and its files in a temporary directory, and can
stop and start it again on the same port (to show a shared-region outage).
:func:`start_or_skip` is the entry point for fixtures: it starts a server,
or skips when ``redis-server`` is not installed, unless Redis is required
(``CI=true`` or ``SESSCACHE_REQUIRE_REDIS=1``), in which case the test fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import redis

from tests.support.required import required


def redis_required() -> bool:
    """Whether a missing Redis must fail the tests instead of skipping them."""
    return required("SESSCACHE_REQUIRE_REDIS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on loopback, without persistence."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = found
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sesscache-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20) -> Self:
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def start_or_skip() -> RedisServer:
    """A started Redis server, or a skip (a failure when Redis is required)."""
    try:
        server = RedisServer()
    except FileNotFoundError as error:
        if redis_required():
            pytest.fail(f"Redis is required here but {error}")
        pytest.skip(str(error))
    return server.start()
