"""The native topology: N ``python -m sesscache_server`` replicas behind nginx, on loopback.

Every replica runs the real server as a child process with the settings a
scaled deployment needs: the same PostgreSQL database, the shared ``default``
region in the same Redis (``--redis-url``), the same ``--page-token-secret``
(a page token from one replica is good on another), and its own port. Its
log goes to ``<workdir>/replica-N.log``; the port is read from the
``serving on HOST:PORT`` line.

Two nginx instances run from the repository's config (:mod:`scale.nginx`):
``proxy`` in front of every replica (the topology under test), and
``single`` in front of replica 1 alone (for the benchmark: the proxy's cost
on one replica, and 1 against N replicas through the same proxy).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from scale.nginx import ROOT, Nginx
from sesscache_server.child import serving_port

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy so far (all processes, all users)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


@dataclass
class Replica:
    """One ``python -m sesscache_server`` child process."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str]
    port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} is not serving")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def poll_serving(self) -> bool:
        """Whether the log says it serves (and so its port is known)."""
        if self.port is not None:
            return True
        self.port = serving_port(self.log())
        return self.port is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """SIGTERM: the server's graceful drain."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Topology:
    """``replicas`` servers, nginx in front of them all, and nginx in front of the first."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str,
        redis_url: str,
        replicas: int = 3,
        grace: float = 5.0,
        seed_persons: int = 50,
        nginx_binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica")
        self.workdir = workdir
        self.database_url = database_url
        self.redis_url = redis_url
        self.grace = grace
        self.page_token_secret = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSCACHE_")}
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable,
            "-m",
            "sesscache_server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
            "--page-token-secret",
            self.page_token_secret,
            "--grace",
            str(grace),
            "--seed-persons",
            str(seed_persons),
            "--data-dir",
            str(workdir / "data"),
            *extra_args,
        ]
        self.replicas = [
            Replica(f"replica-{n}", command, workdir / f"replica-{n}.log", env)
            for n in range(1, replicas + 1)
        ]
        self.nginx_binary = nginx_binary
        self.proxy: Nginx | None = None
        self.single: Nginx | None = None

    def start(self, timeout: float = 90) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for replica in self.replicas:  # all at once: they share the schema set-up
                replica.spawn()
            deadline = time.monotonic() + timeout
            waiting = list(self.replicas)
            while waiting:
                for replica in list(waiting):
                    if replica.poll_serving():
                        waiting.remove(replica)
                    elif not replica.running:
                        raise RuntimeError(f"{replica.name} exited:\n{replica.log()}")
                if time.monotonic() > deadline:
                    names = ", ".join(r.name for r in waiting)
                    raise TimeoutError(f"{names} not serving after {timeout}s")
                time.sleep(0.05)
            targets = [replica.target for replica in self.replicas]
            self.proxy = Nginx(
                self.workdir / "nginx", targets, binary=self.nginx_binary, name="nginx"
            ).start()
            self.single = Nginx(
                self.workdir / "nginx-single",
                targets[:1],
                binary=self.nginx_binary,
                name="nginx (replica-1 only)",
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proxy in (self.proxy, self.single):
            if proxy is not None:
                with contextlib.suppress(Exception):
                    proxy.stop()
        for replica in self.replicas:
            replica.terminate()
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
