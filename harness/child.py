"""One child process for tests, bench, soak and scale: start it, watch it, measure it, stop it.

:class:`Child` runs ``python -m MODULE ARGS`` (``sesscache_server`` unless
told otherwise, e.g. ``bench.floor``) from the repository root with
``PYTHONPATH`` set to it, stdout and stderr going to one log (a file of
yours, or an unlinked temporary file). A server announces itself with one
log line, ``... serving on HOST:PORT`` (see :func:`sesscache_server.app.serve`):
with ``--listen HOST:0`` that line is how the parent learns its port, so
:meth:`Child.start` waits for it (and, if asked, for the gRPC health service
to say SERVING). The child gets SIGTERM when the thread that started it
dies (``PR_SET_PDEATHSIG``, Linux), so a killed benchmark or soak leaves no
server behind.

Resident memory and CPU time come from psutil, the child's own children
included. :meth:`Child.stop` sends SIGTERM (the server's graceful drain),
then SIGKILL after ``timeout``; :meth:`Child.problems` lists the ERROR,
CRITICAL and ``Traceback`` lines of the log.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ROOT", "SERVING_LINE", "Child", "die_with_parent", "problem_blocks", "serving_port"]

#: The repository root: the children's working directory and ``PYTHONPATH``.
ROOT = Path(__file__).resolve().parents[1]
#: The log line of a server (or of the benchmark's floor server) that serves.
SERVING_LINE = re.compile(r"serving on (\S+):(\d+)")
#: The start of a log record (continuation lines, e.g. of a traceback, lack it).
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_PR_SET_PDEATHSIG = 1


def serving_port(text: str) -> int | None:
    """The port in the first ``serving on HOST:PORT`` line of ``text``, if any."""
    match = SERVING_LINE.search(text)
    return int(match.group(2)) if match else None


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    For the start of a worker process; Linux only, elsewhere it does nothing.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: ``python -c`` program that asks for SIGTERM when the parent (``argv[1]``) dies,
#: then becomes the command (the rest); the setting survives ``exec``. Not a
#: ``preexec_fn``: that runs the parent's fork handlers (grpc's among them) in
#: the child, which can abort there.
_LAUNCH = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent is gone already
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _is_problem(line: str) -> bool:
    return " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")


def problem_blocks(text: str, *, blocks: int = 5, lines: int = 60) -> list[list[str]]:
    """The first ``blocks`` ERROR records (or stray tracebacks) of a log, each with the
    lines that carry on from it (at most ``lines``)."""
    found: list[list[str]] = []
    block: list[str] | None = None
    for line in text.splitlines():
        problem = _is_problem(line)
        if _RECORD.match(line) and not problem:
            block = None
        elif problem and (block is None or _RECORD.match(line)):
            if len(found) == blocks:
                break
            block = [line]
            found.append(block)
        elif block is not None and len(block) < lines:
            block.append(line)
    return found


class Child:
    """``python -m MODULE ARGS`` as a child process, its output in one log.

    ``env`` adds to ``base_env`` (default: this process's environment);
    ``command`` replaces the whole command line; ``log_path`` keeps the log
    in that file (truncated on start, appended to on restart). The checkout
    is put on ``PYTHONPATH`` (for ``bench``, ``soak``...), unless
    ``checkout_path`` is False (an installed server, run from elsewhere).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        module: str = "sesscache_server",
        command: Sequence[str] | None = None,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        log_path: Path | None = None,
        die_with_parent: bool = True,
        start_timeout: float = 60.0,
        checkout_path: bool = True,
    ) -> None:
        self.command = list(command or [sys.executable, "-m", module, *args])
        self.name = name or module
        base = os.environ if base_env is None else base_env
        checkout = {"PYTHONPATH": str(ROOT)} if checkout_path else {}
        self.env = {**base, **checkout, **(env or {})}
        self.cwd = cwd
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        #: How long :meth:`start` (and ``with``) waits for it to serve, by default.
        self.start_timeout = start_timeout
        #: The port of the ``serving on`` line (None until the child serves).
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._log_fd: int | None = None
        self._log_start = 0  # where the current run's output starts in the log

    # -- what it is ----------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, f"{self.name} is not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` to connect to."""
        assert self.port is not None, f"{self.name} is not serving"
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- starting ------------------------------------------------------------

    def start(
        self, *, wait: bool = True, timeout: float | None = None, health: bool = False
    ) -> Self:
        """Start the process; with ``wait``, wait until it serves (see :meth:`wait_serving`;
        ``timeout`` defaults to :attr:`start_timeout`); stopped again if it does not."""
        self.spawn()
        if wait:
            try:
                self.wait_serving(timeout or self.start_timeout, health=health)
            except BaseException:
                self.stop()
                raise
        return self

    def spawn(self) -> None:
        """Start the process, and return at once."""
        assert not self.running, f"{self.name} is running"
        fd = self._open_log()
        command = self.command
        if self.die_with_parent and sys.platform.startswith("linux"):
            command = [sys.executable, "-c", _LAUNCH, str(os.getpid()), *command]
        self._log_start = os.fstat(fd).st_size
        self.port = None
        self._process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
        )
        self._ps = psutil.Process(self._process.pid)

    def poll_serving(self) -> bool:
        """Whether the log says the process serves (and so its port is known)."""
        if self.port is None:
            self.port = serving_port(self._read(self._log_start))
        return self.port is not None

    def wait_serving(self, timeout: float = 60.0, *, health: bool = False) -> int:
        """Wait for the ``serving on`` line (and with ``health`` for the gRPC health
        service to say SERVING); return the port. Raises RuntimeError if the
        process exits first, TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.poll_serving():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not serving after {timeout:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        assert self.port is not None
        if health:
            self._wait_healthy(deadline)
        return self.port

    def _wait_healthy(self, deadline: float) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} never reported SERVING:\n{self.log_tail()}")
                time.sleep(0.05)

    # -- the log -------------------------------------------------------------

    def _open_log(self) -> int:
        if self._log_fd is None:
            if self.log_path is None:
                fd, path = tempfile.mkstemp(prefix="sesscache-child-", suffix=".log")
                os.unlink(path)  # gone with the last descriptor
            else:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                fd = os.open(self.log_path, flags, 0o644)
            self._log_fd = fd
            weakref.finalize(self, os.close, fd)
        return self._log_fd

    def _read(self, start: int = 0) -> str:
        if self._log_fd is None:
            return ""
        size = os.fstat(self._log_fd).st_size
        return os.pread(self._log_fd, max(size - start, 0), start).decode(errors="replace")

    def log_text(self) -> str:
        """Everything the process (and any earlier run of it) wrote so far."""
        return self._read()

    @property
    def lines(self) -> list[str]:
        """The log's lines."""
        return self._read().splitlines()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:])

    def problems(self) -> list[str]:
        """The ERROR and CRITICAL lines, and the first lines of tracebacks, of the log."""
        return [line for line in self.lines if _is_problem(line)]

    def problem_blocks(self, *, blocks: int = 5, lines: int = 60) -> list[list[str]]:
        """See :func:`problem_blocks`."""
        return problem_blocks(self._read(), blocks=blocks, lines=lines)

    # -- measuring -----------------------------------------------------------

    def _processes(self) -> list[psutil.Process]:
        assert self._ps is not None, f"{self.name} is not started"
        try:
            children = self._ps.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        return [self._ps, *children]

    def rss(self) -> int:
        """Resident set size of the process and its children, bytes."""
        total = 0
        for index, process in enumerate(self._processes()):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                if index == 0:
                    raise
        return total

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process (all its threads) and its live
        children have used so far."""
        total = 0.0
        for index, process in enumerate(self._processes()):
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                if index == 0:
                    raise
                continue
            total += times.user + times.system
        return total

    # -- stopping ------------------------------------------------------------

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM if it runs (the server drains gracefully), without waiting."""
        if self.running:
            self.signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; its exit status (``-N``: killed by signal N)."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait ``timeout`` seconds, then SIGKILL; the exit status (None if
        never started)."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self._process.returncode

    def kill(self) -> int:
        """SIGKILL and wait; the exit status."""
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(10)

    def restart(self, *, timeout: float | None = None, health: bool = False) -> Self:
        """Stop (gracefully) and start again; the log goes on in the same file."""
        self.stop()
        return self.start(timeout=timeout, health=health)

    def __enter__(self) -> Self:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
