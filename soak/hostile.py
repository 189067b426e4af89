"""``python -m soak --hostile``: the soak with hostile traffic mixed in.

The server (a ``python -m sesscache_server`` child, :func:`soak.server.server`)
runs with authentication on: tokens for the honest principal ``alice``, the
hostile ``bob`` and ``admin`` (who only reads the server's counters), the
small limits of the plain soak, and the per-principal and watcher limits
(``max_sessions_per_principal``, ``max_watchers``,
``max_watchers_per_principal``, ``max_response_bytes``). The traffic is
:mod:`soak.traffic`, in processes of its own. ``--duration`` is split 40 %
quiet, 40 % hostile, 20 % idle (600 s: 240 + 240 + 120):

0. warm-up (``warmup`` s, not counted in ``duration``): alice's load, and
   each of bob's calls once, small; alice ends her sessions, bob's are left
   to the reaper; once the server holds no session, its RSS is the *start*;
1. quiet: alice only. Her hit latency (client side) gives the quiet p50/p99;
2. hostile, as long: alice's load unchanged, with bob's watch storm, padded
   and 1,000-id requests, and session churn;
3. idle: bob stops (his streams closed, his sessions left to the idle
   reaper), alice ends her sessions; once the server holds no session and
   the idle time is over, its RSS is read again (*after idle*).

RSS is sampled every 0.1 s for the peak (psutil), the server's counters
every 0.5 s and at each phase's end with ``GetStats`` as admin (the
response's ``server`` field), never from its log. The CPU seconds the
server, alice and bob's clients spent in each phase (psutil) tell how much
of a small machine bob's own clients took from the other two. The checks
(:attr:`HostileResult.checks`): alice's hostile hit p50 within
``ratio_limit`` (1.5) of the quiet one; no INTERNAL or UNKNOWN status for
anyone; every refusal bob got RESOURCE_EXHAUSTED, his watch storm refused
beyond ``max_watchers_per_principal`` and never holding more; every call
of alice's OK and her answers right, hits served in both phases; the
server drained, its RSS after idle within ``tolerance`` (10 %) of the
start, or ``slack_mib`` (16 MiB) when that is larger; no ERROR in its log
and exit status 0. ``python -m soak --hostile`` prints a table of it all
and exits 1 when a check fails.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import random
import secrets
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness.child import Child
from sesscache_client import Client, SesscacheError
from sesscache_client.v1 import sesscache_pb2 as pb
from soak import server as soak_server
from soak.load import Truth
from soak.traffic import (
    ALICE_QUERIES,
    HOSTILE,
    PAUSE,
    QUIET,
    STOP,
    WARM,
    Phase,
    Tally,
    Traffic,
    alice_main,
    bob_main,
)

__all__ = ["HostileConfig", "HostileResult", "run"]

MiB = 1024 * 1024
MAX_PROBLEMS = 10
#: Shares of ``duration``: quiet, hostile (the same), idle.
QUIET_SHARE, IDLE_SHARE = 0.4, 0.2
BOB_ATTACKS = ("watch", "big", "churn")
#: Counters read from GetStats' server field, per phase.
COUNTERS = ("hits", "misses", "evictions", "sessions_ended")
#: Statuses a call may never end with.
NEVER = ("INTERNAL", "UNKNOWN")


@dataclass(frozen=True)
class HostileConfig:
    """How long, how hostile, and the server's limits."""

    duration: float = 60.0
    warmup: float = 5.0
    alice_clients: int = 4
    think_ms: float = 2.0
    idle_timeout: float = 2.0
    max_sessions: int = 32
    max_entries: int = 16
    max_bytes: int = 64 * 1024
    local_expiration: float = 3.0
    max_sessions_per_principal: int = 8
    max_watchers: int = 8
    max_watchers_per_principal: int = 4
    max_response_bytes: int = 64 * 1024
    watchers: int = 12
    read_interval: float = 1.0
    padded_rate: float = 10.0
    padding: int = 1024 * 1024
    ids_rate: float = 10.0
    churn_rate: float = 50.0
    ratio_limit: float = 1.5
    database_url: str = ""
    tolerance: float = 0.10
    #: Growth allowed in MiB when larger than ``tolerance``: the request and
    #: query-key memos alone may keep 8 MiB (by design, bounded).
    slack_mib: int = 16
    drain_timeout: float = 60.0
    seed: int | None = None

    @property
    def quiet(self) -> float:
        return self.duration * QUIET_SHARE

    @property
    def hostile(self) -> float:
        return self.duration * QUIET_SHARE

    @property
    def idle(self) -> float:
        return self.duration * IDLE_SHARE

    def server_args(self, database_url: str) -> list[str]:
        return [
            f"--database-url={database_url}",
            f"--session-idle-timeout={self.idle_timeout}",
            f"--max-sessions={self.max_sessions}",
            f"--max-entries-per-session={self.max_entries}",
            f"--max-bytes-per-session={self.max_bytes}",
            f"--local-expiration={self.local_expiration}",
            f"--max-sessions-per-principal={self.max_sessions_per_principal}",
            f"--max-watchers={self.max_watchers}",
            f"--max-watchers-per-principal={self.max_watchers_per_principal}",
            f"--max-response-bytes={self.max_response_bytes}",
            "--grace=5",
        ]


@dataclass
class Check:
    name: str
    ok: bool
    figure: str


@dataclass
class HostileResult:
    """What a hostile soak saw."""

    config: HostileConfig
    database_url: str = ""
    seed: int = 0
    #: Seconds each phase really lasted.
    seconds: dict[str, float] = field(default_factory=dict)
    tallies: list[Tally] = field(default_factory=list)
    #: Server counters (GetStats as admin) at the end of each phase, "start" first.
    stats: dict[str, pb.CacheStats] = field(default_factory=dict)
    peak_sessions: int = 0
    #: phase -> server | alice | bob -> CPU seconds (user + system) spent in it.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_start: int = 0
    rss_peak: int = 0
    rss_idle: int = 0
    drained: bool = False
    server_problems: list[str] = field(default_factory=list)
    #: The first ERROR records of the server's log, each with its traceback.
    server_problem_texts: list[list[str]] = field(default_factory=list)
    server_exit: int | None = None
    errors: list[str] = field(default_factory=list)

    # -- figures -------------------------------------------------------------------

    def _tally(self, who: str) -> list[Tally]:
        return [t for t in self.tallies if t.who.split()[0] == who]

    def statuses(self, who: str, phase: str | None = None) -> Counter[str]:
        """Status -> calls of ``who`` ("alice" or "bob"), in ``phase`` or every phase."""
        counts: Counter[str] = Counter()
        for tally in self._tally(who):
            for (at, _kind, status), calls in tally.statuses.items():
                if phase is None or at == phase:
                    counts[status] += calls
        return counts

    def by_kind(self, who: str, phase: str) -> dict[str, Counter[str]]:
        """Kind of call -> status -> calls of ``who`` in ``phase``."""
        kinds: dict[str, Counter[str]] = {}
        for tally in self._tally(who):
            for (at, kind, status), calls in tally.statuses.items():
                if at == phase:
                    kinds.setdefault(kind, Counter())[status] += calls
        return kinds

    def hits(self, phase: str) -> list[float]:
        return sorted(s for t in self._tally("alice") for s in t.hit_seconds.get(phase, []))

    def cache(self, phase: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for tally in self._tally("alice"):
            for (at, status), calls in tally.cache.items():
                if at == phase:
                    counts[status] += calls
        return counts

    def p50(self, phase: str) -> float:
        hits = self.hits(phase)
        return statistics.median(hits) if hits else 0.0

    def p99(self, phase: str) -> float:
        hits = self.hits(phase)
        return hits[min(len(hits) - 1, int(len(hits) * 0.99))] if hits else 0.0

    def mean(self, phase: str) -> float:
        hits = self.hits(phase)
        return statistics.fmean(hits) if hits else 0.0

    @property
    def ratio(self) -> float:
        quiet = self.p50("quiet")
        return self.p50("hostile") / quiet if quiet else float("inf")

    @property
    def never_seen(self) -> int:
        """INTERNAL and UNKNOWN statuses, every principal, every phase."""
        return sum(self.statuses(who)[code] for who in ("alice", "bob") for code in NEVER)

    @property
    def memory_growth(self) -> float:
        return (self.rss_idle - self.rss_start) / self.rss_start if self.rss_start else 0.0

    @property
    def peak_watchers(self) -> int:
        return max((t.peak_watchers for t in self._tally("bob")), default=0)

    def soak_errors(self) -> list[str]:
        found = list(self.errors)
        for tally in self.tallies:
            found.extend(tally.errors)
            found.extend(["..."] if tally.error_count > len(tally.errors) else [])
        return found

    @property
    def checks(self) -> list[Check]:
        config = self.config
        bob = self.statuses("bob")
        refused = {code: n for code, n in bob.items() if code != "OK"}
        watch = self.by_kind("bob", "hostile").get("watch", Counter())
        alice = self.statuses("alice")
        alice_bad = {code: n for code, n in alice.items() if code != "OK"}
        hits = {phase: self.cache(phase)["hit"] for phase in ("quiet", "hostile")}
        limit = config.max_watchers_per_principal
        problems = self.server_problems
        return [
            Check(
                f"alice's hit p50 hostile/quiet <= {config.ratio_limit:g}",
                self.ratio <= config.ratio_limit,
                f"{self.ratio:.2f}",
            ),
            Check("no INTERNAL/UNKNOWN status", self.never_seen == 0, str(self.never_seen)),
            Check(
                "every refusal bob got is RESOURCE_EXHAUSTED",
                set(refused) <= {"RESOURCE_EXHAUSTED"},
                _counts(refused) or "none",
            ),
            Check(
                f"bob's watch storm refused beyond {limit} streams",
                watch["RESOURCE_EXHAUSTED"] > 0 and self.peak_watchers <= limit,
                f"{watch['RESOURCE_EXHAUSTED']} refused, {self.peak_watchers} open at most",
            ),
            Check("every call of alice's OK", not alice_bad, _counts(alice_bad) or "all OK"),
            Check(
                "alice's hits served, quiet and hostile",
                all(hits.values()),
                f"{hits['quiet']} and {hits['hostile']}",
            ),
            Check(
                "no soak error (wrong answers, client failures)",
                not self.soak_errors(),
                str(len(self.soak_errors())),
            ),
            Check("server drained: no session left once idle", self.drained, str(self.drained)),
            Check(
                f"RSS after idle within +{config.tolerance:.0%} of start "
                f"(or +{config.slack_mib} MiB, the larger)",
                self.rss_start > 0
                and (
                    self.memory_growth <= config.tolerance
                    or self.rss_idle - self.rss_start <= config.slack_mib * MiB
                ),
                f"{self.memory_growth:+.1%}, {(self.rss_idle - self.rss_start) / MiB:+.1f} MiB",
            ),
            Check("no ERROR in the server's log", not problems, str(len(problems))),
            Check("server exited 0", self.server_exit == 0, str(self.server_exit)),
        ]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    # -- the table -------------------------------------------------------------------

    def report(self) -> str:
        config = self.config
        seconds = self.seconds
        lines = [
            f"hostile soak: quiet {seconds.get('quiet', 0):.1f} s, hostile "
            f"{seconds.get('hostile', 0):.1f} s, idle {seconds.get('idle', 0):.1f} s "
            f"(--duration {config.duration:g}: 40/40/20 %), after {config.warmup:g} s of "
            f"warm-up; seed {self.seed}; database {self.database_url}",
            f"server limits: {config.max_sessions} sessions, {config.max_sessions_per_principal} "
            f"per principal; {config.max_watchers} watchers, "
            f"{config.max_watchers_per_principal} per principal; responses "
            f"{config.max_response_bytes // 1024} KiB; idle timeout {config.idle_timeout:g} s; "
            f"{config.max_entries} entries and {config.max_bytes // 1024} KiB per session; "
            f"entries expire after {config.local_expiration:g} s",
            f"alice: {config.alice_clients} clients, think {config.think_ms:g} ms, "
            f"{len(ALICE_QUERIES)} queries repeated; one watch stream",
            f"bob: {config.watchers} watch streams wanted (one event read per "
            f"{config.read_interval:g} s), {config.padded_rate:g}/s padded "
            f"({config.padding // 1024} KiB unknown field), {config.ids_rate:g}/s of 1,000 ids, "
            f"{config.churn_rate:g} new sessions/s",
            "",
            f"{'alice':<9}{'calls':>8}{'calls/s':>9}{'hits':>8}{'misses':>8}"
            f"{'hit p50':>10}{'hit p99':>10}{'hit mean':>10}",
        ]
        for phase in ("quiet", "hostile"):
            cache = self.cache(phase)
            calls = sum(self.by_kind("alice", phase).get("query", Counter()).values())
            rate = calls / seconds[phase] if seconds.get(phase) else 0.0
            lines.append(
                f"{phase:<9}{calls:>8}{rate:>9.0f}{cache['hit']:>8}{cache['miss']:>8}"
                f"{_ms(self.p50(phase)):>10}{_ms(self.p99(phase)):>10}{_ms(self.mean(phase)):>10}"
            )
        lines += [
            f"hit p50 hostile/quiet: {self.ratio:.2f} (limit {config.ratio_limit:g})",
            "",
            "status codes (calls, by kind of call)",
        ]
        for who, phase in (
            ("alice", "warm"),
            ("alice", "quiet"),
            ("alice", "hostile"),
            ("bob", "warm"),
            ("bob", "hostile"),
        ):
            kinds = self.by_kind(who, phase)
            text = "; ".join(f"{kind} {_counts(kinds[kind])}" for kind in sorted(kinds))
            lines.append(f"  {who:<5} {phase:<8} {text or '-'}")
        lines.append(f"INTERNAL/UNKNOWN: {self.never_seen}")
        lines.append(
            f"CPU seconds (server / alice / bob's clients; {os.cpu_count()} CPUs): "
            + "; ".join(
                f"{phase} " + " / ".join(f"{self.cpu[phase].get(w, 0):.1f}" for w in WHO)
                for phase in ("quiet", "hostile")
                if phase in self.cpu
            )
        )
        lines.append("")
        lines.append(self._stats_table())
        lines += [
            "",
            f"server RSS: start {self.rss_start / MiB:.1f} MiB, peak {self.rss_peak / MiB:.1f} "
            f"MiB, after idle {self.rss_idle / MiB:.1f} MiB ({self.memory_growth:+.1%} of start; "
            f"limit +{config.tolerance:.0%})",
        ]
        errors = self.soak_errors()
        if errors:
            lines.append("soak errors:")
            lines += [f"  {text}" for text in errors[:MAX_PROBLEMS]]
        if self.server_problems:
            count = len(self.server_problems)
            lines.append(f"server log: {count} ERROR/Traceback lines; the first:")
            for block in self.server_problem_texts[:2]:
                lines += [f"  {text}" for text in block]
        lines += ["", "checks"]
        lines += [f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.figure}" for c in self.checks]
        lines.append(f"result: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)

    def _stats_table(self) -> str:
        phases = [p for p in ("quiet", "hostile", "idle") if p in self.stats]
        lines = ["server counters (GetStats as admin), per phase: " + " / ".join(phases)]
        start = self.stats.get("start")
        previous = start
        rows: dict[str, list[str]] = {name: [] for name in COUNTERS}
        rows["sessions at end"] = []
        limits: list[str] = []
        for phase in phases:
            now = self.stats[phase]
            for name in COUNTERS:
                before = getattr(previous, name) if previous is not None else 0
                rows[name].append(str(getattr(now, name) - before))
            rows["sessions at end"].append(str(now.sessions))
            seen = dict(previous.limits_hit) if previous is not None else {}
            hit = {k: v - seen.get(k, 0) for k, v in sorted(now.limits_hit.items())}
            limits.append(_counts({k: v for k, v in hit.items() if v}) or "-")
            previous = now
        for name, values in rows.items():
            lines.append(f"  {name:<16}" + "".join(f"{v:>10}" for v in values))
        lines.append(f"  {'most sessions':<16}{self.peak_sessions:>10} (sampled every 0.5 s)")
        lines.append("  limits_hit       " + " / ".join(limits))
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda i: -i[1]))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


WHO = ("server", "alice", "bob")


class CpuClock:
    """CPU seconds (user + system) of the server and of alice's and bob's processes."""

    def __init__(self, server: Child, processes: list[Any]) -> None:
        self._ps = {"server": [psutil.Process(server.process.pid)]}
        for process in processes:
            self._ps.setdefault(process.name.split("-")[0], []).append(psutil.Process(process.pid))

    def read(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for who, found in self._ps.items():
            total = 0.0
            for ps in found:
                with contextlib.suppress(psutil.Error):
                    times = ps.cpu_times()
                    total += times.user + times.system
            seconds[who] = total
        return seconds


class Sampler:
    """In a thread: the server's RSS every 0.1 s (the peak) and its session count,
    through GetStats as admin, every 0.5 s (the most seen)."""

    def __init__(self, server: Child, admin: Client) -> None:
        self.server = server
        self.admin = admin
        self.peak = server.rss()
        self.sessions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="soak-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        turn = 0
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.server.rss())
            turn += 1
            if turn % 5 == 0:
                with contextlib.suppress(SesscacheError):
                    self.sessions = max(self.sessions, self.admin.server_stats().sessions)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss())
        return self.peak


def _wait_until_empty(admin: Client, timeout: float) -> bool:
    """Wait until the server holds no session; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if admin.server_stats().sessions == 0:
            return True
        time.sleep(0.2)
    return False


def _database(config: HostileConfig, scratch: Path) -> str:
    return config.database_url or f"sqlite:///{scratch / 'soak.db'}"


def run(config: HostileConfig, *, say: bool = True) -> HostileResult:
    """Run a hostile soak; print progress if ``say``; return what it saw."""
    seed = config.seed if config.seed is not None else random.randrange(1 << 30)

    def progress(text: str) -> None:
        if say:
            print(f"[soak] {text}", flush=True)

    tokens = {who: secrets.token_urlsafe(24) for who in ("alice", "bob", "admin")}
    auth = ",".join(
        f"{token}={who}{':admin' if who == 'admin' else ''}" for who, token in tokens.items()
    )
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sesscache-soak-") as scratch:
        result = HostileResult(config, database_url=_database(config, Path(scratch)), seed=seed)
        server = soak_server.server(
            config.server_args(result.database_url),
            env={"SESSCACHE_AUTH_TOKENS": auth},
            log_level="info",
        )
        processes: list[Any] = []
        try:
            server.start()
            progress(f"server pid {server.process.pid} serving on {server.target}; seed {seed}")
            traffic = Traffic(
                target=server.target,
                tokens=tokens,
                truth=Truth.read(result.database_url),
                seed=seed,
                alice_clients=config.alice_clients,
                think_ms=config.think_ms,
                watchers=config.watchers,
                read_interval=config.read_interval,
                padded_rate=config.padded_rate,
                padding=config.padding,
                ids_rate=config.ids_rate,
                churn_rate=config.churn_rate,
            )
            with Client(server.target, timeout=30, token=tokens["admin"]) as admin:
                _run_phases(
                    config,
                    result,
                    server=server,
                    admin=admin,
                    traffic=traffic,
                    context=context,
                    processes=processes,
                    progress=progress,
                )
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                process.join(10)
            result.server_exit = server.stop()
        result.server_problems = server.problems()
        result.server_problem_texts = server.problem_blocks()
    return result


def _run_phases(
    config: HostileConfig,
    result: HostileResult,
    *,
    server: Child,
    admin: Client,
    traffic: Traffic,
    context: Any,
    processes: list[Any],
    progress: Callable[[str], None],
) -> None:
    shared = context.RawValue("i", WARM)
    phase = Phase(shared)
    ready = context.Queue()
    results = context.Queue()
    processes.append(
        context.Process(target=alice_main, args=(traffic, shared, ready, results), name="alice")
    )
    processes.extend(
        context.Process(
            target=bob_main, args=(kind, traffic, shared, ready, results), name=f"bob-{kind}"
        )
        for kind in BOB_ATTACKS
    )
    for process in processes:
        process.daemon = True
        process.start()

    # 0. Warm-up; the start figure once the server holds no session.
    try:
        for _ in processes:
            ready.get(timeout=120)
    except queue.Empty:
        raise RuntimeError("alice's and bob's processes did not start in 120 s") from None
    progress(f"alice and bob ready; warm-up for {config.warmup:g} s")
    time.sleep(config.warmup)
    phase.set(PAUSE)
    if not _wait_until_empty(admin, config.drain_timeout):
        result.errors.append(f"sessions left {config.drain_timeout:g} s after the warm-up")
    result.rss_start = server.rss()
    result.stats["start"] = admin.server_stats()
    progress(f"start RSS {result.rss_start / MiB:.1f} MiB")

    # 1. Quiet, 2. hostile.
    sampler = Sampler(server, admin)
    clock = CpuClock(server, processes)
    before = clock.read()
    for number, name, seconds in (
        (QUIET, "quiet", config.quiet),
        (HOSTILE, "hostile", config.hostile),
    ):
        progress(f"{name} for {seconds:g} s")
        started = time.monotonic()
        phase.set(number)
        time.sleep(seconds)
        result.stats[name] = admin.server_stats()
        result.seconds[name] = time.monotonic() - started
        now = clock.read()
        result.cpu[name] = {who: now[who] - before.get(who, 0.0) for who in now}
        before = now

    # 3. Idle: everyone stops; the figure once no session is left and the idle time is over.
    phase.set(STOP)
    started = time.monotonic()
    progress(f"idle: bob stops; waiting for every session to be gone, at least {config.idle:g} s")
    for process in processes:
        try:
            result.tallies.append(results.get(timeout=60))
        except queue.Empty:
            result.errors.append(f"process {process.name} reported nothing")
    for process in processes:
        process.join(30)
    result.drained = _wait_until_empty(admin, config.drain_timeout)
    time.sleep(max(0.0, config.idle - (time.monotonic() - started)))
    result.stats["idle"] = admin.server_stats()
    result.seconds["idle"] = time.monotonic() - started
    result.rss_idle = server.rss()
    result.rss_peak = max(sampler.stop(), result.rss_idle)
    result.peak_sessions = sampler.sessions
