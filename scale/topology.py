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
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.child import Child
from scale.nginx import Nginx

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
        args = [
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
            Child(
                args,
                name=f"replica-{n}",
                base_env=env,
                env={"PYTHONUNBUFFERED": "1"},
                log_path=workdir / f"replica-{n}.log",
            )
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
                        raise RuntimeError(f"{replica.name} exited:\n{replica.log_text()}")
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
