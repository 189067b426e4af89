"""Results, targets, the terminal table, the JSON file and the progress line.

A :class:`Measurement` is one scenario at one number of calls in flight,
aggregated over its rounds: throughput is the median of the rounds, and the
ratio to the floor is the median of the per-round ratios (each sesscache
round against the floor round measured next to it). Latencies are pooled
over the rounds.

The targets of the performance issue are checked in :func:`evaluate`; each
is a ratio of figures measured in the same run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from bench.library import LibraryResults


@dataclass(slots=True)
class Measurement:
    """One scenario at one number of calls in flight."""

    id: str
    label: str
    method: str
    inflight: int
    sessions: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    floor_calls_per_s: float
    floor_p50_ms: float
    floor_p99_ms: float
    #: Median over rounds of (sesscache calls/s / floor calls/s of the same round).
    ratio: float
    #: p50 / floor p50 (pooled latencies).
    latency_ratio: float
    #: Lowest and highest per-round ratio: how noisy ``ratio`` is.
    ratio_min: float
    ratio_max: float
    #: Server CPU per call, µs (all threads of the server process).
    server_cpu_us: float
    floor_server_cpu_us: float
    #: Fraction of a core the load generator used during the sesscache rounds.
    client_cpu: float
    calls: int
    errors: int = 0
    wrong_status: int = 0
    first_error: str = ""
    note: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.inflight)

    @property
    def cpu_ratio(self) -> float:
        """Floor server CPU per call over sesscache's: the ratio if the server's CPU were all."""
        return self.floor_server_cpu_us / self.server_cpu_us if self.server_cpu_us else 0.0


@dataclass(frozen=True, slots=True)
class Setup:
    """A setup step (filling sessions): what it cost the server."""

    what: str
    calls: int
    seconds: float
    server_cpu_us: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Memory:
    """Server memory per live session, from its RSS before and after adding sessions."""

    sessions_added: int
    rss_before: int
    rss_after: int

    @property
    def bytes_per_session(self) -> float:
        return (self.rss_after - self.rss_before) / max(1, self.sessions_added)


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue, as measured."""

    id: str
    description: str
    goal: float
    comparison: Literal[">=", "<="]
    measured: float | None
    detail: str = ""
    #: Lowest and highest per-round value, when the target has rounds.
    low: float | None = None
    high: float | None = None

    @property
    def uncertain(self) -> bool:
        """The rounds disagree: some are on each side of the goal (noise decides ``met``)."""
        if self.low is None or self.high is None:
            return False
        return self.low < self.goal <= self.high

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.comparison == ">=":
            return self.measured >= self.goal
        return self.measured <= self.goal


@dataclass(slots=True)
class Results:
    """Everything one run measured."""

    config: dict[str, Any]
    machine: dict[str, Any]
    started: float
    finished: float = 0.0
    measurements: list[Measurement] = field(default_factory=list)
    library: LibraryResults | None = None
    memory: Memory | None = None
    setups: list[Setup] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, scenario: str, inflight: int) -> Measurement | None:
        for measurement in self.measurements:
            if measurement.key == (scenario, inflight):
                return measurement
        return None

    def to_json(self) -> dict[str, Any]:
        targets = evaluate(self)
        return {
            "version": 1,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "seconds": round(self.finished - self.started, 1),
            "config": self.config,
            "machine": self.machine,
            "scenarios": [{**asdict(m), "cpu_ratio": m.cpu_ratio} for m in self.measurements],
            "setups": [{**asdict(s), "calls_per_s": s.calls_per_s} for s in self.setups],
            "library": self.library.to_json() if self.library else None,
            "memory": (
                {
                    **asdict(self.memory),
                    "bytes_per_session": self.memory.bytes_per_session,
                    "kib_per_session": self.memory.bytes_per_session / 1024,
                }
                if self.memory
                else None
            ),
            "targets": [{**asdict(t), "met": t.met, "uncertain": t.uncertain} for t in targets],
            "notes": self.notes,
        }


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))


# -- targets -------------------------------------------------------------------

#: Per-measurement targets: (scenario, in flight) -> goal on the throughput / floor ratio.
ROW_TARGETS: dict[tuple[str, int], float] = {
    ("query_1row_hit", 64): 0.9,
    ("query_1row_hit", 1): 0.9,
}

#: (scenario, in flight) -> goal on server CPU per call, floor / sesscache.
CPU_TARGETS: dict[tuple[str, int], float] = {
    ("query_1row_hit", 64): 0.87,
    ("query_1row_hit", 1): 0.9,
}


def _normalized_p50(measurement: Measurement | None) -> float | None:
    if measurement is None or measurement.floor_p50_ms <= 0:
        return None
    return measurement.p50_ms / measurement.floor_p50_ms


def _quotient(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom == 0:
        return None
    return top / bottom


def evaluate(results: Results) -> list[Target]:
    """Every target of the issue, measured (``measured`` None: not run)."""
    targets: list[Target] = []
    for (scenario, inflight), goal in ROW_TARGETS.items():
        row = results.find(scenario, inflight)
        targets.append(
            Target(
                f"{scenario}@{inflight}",
                f"cached 1-row QueryPersons, {inflight} in flight: throughput / floor",
                goal,
                ">=",
                row.ratio if row else None,
                detail=(
                    f"rounds {row.ratio_min:.2f}-{row.ratio_max:.2f}; server CPU ratio "
                    f"{row.cpu_ratio:.2f}"
                    if row
                    else ""
                ),
                low=row.ratio_min if row and len(row.rounds) > 1 else None,
                high=row.ratio_max if row and len(row.rounds) > 1 else None,
            )
        )
    for (scenario, inflight), goal in CPU_TARGETS.items():
        row = results.find(scenario, inflight)
        targets.append(
            Target(
                f"{scenario}@{inflight}_cpu",
                f"cached 1-row QueryPersons, {inflight} in flight: server CPU per call, "
                "floor / HIT",
                goal,
                ">=",
                row.cpu_ratio if row else None,
                detail=f"{row.server_cpu_us:.0f} µs per call" if row else "",
            )
        )
    library = results.library
    for label, text in (("50row", "50-row"), ("1row", "1-row")):
        targets.append(
            Target(
                f"library_hit_speedup_{label}",
                f"in process: {text} hit speed-up over the uncached statement",
                4.0,
                ">=",
                library.hit_speedup.get(label) if library else None,
            )
        )
    for label, text in (("1row", "1-row"), ("50row", "50-row")):
        targets.append(
            Target(
                f"library_miss_cost_{label}",
                f"in process: {text} miss that stores / the uncached statement",
                1.25,
                "<=",
                library.miss_cost.get(label) if library else None,
            )
        )
    few = results.find("hit_sessions_few", 1)
    many = results.find("hit_sessions_many", 1)
    targets.append(
        Target(
            "live_sessions_latency",
            "hit p50 with many live sessions / with few (1 in flight, each over its floor)",
            1.15,
            "<=",
            _quotient(_normalized_p50(many), _normalized_p50(few)),
            detail=(
                f"{many.sessions} vs {few.sessions} sessions; raw p50 {many.p50_ms:.3f} vs "
                f"{few.p50_ms:.3f} ms"
                if few and many
                else ""
            ),
        )
    )
    memory = results.memory
    targets.append(
        Target(
            "memory_per_session_kib",
            "server memory per live session holding one 1-row entry, KiB",
            36.0,
            "<=",
            memory.bytes_per_session / 1024 if memory else None,
            detail=f"RSS delta over {memory.sessions_added} sessions" if memory else "",
        )
    )
    first = results.find("list_keys_first", 1)
    last = results.find("list_keys_last", 1)
    targets.append(
        Target(
            "list_keys_last_vs_first",
            "ListCacheKeys last page / first page p50 (1 in flight, each over its floor)",
            1.5,
            "<=",
            _quotient(_normalized_p50(last), _normalized_p50(first)),
            detail=(
                f"raw p50 {last.p50_ms:.3f} vs {first.p50_ms:.3f} ms; {last.note}"
                if first and last
                else ""
            ),
        )
    )
    return targets


# -- output --------------------------------------------------------------------


def _yes_no(met: bool | None, uncertain: bool = False) -> str:
    """``yes``/``NO``, with ``?`` when the rounds straddle the goal; ``-`` when not measured."""
    if met is None:
        return "-"
    return ("yes" if met else "NO") + ("?" if uncertain else "")


def format_table(results: Results) -> str:
    """The terminal report: the scenario table, the library table, the targets."""
    header = (
        f"{'scenario':<40} {'infl':>4} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'floor/s':>8} {'ratio':>6} {'spread':>11} {'cpu rt':>6} {'srv µs':>7} "
        f"{'target':>7} {'met':>4}"
    )
    lines = [header, "-" * len(header)]
    for m in results.measurements:
        goal = ROW_TARGETS.get(m.key)
        wanted = f">={goal:.2f}" if goal is not None else ""
        straddles = len(m.rounds) > 1 and m.ratio_min < (goal or 0) <= m.ratio_max
        met = _yes_no(m.ratio >= goal, straddles) if goal is not None else ""
        flag = ""
        if m.errors or m.wrong_status:
            flag = f"  !! {m.errors} errors, {m.wrong_status} wrong status: {m.first_error}"
        spread = f"{m.ratio_min:.2f}-{m.ratio_max:.2f}" if len(m.rounds) > 1 else ""
        lines.append(
            f"{m.label:<40.40} {m.inflight:>4} {m.calls_per_s:>8.0f} {m.p50_ms:>8.3f} "
            f"{m.p99_ms:>8.3f} {m.floor_calls_per_s:>8.0f} {m.ratio:>6.3f} {spread:>11} "
            f"{m.cpu_ratio:>6.3f} {m.server_cpu_us:>7.0f} {wanted:>7} {met:>4}{flag}"
        )
    lines += [
        "ratio: calls/s over the floor's (an empty RPC on a bare grpc.aio server), median of the "
        "per-round ratios;",
        "spread: lowest-highest per-round ratio; cpu rt: floor server CPU per call over "
        "sesscache's; srv µs: sesscache server CPU per call (all threads)",
    ]
    if results.library is not None:
        from bench.library import format_table as library_table

        lines += ["", "In process (no gRPC):", library_table(results.library)]
    if results.memory is not None:
        memory = results.memory
        lines += [
            "",
            f"Memory: {memory.bytes_per_session / 1024:.1f} KiB per live session "
            f"(RSS {memory.rss_before / 2**20:.0f} -> {memory.rss_after / 2**20:.0f} MiB "
            f"over {memory.sessions_added} sessions with one 1-row entry each)",
        ]
    if results.setups:
        lines += ["", "Setup steps (server CPU per call):"]
        for setup in results.setups:
            lines.append(
                f"  {setup.what}: {setup.calls:,} calls, {setup.calls_per_s:.0f}/s, "
                f"{setup.server_cpu_us:.0f} µs"
            )
    lines += ["", "Targets:"]
    for target in evaluate(results):
        measured = "not run" if target.measured is None else f"{target.measured:.3f}"
        detail = f"  ({target.detail})" if target.detail else ""
        lines.append(
            f"  [{_yes_no(target.met, target.uncertain):>4}] {target.description}: {measured} "
            f"(goal {target.comparison} {target.goal:g}){detail}"
        )
    if any(target.uncertain for target in evaluate(results)):
        lines.append(
            "  ?: the rounds straddle the goal; more rounds (--rounds) or a quieter machine decide"
        )
    if results.notes:
        lines += ["", "Notes:", *(f"  - {note}" for note in results.notes)]
    return "\n".join(lines)


def write_json(results: Results, paths: Sequence[Path]) -> None:
    """Write the results to each of ``paths`` (directories made as needed)."""
    text = json.dumps(results.to_json(), indent=2, sort_keys=False) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, else one line per step."""

    def __init__(self, total: int, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.started = time.monotonic()
        self._width = 0

    def step(self, text: str) -> None:
        """Start the next step, described by ``text``."""
        self.done += 1
        self.show(text)

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        line = f"[{int(elapsed) // 60:d}m{int(elapsed) % 60:02d}s {self.done}/{self.total}] {text}"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
