"""``python -m soak`` (``make soak``): many clients over many sessions against a real server.

The soak starts ``python -m sesscache_server`` as a child process with small limits
and a short idle timeout (so LRU eviction, entry eviction, expiry and the
idle reaper all work), then:

1. warm-up: every query shape once, then the full load for ``warmup``
   seconds; the warm-up sessions are ended or left to the reaper, and the
   soak waits until the server holds no session; the server's resident
   memory (RSS, psutil) now is the *start*;
2. load: ``clients`` threads, each with its own client, work through
   session after session for ``duration`` seconds (see :mod:`soak.load`),
   every answer checked against the database; RSS is sampled for the
   *peak*;
3. drain: the soak waits until every session is gone (ended by its client,
   reaped after idling, or evicted to make room), read from the server's
   ``GetStats``, and checks that the abandoned sessions it samples are
   NOT_FOUND; RSS now is the *end*, which must be within ``tolerance``
   (10 %) of the start.

It prints the calls made, the errors (must be 0), RSS at start, peak and
end, and the sessions and entries evicted and expired (the server's
``GetStats`` counters). :func:`run` returns a :class:`SoakResult`;
``python -m soak`` exits 1 when the result is not :attr:`SoakResult.ok`.

``python -m soak --hostile`` is the variant with a hostile principal's
traffic mixed in: see :mod:`soak.hostile` (and :mod:`soak.traffic`).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.child import Child
from sesscache_client import Client, SessionNotFound
from soak import server as soak_server
from soak.load import Tally, Truth, run_phase, warm_every_shape

__all__ = ["SoakConfig", "SoakResult", "run"]

MiB = 1024 * 1024
MAX_PROBLEMS = 10
MAX_ERROR_SAMPLES = 20


@dataclass(frozen=True)
class SoakConfig:
    """How long, how hard, and the server's limits."""

    duration: float = 60.0
    clients: int = 16
    warmup: float = 5.0
    think_ms: float = 2.0
    idle_timeout: float = 2.0
    max_sessions: int = 32
    max_entries: int = 16
    max_bytes: int = 64 * 1024
    local_expiration: float = 3.0
    database_url: str = ""
    tolerance: float = 0.10
    drain_timeout: float = 60.0
    probe: int = 200
    seed: int | None = None

    def server_args(self, database_url: str) -> list[str]:
        return [
            f"--database-url={database_url}",
            f"--session-idle-timeout={self.idle_timeout}",
            f"--max-sessions={self.max_sessions}",
            f"--max-entries-per-session={self.max_entries}",
            f"--max-bytes-per-session={self.max_bytes}",
            f"--local-expiration={self.local_expiration}",
            "--grace=5",
        ]


@dataclass
class SoakResult:
    """What a soak saw."""

    config: SoakConfig
    database_url: str = ""
    seconds: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_abandoned: int = 0
    sessions_found_gone: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    events: Counter[str] = field(default_factory=Counter)
    server_exit: int | None = None

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)

    @property
    def memory_growth(self) -> float:
        """(end - start) / start."""
        return (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else 0.0

    @property
    def memory_ok(self) -> bool:
        return self.rss_start > 0 and self.memory_growth <= self.config.tolerance

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.memory_ok

    def report(self) -> str:
        config = self.config
        total = sum(self.calls.values())
        calls = ", ".join(f"{name} {count}" for name, count in sorted(self.calls.items()))
        lines = [
            f"soak: {self.seconds:.1f} s of load, {config.clients} clients, "
            f"database {self.database_url}",
            f"server limits: {config.max_sessions} sessions, idle timeout "
            f"{config.idle_timeout:g} s, {config.max_entries} entries and "
            f"{config.max_bytes // 1024} KiB per session, entries expire after "
            f"{config.local_expiration:g} s",
            f"calls: {total} ({total / max(self.seconds, 1e-9):.0f}/s): {calls}",
            f"sessions: {self.sessions_started} started, {self.sessions_ended} ended by their "
            f"client, {self.sessions_abandoned} left to the reaper; "
            f"{self.sessions_found_gone} found gone by their client (evicted or reaped between "
            "its calls)",
            f"errors: {self.errors}",
            *(f"  {sample}" for sample in self.error_samples),
            f"server memory (RSS): start {self.rss_start / MiB:.1f} MiB, "
            f"peak {self.rss_peak / MiB:.1f} MiB, "
            f"after all sessions are gone {self.rss_end / MiB:.1f} MiB "
            f"({self.memory_growth:+.1%} of start; limit +{config.tolerance:.0%})",
            f"sessions evicted: {self.events['sessions_evicted']}, "
            f"sessions expired (idle): {self.events['sessions_expired']}, "
            f"entries evicted: {self.events['entries_evicted']}, "
            f"entries expired: {self.events['entries_expired']}",
            f"result: {'OK' if self.ok else 'FAILED'}",
        ]
        return "\n".join(lines)


def _merge(result: SoakResult, tally: Tally) -> None:
    result.calls.update(tally.calls)
    result.sessions_started += tally.sessions_started
    result.sessions_ended += tally.sessions_ended
    result.sessions_abandoned += len(tally.sessions_abandoned)
    result.errors += tally.errors
    result.error_samples.extend(
        tally.error_samples[: MAX_ERROR_SAMPLES - len(result.error_samples)]
    )


def _wait_until_empty(server: Child, timeout: float) -> bool:
    """Wait until the server holds no session and no entry; False after ``timeout``.

    Authentication is off, so every session is the anonymous principal's: its
    live entries are every session cache's (the server-wide figure also
    counts the shared region's entries, which stay).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = soak_server.get_stats(server)
        if stats.server.sessions == 0 and stats.principal.entries == 0:
            return True
        time.sleep(0.2)
    return False


def _probe_gone(target: str, session_ids: list[str], count: int, seed: int) -> list[str]:
    """Sessions among a sample of ``session_ids`` that the server still has."""
    sample = random.Random(seed).sample(session_ids, min(count, len(session_ids)))
    alive = []
    with Client(target, timeout=30) as client:
        for session_id in sample:
            try:
                client.session(session_id).list_cache_keys()
            except SessionNotFound:
                continue
            alive.append(session_id)
    return alive


def _database(config: SoakConfig, scratch: Path) -> str:
    return config.database_url or f"sqlite:///{scratch / 'soak.db'}"


class PeakSampler:
    """Samples a server's RSS every 0.1 s in a thread; :attr:`peak` is the largest seen."""

    def __init__(self, server: Child) -> None:
        self.server = server
        self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="soak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.server.rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss())
        return self.peak


def _warm_up(server: Child, truth: Truth, config: SoakConfig, seed: int) -> list[Tally]:
    """Every query shape once, then the full load for ``config.warmup`` seconds."""
    shapes = Tally()
    warm_every_shape(server.target, truth, shapes)
    load = run_phase(
        "warm",
        server.target,
        truth,
        clients=config.clients,
        seconds=config.warmup,
        seed=seed,
        think=config.think_ms / 1000,
    )
    return [shapes, load]


def run(config: SoakConfig, *, say: bool = True) -> SoakResult:
    """Run a soak; print progress if ``say``; return what it saw."""
    seed = config.seed if config.seed is not None else random.randrange(1 << 30)

    def progress(text: str) -> None:
        if say:
            print(f"[soak] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="sesscache-soak-") as scratch:
        result = SoakResult(config, database_url=_database(config, Path(scratch)))
        server = soak_server.server(config.server_args(result.database_url))
        try:
            server.start()
            progress(f"server pid {server.process.pid} serving on {server.target}; seed {seed}")
            truth = Truth.read(result.database_url)

            # 1. Warm-up, then the start figure once the server is empty again.
            for phase in _warm_up(server, truth, config, seed):
                for sample in phase.error_samples:
                    result.error(sample)
                result.errors += phase.errors - len(phase.error_samples)
            progress("warm-up done; waiting for every warm-up session to be gone")
            if not _wait_until_empty(server, config.drain_timeout):
                result.error(f"sessions left {config.drain_timeout:g}s after the warm-up")
            result.rss_start = server.rss()
            progress(f"start RSS {result.rss_start / MiB:.1f} MiB; load for {config.duration:g}s")

            # 2. Load, sampling the peak.
            before = soak_server.get_stats(server).server
            sampler = PeakSampler(server)
            started = time.monotonic()
            tally = run_phase(
                "load",
                server.target,
                truth,
                clients=config.clients,
                seconds=config.duration,
                seed=seed + 1,
                think=config.think_ms / 1000,
            )
            result.seconds = time.monotonic() - started
            _merge(result, tally)

            # 3. Drain: every session ended, reaped or evicted; then the end figure.
            progress("load done; waiting for every session to be gone")
            if not _wait_until_empty(server, config.drain_timeout):
                result.error(f"sessions left {config.drain_timeout:g}s after the load")
            result.rss_peak = sampler.stop()
            result.rss_end = server.rss()
            for session_id in _probe_gone(
                server.target, tally.sessions_abandoned, config.probe, seed
            ):
                result.error(f"abandoned session {session_id} still exists")
            after = soak_server.get_stats(server).server
            result.events = soak_server.events(after)
            result.events.subtract(soak_server.events(before))
            result.sessions_found_gone = len(tally.gone)
            # Each session found gone was evicted or reaped at least once.
            gone = {session_id for session_id, _ in tally.gone}
            ended_by_server = result.events["sessions_evicted"] + result.events["sessions_expired"]
            if len(gone) > ended_by_server:
                samples = "; ".join(f"{session_id}: {what}" for session_id, what in tally.gone[:3])
                result.error(
                    f"{len(gone)} sessions found gone by their client, but the server "
                    f"evicted or reaped only {ended_by_server} ({samples})"
                )
        finally:
            result.server_exit = server.stop()
        for line in server.problems()[:MAX_PROBLEMS]:
            result.error(f"server log: {line}")
        if result.server_exit != 0:
            result.error(f"the server exited with {result.server_exit}")
    return result
