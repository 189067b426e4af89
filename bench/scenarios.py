"""What the benchmark measures, and how: the scenarios and the run that measures them.

A run starts the floor (:mod:`bench.floor`) and a load generator
(:mod:`bench.loadgen`) once, then sesscache servers one at a time, each on
the same seeded SQLite file, with the real default settings (info logging
to a file) unless a scenario needs more:

``query`` server (defaults)
    ``query_1row_hit`` and ``query_50row_hit`` (a session per worker, warmed
    by one miss, so every measured call is a HIT), ``query_1row_bypass`` and
    ``query_50row_bypass`` (``bypass_cache``), ``query_miss_store`` (every
    call a new 1-row query: a MISS that stores; each worker moves to a new
    session every ``miss_rotate`` calls, so no session is at its entry limit)
    and ``end_session`` (EndSession of sessions holding ``end_entries``
    entries each, filled before the round; a fixed batch of calls, not a
    timed round: ``end_sessions`` calls per round at 1 in flight, one burst
    of one call per worker in a single round above that).
``keys`` server (entry limits raised, when the server has the flags)
    ``list_keys_first`` and ``list_keys_last``: ListCacheKeys (page size
    ``keys_page``) of the first and of the last page over a session holding
    ``keys_entries`` entries, measured in the same rounds.
``live`` server (defaults)
    ``hit_sessions_few``: 1-row hits on a random session among ``live_few``;
    then sessions are added up to ``live_many`` (the server's RSS before and
    after gives the memory per live session) and ``hit_sessions_many``
    measures the same hits among all of them.

Every measurement alternates rounds: floor, scenario(s), then scenario(s),
floor, ... (``rounds`` of each). ``library`` runs :mod:`bench.library` in a
child process before the servers start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from bench import floor, library, servers
from bench.loadgen import Expectation, LoadGenerator, RoundResult, Workload
from bench.report import Measurement, Memory, Progress, Results, Setup
from bench.servers import Child

QUERY = "/sesscache.v1.SessionCache/QueryPersons"
LIST_KEYS = "/sesscache.v1.SessionCache/ListCacheKeys"
END_SESSION = "/sesscache.v1.SessionCache/EndSession"

#: Every scenario id, in the order they run, with its label.
SCENARIOS: dict[str, str] = {
    "library": "in-process library benchmark (no gRPC)",
    "query_1row_hit": "QueryPersons 1 row HIT",
    "query_50row_hit": "QueryPersons 50 rows HIT",
    "query_1row_bypass": "QueryPersons 1 row bypass_cache",
    "query_50row_bypass": "QueryPersons 50 rows bypass_cache",
    "query_miss_store": "QueryPersons 1 row MISS that stores",
    "end_session": "EndSession",
    "list_keys_first": "ListCacheKeys first page",
    "list_keys_last": "ListCacheKeys last page",
    "hit_sessions_few": "QueryPersons 1 row HIT, few sessions",
    "hit_sessions_many": "QueryPersons 1 row HIT, many sessions",
}


@dataclass(frozen=True, slots=True)
class Config:
    """How much to measure. :meth:`quick` is the tiny version (tests, CI smoke)."""

    duration: float = 2.0
    warmup: float = 0.25
    rounds: int = 3
    inflight: tuple[int, ...] = (1, 64)
    persons: int = 10_000
    keys_entries: int = 10_000
    keys_page: int = 100
    end_entries: int = 1_000
    end_sessions: int = 4
    live_few: int = 10
    live_many: int = 10_000
    miss_rotate: int = 500
    library_seconds: float = 1.0
    only: tuple[str, ...] = ()
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides: Any) -> Config:
        """Everything, tiny: a few seconds in all."""
        base = cls(
            duration=0.25,
            warmup=0.05,
            rounds=1,
            inflight=(1, 16),
            persons=1_000,
            keys_entries=300,
            end_entries=20,
            end_sessions=2,
            live_few=10,
            live_many=200,
            miss_rotate=100,
            library_seconds=0.05,
            quick=True,
        )
        return dataclasses.replace(base, **overrides)

    def selected(self, scenario: str) -> bool:
        """Whether ``scenario`` matches ``only`` (shell patterns; empty: everything)."""
        return not self.only or any(fnmatch.fnmatchcase(scenario, p) for p in self.only)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _Side:
    """One run of one side of a round, with the CPU its server used."""

    result: RoundResult
    server_cpu: float
    wall: float

    @property
    def cpu_us_per_call(self) -> float:
        rate = self.result.calls_per_s
        return (self.server_cpu / self.wall) / rate * 1e6 if rate and self.wall else 0.0


@dataclass(slots=True)
class _Variant:
    """A scenario at one number of calls in flight: its workload for each round."""

    id: str
    sessions: int
    work: Callable[[int], Workload]
    note: str = ""
    rounds: int | None = None
    sides: list[tuple[_Side, _Side]] = field(default_factory=list)


def _constant(work: Workload) -> Callable[[int], Workload]:
    """The same workload for every round."""
    return lambda _round: work


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _names(count: int, start: int = 1) -> list[str]:
    from sesscache.fixtures import person_name

    return [person_name(number) for number in range(start, start + count)]


class Bench:
    """One run of the benchmarks; :meth:`run` returns its :class:`Results`."""

    def __init__(self, config: Config, workdir: Path, *, progress: bool = True) -> None:
        self.config = config
        self.workdir = workdir
        self.database_url = f"sqlite:///{workdir / 'bench.db'}"
        self.results = Results(config=config.to_json(), machine=_machine(), started=time.time())
        self.progress = Progress(self._count_measurements(), enabled=progress)
        self._floor: Child | None = None
        self._loadgen: LoadGenerator | None = None

    # -- the run -----------------------------------------------------------------

    def run(self) -> Results:
        """Measure every selected scenario; never raises for one failed scenario."""
        try:
            if self.config.selected("library"):
                self._guard("library", self._library)
            groups = [
                (self._query_group, [s for s in SCENARIOS if s.startswith(("query_", "end_"))]),
                (self._keys_group, ["list_keys_first", "list_keys_last"]),
                (self._live_group, ["hit_sessions_few", "hit_sessions_many"]),
            ]
            if any(self.config.selected(s) for _, ids in groups for s in ids):
                with self._harness():
                    for group, ids in groups:
                        if any(self.config.selected(s) for s in ids):
                            self._guard(ids[0], group)
        finally:
            self.progress.finish()
            self.results.finished = time.time()
            self.results.machine["loadavg_at_end"] = list(os.getloadavg())
            cpus = os.cpu_count() or 1
            before = self.results.machine["loadavg_at_start"][0]
            if before > cpus / 2:
                self.results.notes.append(
                    f"the machine was busy before the bench started (1-minute load average "
                    f"{before:.1f} on {cpus} CPUs): every figure is noisier, ratios less so"
                )
        return self.results

    def _guard(self, what: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as error:
            self.results.notes.append(f"{what}: failed: {type(error).__name__}: {error}")

    @contextlib.contextmanager
    def _harness(self) -> Iterator[None]:
        self.progress.show("starting the floor server and the load generator")
        with (
            servers.floor(self.workdir / "floor.log") as floor_server,
            LoadGenerator() as loadgen,
        ):
            self._floor, self._loadgen = floor_server, loadgen
            try:
                yield
            finally:
                self._floor = self._loadgen = None

    def _count_measurements(self) -> int:
        """Progress steps: one per measurement (both ListCacheKeys pages are one)."""
        selected = {s for s in SCENARIOS if s != "library" and self.config.selected(s)}
        if {"list_keys_first", "list_keys_last"} <= selected:
            selected.discard("list_keys_last")
        library_step = 1 if self.config.selected("library") else 0
        return library_step + len(selected) * len(self.config.inflight)

    @contextlib.contextmanager
    def _server(self, name: str, optional: Sequence[tuple[str, str]] = ()) -> Iterator[Child]:
        self.progress.show(f"starting the {name} sesscache server")
        child, missing = servers.sesscache(
            self.workdir / f"server-{name}.log",
            self.database_url,
            seed_persons=self.config.persons,
            optional=optional,
        )
        if missing:
            self.results.notes.append(
                f"{name} server: python -m sesscache_server lacks {', '.join(missing)}; "
                "ran with its defaults instead"
            )
        with child:
            yield child

    # -- running and measuring ---------------------------------------------------

    def _run(self, child: Child, work: Workload) -> _Side:
        assert self._loadgen is not None
        cpu = child.cpu_seconds()
        began = time.perf_counter()
        result = self._loadgen.run(work)
        wall = time.perf_counter() - began
        return _Side(result, child.cpu_seconds() - cpu, wall)

    def _fill(
        self,
        child: Child,
        sessions: Sequence[str],
        requests: Sequence[bytes],
        *,
        what: str,
        expect: Expectation | None = None,
    ) -> RoundResult:
        """Make ``len(requests)`` calls in each session (``min(64, sessions)`` in flight)."""
        self.progress.show(f"{what}: {len(sessions) * len(requests):,} calls")
        side = self._run(
            child,
            Workload(
                child.target,
                QUERY,
                tuple(requests),
                inflight=min(64, len(sessions)),
                kind="each",
                sessions=tuple(sessions),
                per_session=len(requests),
                expect=expect,
            ),
        )
        result = side.result
        self.results.setups.append(Setup(what, result.calls, result.elapsed, side.cpu_us_per_call))
        if result.errors or result.wrong_status:
            raise RuntimeError(
                f"{what}: {result.errors} errors, {result.wrong_status} unexpected responses "
                f"({result.first_error or 'wrong status'})"
            )
        return result

    def _measure(self, child: Child, variants: Sequence[_Variant], inflight: int) -> None:
        """Alternate floor and ``variants`` rounds; record a measurement per variant."""
        assert self._floor is not None
        config = self.config
        floor_work = Workload(
            self._floor.target,
            floor.METHOD,
            (b"",),
            inflight=inflight,
            sessions=tuple(f"floor-w{w}" for w in range(inflight)),
            duration=config.duration,
            warmup=config.warmup,
        )
        rounds = min((v.rounds or config.rounds) for v in variants)
        names = " + ".join(v.id for v in variants)
        self.progress.step(f"{names} @{inflight}")
        for number in range(rounds):
            works = {v.id: v.work(number) for v in variants}
            order: list[_Variant | None] = [None, *variants]
            if number % 2:
                order.reverse()
            floor_side: _Side | None = None
            sides: dict[str, _Side] = {}
            for item in order:
                side_name = "floor" if item is None else item.id
                self.progress.show(f"{names} @{inflight}: round {number + 1}/{rounds}, {side_name}")
                if item is None:
                    floor_side = self._run(self._floor, floor_work)
                else:
                    sides[item.id] = self._run(child, works[item.id])
            assert floor_side is not None
            for variant in variants:
                variant.sides.append((sides[variant.id], floor_side))
        for variant in variants:
            self.results.measurements.append(_aggregate(variant, inflight, works[variant.id]))

    def _timed(
        self,
        child: Child,
        method: str,
        requests: Sequence[bytes],
        inflight: int,
        sessions: Sequence[str],
        *,
        expect: Expectation | None,
        mode: str = "fixed",
        rotate: int = 0,
    ) -> Workload:
        return Workload(
            child.target,
            method,
            tuple(requests),
            inflight=inflight,
            sessions=tuple(sessions),
            session_mode=mode,  # type: ignore[arg-type]
            rotate=rotate,
            duration=self.config.duration,
            warmup=self.config.warmup,
            expect=expect,
        )

    # -- the groups --------------------------------------------------------------

    def _library(self) -> None:
        self.progress.step("library: in-process hit / uncached / miss-and-store")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            self.results.library = pool.submit(
                library.run,
                self.database_url,
                seconds_per_case=self.config.library_seconds,
                persons=self.config.persons,
            ).result()

    def _query_group(self) -> None:
        from sesscache_client.v1 import sesscache_pb2 as pb

        config = self.config
        one = pb.QueryPersonsRequest(name="person 10")
        fifty = pb.QueryPersonsRequest(
            name_range=pb.NameRange(first="person 01", last="person 50"), page_size=50
        )
        hit = ("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_HIT)
        miss = ("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_MISS)
        bypass = ("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_BYPASS)
        with self._server("query") as child:
            for inflight in config.inflight:
                workers = [f"w{w}" for w in range(inflight)]
                for scenario, request in (("query_1row_hit", one), ("query_50row_hit", fifty)):
                    if not config.selected(scenario):
                        continue
                    sessions = [f"{scenario}-{inflight}-{w}" for w in workers]
                    body = request.SerializeToString()
                    self._fill(child, sessions, [body], what=f"{scenario}: warming", expect=miss)
                    work = self._timed(child, QUERY, [body], inflight, sessions, expect=hit)
                    self._measure(child, [_Variant(scenario, inflight, _constant(work))], inflight)
                for scenario, request in (
                    ("query_1row_bypass", one),
                    ("query_50row_bypass", fifty),
                ):
                    if not config.selected(scenario):
                        continue
                    bypassing = pb.QueryPersonsRequest()
                    bypassing.CopyFrom(request)
                    bypassing.bypass_cache = True
                    sessions = [f"{scenario}-{inflight}-{w}" for w in workers]
                    work = self._timed(
                        child,
                        QUERY,
                        [bypassing.SerializeToString()],
                        inflight,
                        sessions,
                        expect=bypass,
                    )
                    self._measure(child, [_Variant(scenario, inflight, _constant(work))], inflight)
                if config.selected("query_miss_store"):
                    rotate = min(config.miss_rotate, config.persons)
                    bodies = [
                        pb.QueryPersonsRequest(name=name).SerializeToString()
                        for name in _names(rotate)
                    ]

                    def missing(
                        number: int, inflight: int = inflight, bodies: list[bytes] = bodies
                    ) -> Workload:
                        return self._timed(
                            child,
                            QUERY,
                            bodies,
                            inflight,
                            [f"miss-{inflight}-r{number}"],
                            expect=miss,
                            mode="rotate",
                            rotate=len(bodies),
                        )

                    self._measure(
                        child,
                        [
                            _Variant(
                                "query_miss_store",
                                inflight,
                                missing,
                                note=f"new session every {rotate} calls per worker",
                            )
                        ],
                        inflight,
                    )
                if config.selected("end_session"):
                    self._end_session(child, inflight, miss)

    def _end_session(self, child: Child, inflight: int, miss: Expectation) -> None:
        from sesscache_client.v1 import sesscache_pb2 as pb

        config = self.config
        entries = min(config.end_entries, config.persons)
        bodies = [
            pb.QueryPersonsRequest(name=name, view=pb.PERSON_VIEW_BASIC).SerializeToString()
            for name in _names(entries)
        ]
        count = config.end_sessions if inflight == 1 else inflight
        ended = ("EndSessionResponse", "keys_dropped", entries)

        def ending(number: int) -> Workload:
            sessions = [f"end-{inflight}-r{number}-{i}" for i in range(count)]
            self._fill(
                child, sessions, bodies, what=f"end_session: filling {count} sessions", expect=miss
            )
            return Workload(
                child.target,
                END_SESSION,
                (pb.EndSessionRequest().SerializeToString(),),
                inflight=inflight,
                kind="each",
                sessions=tuple(sessions),
                expect=ended,
            )

        rounds = config.rounds if inflight == 1 else 1
        note = f"{entries} entries per session; {count} calls per round, {rounds} round(s)"
        self._measure(
            child,
            [_Variant("end_session", count, ending, note=note, rounds=rounds)],
            inflight,
        )

    def _keys_group(self) -> None:
        from sesscache_client.v1 import sesscache_pb2 as pb

        config = self.config
        entries = min(config.keys_entries, config.persons)
        optional = [
            ("--max-entries-per-session", str(entries + config.keys_page)),
            ("--max-bytes-per-session", str(2**40)),
        ]
        session = "keys-session"
        with self._server("keys", optional) as child:
            bodies = [
                pb.QueryPersonsRequest(name=name, view=pb.PERSON_VIEW_BASIC).SerializeToString()
                for name in _names(entries)
            ]
            self._fill(child, [session], bodies, what="list_keys: filling one session")
            total, last_token, pages = _walk_pages(child.target, session, config.keys_page)
            note = f"{total:,} entries, page size {config.keys_page}, {pages} pages"
            if total < entries:
                note += f" (wanted {entries:,}: the server's entry limit)"
                self.results.notes.append(f"list_keys: measured over {total:,} entries only")
            first = pb.ListCacheKeysRequest(page_size=config.keys_page).SerializeToString()
            last = pb.ListCacheKeysRequest(
                page_size=config.keys_page, page_token=last_token
            ).SerializeToString()
            listed = ("ListCacheKeysResponse", "total_size", total)
            for inflight in config.inflight:
                variants = []
                for scenario, body in (("list_keys_first", first), ("list_keys_last", last)):
                    if config.selected(scenario):
                        work = self._timed(
                            child, LIST_KEYS, [body], inflight, [session], expect=listed
                        )
                        variants.append(_Variant(scenario, 1, _constant(work), note=note))
                if variants:
                    self._measure(child, variants, inflight)

    def _live_group(self) -> None:
        from sesscache_client.v1 import sesscache_pb2 as pb

        config = self.config
        body = pb.QueryPersonsRequest(name="person 10").SerializeToString()
        hit = ("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_HIT)
        miss = ("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_MISS)
        many = max(config.live_many, config.live_few)
        optional = [("--max-sessions", str(max(10_000, many + 100)))]
        sessions = [f"live-{i}" for i in range(many)]
        few = sessions[: config.live_few]

        def measure(scenario: str, group: list[str]) -> None:
            for inflight in config.inflight:
                work = self._timed(child, QUERY, [body], inflight, group, expect=hit, mode="random")
                note = f"random session among {len(group):,}"
                self._measure(
                    child,
                    [_Variant(scenario, len(group), _constant(work), note=note)],
                    inflight,
                )

        with self._server("live", optional) as child:
            self._fill(child, few, [body], what="live sessions: opening the few", expect=miss)
            if config.selected("hit_sessions_few"):
                measure("hit_sessions_few", few)
            if not config.selected("hit_sessions_many"):
                return
            settle = 0.1 if config.quick else 0.5
            time.sleep(settle)
            before = child.rss()
            self._fill(
                child,
                sessions[len(few) :],
                [body],
                what="live sessions: opening the many",
                expect=miss,
            )
            time.sleep(settle)
            self.results.memory = Memory(len(sessions) - len(few), before, child.rss())
            measure("hit_sessions_many", sessions)


def _walk_pages(target: str, session: str, page_size: int) -> tuple[int, str, int]:
    """(total entries, the last page's token, pages) of ``session``'s cache listing."""
    import grpc

    from sesscache_client.v1 import sesscache_pb2 as pb
    from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc

    metadata = (("session-id", session),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)
        token, pages = "", 0
        while True:
            response = stub.ListCacheKeys(
                pb.ListCacheKeysRequest(page_size=page_size, page_token=token),
                metadata=metadata,
                timeout=60,
            )
            pages += 1
            if not response.next_page_token:
                return response.total_size, token, pages
            token = response.next_page_token


def _aggregate(variant: _Variant, inflight: int, work: Workload) -> Measurement:
    sides = variant.sides
    rates = [side.result.calls_per_s for side, _ in sides]
    floor_rates = [floor_side.result.calls_per_s for _, floor_side in sides]
    ratios = [r / f for r, f in zip(rates, floor_rates, strict=True) if f > 0]
    latencies = sorted(chain.from_iterable(s.result.latencies_ms for s, _ in sides))
    floor_latencies = sorted(chain.from_iterable(f.result.latencies_ms for _, f in sides))
    p50 = _percentile(latencies, 0.5)
    floor_p50 = _percentile(floor_latencies, 0.5)
    own = [side.result for side, _ in sides]
    wall = sum(side.wall for side, _ in sides)
    return Measurement(
        id=variant.id,
        label=_label(variant, inflight),
        method=work.method.rsplit("/", 1)[-1],
        inflight=inflight,
        sessions=variant.sessions,
        calls_per_s=statistics.median(rates),
        p50_ms=p50,
        p99_ms=_percentile(latencies, 0.99),
        floor_calls_per_s=statistics.median(floor_rates),
        floor_p50_ms=floor_p50,
        floor_p99_ms=_percentile(floor_latencies, 0.99),
        ratio=statistics.median(ratios) if ratios else 0.0,
        ratio_min=min(ratios, default=0.0),
        ratio_max=max(ratios, default=0.0),
        latency_ratio=p50 / floor_p50 if floor_p50 else 0.0,
        server_cpu_us=statistics.median(side.cpu_us_per_call for side, _ in sides),
        floor_server_cpu_us=statistics.median(f.cpu_us_per_call for _, f in sides),
        client_cpu=sum(side.result.client_cpu for side, _ in sides) / wall if wall else 0.0,
        calls=len(latencies),
        errors=sum(r.errors for r in own),
        wrong_status=sum(r.wrong_status for r in own),
        first_error=next((r.first_error for r in own if r.first_error), ""),
        note=variant.note,
        rounds=[
            {
                "calls_per_s": side.result.calls_per_s,
                "floor_calls_per_s": floor_side.result.calls_per_s,
                "ratio": (
                    side.result.calls_per_s / floor_side.result.calls_per_s
                    if floor_side.result.calls_per_s
                    else 0.0
                ),
                "server_cpu_us": side.cpu_us_per_call,
                "floor_server_cpu_us": floor_side.cpu_us_per_call,
            }
            for side, floor_side in sides
        ],
    )


def _label(variant: _Variant, inflight: int) -> str:
    label = SCENARIOS[variant.id]
    if variant.id.startswith("hit_sessions"):
        return f"QueryPersons 1 row HIT, {variant.sessions:,} sessions"
    if variant.id.startswith("list_keys"):
        return label + (f" ({variant.note.split(' entries')[0]})" if variant.note else "")
    if variant.id == "end_session":
        return label + (f" ({variant.note.split(' entries')[0]} entries)" if variant.note else "")
    return label


def _machine() -> dict[str, Any]:
    import grpc
    import sqlalchemy

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """``path`` (made, kept), or a temporary directory removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    directory = Path(tempfile.mkdtemp(prefix="sesscache-bench-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
