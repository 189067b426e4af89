"""The scale-out scenario: what ``python -m scale`` shows and ``tests/test_scale.py`` asserts.

Against a started :class:`scale.topology.Topology`, through nginx unless
"directly" is said, :class:`Scenario` runs these steps and returns one
:class:`Check` per claim (PASS / FAIL, or INFO for figures):

1. **shared region**: a person is loaded in a session held by one replica
   (its address bits are written to Redis), then in a new session held by
   another replica, which reads those bits from Redis instead of the database.
2. **affinity**: ``sessions`` sessions (1,000) each query twice: the second
   query of every session is a HIT.
3. **placement**: each replica is asked directly (``ListSessions``, and
   ``ListCacheKeys`` with every session's id): every session lives on exactly
   one replica, the others answer NOT_FOUND.
4. **spread**: calls without a session id reach every replica.
5. **memory**: resident memory per session, from the replicas' RSS before and
   after step 2 (INFO).
6. **throughput**: cache hits with N calls in flight, directly to replica 1,
   through nginx in front of replica 1 alone, and through nginx in front of
   every replica, in alternating rounds; latency with 1 call in flight; the
   CPU each process spent (INFO). Skipped when ``bench`` is off.
7. **failover**: one replica is stopped with SIGTERM while calls flow
   through nginx. Its health service turns NOT_SERVING while it drains (a
   ``Watch`` stream opened before sees it) and it exits 0. The calls it had
   received but not started when its drain began are CANCELLED by grpc (they
   never ran): counted for a plain client, absorbed by a client with
   :data:`RETRY_SERVICE_CONFIG`; no other call fails. The sessions it held
   start afresh (MISS, then HIT) on the replica that takes each over, every
   other session still HITs where it was; nginx logged only a handful of
   failed attempts on the stopped replica, however many calls its sessions
   made afterwards (passive checks).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import make_url

from harness.child import Child
from scale.load import MACHINE, LoadResult, LoadSpec, run_load
from scale.topology import Topology
from sesscache.fixtures import person_name
from sesscache.regions import SHARED_KEY_PREFIX
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc

T = TypeVar("T")

HIT = pb.CACHE_STATUS_HIT
MISS = pb.CACHE_STATUS_MISS
STATUS: dict[int, str] = {HIT: "HIT", MISS: "MISS", pb.CACHE_STATUS_BYPASS: "BYPASS"}
#: The person whose address bits the shared-region step follows.
SHARED_PERSON = person_name(7)
CALL_TIMEOUT = 30.0


@dataclass
class Check:
    """One claim and what was seen. ``passed`` is None for figures (INFO)."""

    name: str
    passed: bool | None
    summary: str
    details: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "INFO" if self.passed is None else "PASS" if self.passed else "FAIL"


@dataclass(frozen=True)
class Settings:
    """How big the scenario is."""

    sessions: int = 1000
    #: Sessions driven at once in the query passes.
    concurrency: int = 32
    #: Persons the sessions' queries cycle over (the server seeds 50).
    persons: int = 50
    bench: bool = True
    bench_duration: float = 2.0
    bench_warmup: float = 0.5
    bench_rounds: int = 2
    bench_inflight: int = 32
    #: The replica stopped in the failover step (1-based).
    victim: int = 2
    #: Sessions used by the calls that flow while the victim drains.
    drain_sessions: int = 64


class Scenario:
    """Runs the steps against ``topology``; see the module docstring."""

    def __init__(
        self,
        topology: Topology,
        settings: Settings | None = None,
        *,
        report: Callable[[Check], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.topology = topology
        self.settings = settings or Settings()
        self.checks: list[Check] = []
        self._report = report or (lambda _check: None)
        self._progress = progress or (lambda _text: None)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.sessions = [f"scale-{n:04d}" for n in range(self.settings.sessions)]
        #: Session -> name of the replica holding it (after the placement step).
        self.owner: dict[str, str] = {}
        self.figures: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------

    @property
    def proxy(self) -> str:
        assert self.topology.proxy is not None
        return self.topology.proxy.target

    def stub(self, target: str) -> pb_grpc.SessionCacheAsyncStub:
        return pb_grpc.SessionCacheStub(self._channel(target))

    def _channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        self._report(check)
        return check

    def person(self, index: int) -> str:
        return person_name(index % self.settings.persons + 1)

    async def query(
        self,
        target: str,
        session: str | None,
        name: str,
        *,
        view: pb.PersonView.ValueType = pb.PERSON_VIEW_FULL,
    ) -> pb.QueryPersonsResponse:
        metadata = (("session-id", session),) if session else None
        return await self.stub(target).QueryPersons(
            pb.QueryPersonsRequest(name=name, view=view), metadata=metadata, timeout=CALL_TIMEOUT
        )

    async def entries_on(self, replica: Child, session: str) -> int | None:
        """How many entries ``session`` has on ``replica`` (asked directly); None: NOT_FOUND."""
        try:
            response = await self.stub(replica.target).ListCacheKeys(
                pb.ListCacheKeysRequest(page_size=1),
                metadata=(("session-id", session),),
                timeout=CALL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.total_size

    async def sessions_on(self, replica: Child) -> set[str]:
        """Every session ``replica`` holds (ListSessions, asked directly)."""
        found: set[str] = set()
        token = ""
        while True:
            response = await self.stub(replica.target).ListSessions(
                pb.ListSessionsRequest(page_size=1000, page_token=token), timeout=CALL_TIMEOUT
            )
            found.update(info.id for info in response.sessions)
            token = response.next_page_token
            if not token:
                return found

    async def holders(self, session: str, replicas: Sequence[Child]) -> list[str]:
        counts = await asyncio.gather(*(self.entries_on(r, session) for r in replicas))
        return [r.name for r, count in zip(replicas, counts, strict=True) if count is not None]

    async def bounded(self, work: Iterable[Awaitable[T]], limit: int) -> list[T]:
        """Await ``work`` with at most ``limit`` in flight; results in order."""
        semaphore = asyncio.Semaphore(limit)

        async def one(item: Awaitable[T]) -> T:
            async with semaphore:
                return await item

        return await asyncio.gather(*(one(item) for item in work))

    def live(self) -> list[Child]:
        return [replica for replica in self.topology.replicas if replica.running]

    async def server_stats(self, replica: Child) -> pb.CacheStats:
        response = await self.stub(replica.target).GetStats(
            pb.GetStatsRequest(), timeout=CALL_TIMEOUT
        )
        return response.server

    # -- the steps -------------------------------------------------------------------

    async def run(self) -> list[Check]:
        try:
            self._progress("shared region")
            await self.shared_region()
            self._progress(f"{len(self.sessions)} sessions, two queries each")
            rss_before = {r.name: r.rss() for r in self.topology.replicas}
            await self.affinity()
            rss_after = {r.name: r.rss() for r in self.topology.replicas}
            self._progress("asking each replica directly")
            await self.placement()
            await self.spread()
            await self.memory(rss_before, rss_after)
            self._progress("a psql write")
            await self.external_write()
            if self.settings.bench:
                self._progress("throughput")
                await self.throughput()
            self._progress("failover")
            await self.failover()
        finally:
            await self.close()
        return self.checks

    async def shared_region(self) -> None:
        """Address bits written through one replica are read by another."""
        replicas = self.topology.replicas
        # Start from an empty shared region (an admin call, answered by any replica).
        await self.stub(replicas[0].target).Invalidate(
            pb.InvalidateRequest(shared_region=True), timeout=CALL_TIMEOUT
        )
        # Two sessions that nginx places on different replicas. A basic-view query
        # creates a session without touching the address bits.
        first = "shared-a"
        await self.query(self.proxy, first, person_name(1), view=pb.PERSON_VIEW_BASIC)
        holder_a = _only(await self.holders(first, replicas))
        second, holder_b = "", holder_a
        for n in range(64):
            second = f"shared-b-{n}"
            await self.query(self.proxy, second, person_name(1), view=pb.PERSON_VIEW_BASIC)
            holder_b = _only(await self.holders(second, replicas))
            if holder_b != holder_a:
                break
        client = redis.Redis.from_url(self.topology.redis_url, socket_timeout=5)
        try:

            def shared_keys() -> int:
                return sum(1 for _ in client.scan_iter(match=SHARED_KEY_PREFIX + "*", count=500))

            keys_before = shared_keys()
            a = await self.query(self.proxy, first, SHARED_PERSON)
            keys_after_a = shared_keys()
            b = await self.query(self.proxy, second, SHARED_PERSON)
            keys_after_b = shared_keys()
        finally:
            client.close()
        written = keys_after_a - keys_before
        passed = (
            "?" not in (holder_a, holder_b)
            and holder_a != holder_b
            and a.cache_status == MISS
            and b.cache_status == MISS
            and a.sql_statements > 1
            and b.sql_statements == 1
            and written > 0
            and keys_after_b == keys_after_a
        )
        self.add(
            Check(
                "shared region: written through one replica, read by another",
                passed,
                f"{SHARED_PERSON!r}: {a.sql_statements} SQL statements in a session on "
                f"{holder_a} ({written} address bits stored in Redis), then "
                f"{b.sql_statements} in a new session on {holder_b} (the address bits "
                "came from Redis)",
                [
                    f"{first} on {holder_a}: {STATUS.get(a.cache_status)}, "
                    f"{a.sql_statements} SQL; Redis shared keys {keys_before} -> {keys_after_a}",
                    f"{second} on {holder_b}: {STATUS.get(b.cache_status)}, "
                    f"{b.sql_statements} SQL; Redis shared keys {keys_after_a} -> {keys_after_b}",
                ],
                {
                    "writer": holder_a,
                    "reader": holder_b,
                    "writer_sql": a.sql_statements,
                    "reader_sql": b.sql_statements,
                    "redis_keys_written": written,
                },
            )
        )

    async def _pass(self, sessions: Sequence[str], times: int) -> tuple[list[list[int]], int, str]:
        """``times`` queries in each session through nginx: statuses, errors, first error."""
        errors: list[str] = []

        async def one(index: int, session: str) -> list[int]:
            statuses: list[int] = []
            for _ in range(times):
                try:
                    response = await self.query(self.proxy, session, self.person(index))
                    statuses.append(response.cache_status)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    statuses.append(-1)
            return statuses

        numbered = [(int(s.rsplit("-", 1)[1]), s) for s in sessions]
        results = await self.bounded((one(i, s) for i, s in numbered), self.settings.concurrency)
        return results, len(errors), errors[0] if errors else ""

    async def affinity(self) -> None:
        """Every session's second query is a HIT."""
        started = time.perf_counter()
        results, errors, first_error = await self._pass(self.sessions, 2)
        elapsed = time.perf_counter() - started
        first = Counter(STATUS.get(r[0], "ERROR") for r in results)
        second = Counter(STATUS.get(r[1], "ERROR") for r in results)
        n = len(self.sessions)
        passed = first["MISS"] == n and second["HIT"] == n and errors == 0
        self.add(
            Check(
                f"{n:,} sessions through nginx: HIT on the second query",
                passed,
                f"first query: {first['MISS']:,} MISS; second: {second['HIT']:,} HIT of {n:,}; "
                f"{errors} errors ({2 * n:,} calls in {elapsed:.1f}s, "
                f"{self.settings.concurrency} sessions at a time)",
                [f"first error: {first_error}"] if first_error else [],
                {
                    "sessions": n,
                    "first": dict(first),
                    "second": dict(second),
                    "errors": errors,
                    "seconds": round(elapsed, 2),
                },
            )
        )

    async def external_write(self) -> None:
        """A street changed with ``psql`` (another program, not the service) reaches a
        session on every replica: each one's cached query of that person misses,
        saying which change removed it, and shows the new street."""
        replicas = self.live()
        name = person_name(3)
        on: dict[str, str] = {}
        for n in range(200):
            if len(on) == len(replicas):
                break
            session = f"psql-{n}"
            await self.query(self.proxy, session, name)
            (holder,) = await self.holders(session, replicas) or ["?"]
            if holder in on or holder == "?":
                await self.stub(self.proxy).EndSession(
                    pb.EndSessionRequest(), metadata=(("session-id", session),)
                )
                continue
            on[holder] = session
        for session in on.values():  # cached: a HIT now
            assert (await self.query(self.proxy, session, name)).cache_status == HIT
        street = f"changed by psql {time.time():.0f}"
        url = make_url(self.topology.database_url).set(drivername="postgresql")
        sql = (
            f"UPDATE address SET street = '{street}' "  # noqa: S608 (our own constants)
            f"WHERE person_id = (SELECT id FROM person WHERE name = '{name}')"
        )
        committed = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            [
                "psql",
                url.render_as_string(hide_password=False),
                "-qX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        seen: dict[str, float] = {}
        reasons: dict[str, str] = {}
        deadline = committed + 10
        while len(seen) < len(on) and time.monotonic() < deadline:
            for replica, session in on.items():
                if replica in seen:
                    continue
                explained = await self.stub(self.proxy).ExplainCacheKey(
                    pb.ExplainCacheKeyRequest(query=pb.QueryPersonsRequest(name=name)),
                    metadata=(("session-id", session),),
                    timeout=CALL_TIMEOUT,
                )
                if not explained.cached:
                    seen[replica] = time.monotonic() - committed
                    reasons[replica] = pb.MissReason.Name(explained.miss.reason)
            await asyncio.sleep(0.01)
        fresh = {}
        for replica, session in on.items():
            response = await self.query(self.proxy, session, name)
            fresh[replica] = (
                response.cache_status == MISS
                and response.miss.reason == pb.MISS_REASON_CHANGED
                and all(a.street == street for p in response.persons for a in p.addresses)
            )
        # The scenario's own sessions that cached this person missed too (as they
        # should): query them once more, so the checks after this one find HITs.
        await self.bounded(
            (
                self.query(self.proxy, session, name)
                for index, session in enumerate(self.sessions)
                if self.person(index) == name
            ),
            32,
        )
        passed = len(on) == len(replicas) and len(seen) == len(on) and all(fresh.values())
        self.add(
            Check(
                "psql write reaches every replica",
                passed,
                f"UPDATE by psql invalidated the cached query on {len(seen)}/{len(replicas)} "
                "replicas' sessions ("
                + ", ".join(f"{r} {seen[r] * 1000:.0f} ms" for r in sorted(seen))
                + "); each then misses with MISS_REASON_CHANGED and shows the new street",
                details=[f"{r}: {reasons.get(r, 'still cached')}" for r in sorted(on)],
                figures={f"{r}_ms": round(seen[r] * 1000, 1) for r in seen},
            )
        )

    async def placement(self) -> None:
        """Ask each replica directly: every session lives on exactly one."""
        replicas = self.topology.replicas
        listed = dict(
            zip(
                (r.name for r in replicas),
                await asyncio.gather(*(self.sessions_on(r) for r in replicas)),
                strict=True,
            )
        )
        found = await self.bounded(
            (self.entries_on(r, s) for s in self.sessions for r in replicas), 64
        )
        per_session = [found[i : i + len(replicas)] for i in range(0, len(found), len(replicas))]
        wrong: list[str] = []
        not_found = 0
        for session, counts in zip(self.sessions, per_session, strict=True):
            holders = [r.name for r, c in zip(replicas, counts, strict=True) if c is not None]
            not_found += len(replicas) - len(holders)
            in_lists = [name for name, ids in listed.items() if session in ids]
            if len(holders) != 1 or in_lists != holders or not any(c for c in counts if c):
                wrong.append(f"{session}: entries on {holders}, listed by {in_lists}")
            if holders:
                self.owner[session] = holders[0]
        per_replica = Counter(self.owner.values())
        n = len(self.sessions)
        counts_text = ", ".join(f"{r.name} {per_replica[r.name]}" for r in replicas)
        self.add(
            Check(
                "every session's entries live on exactly one replica (asked directly)",
                not wrong,
                f"{counts_text}; {len(found):,} direct ListCacheKeys: {n - len(wrong):,} "
                f"sessions on exactly one replica, {not_found:,} NOT_FOUND elsewhere; "
                "ListSessions agrees",
                wrong[:5],
                {"per_replica": dict(per_replica), "wrong": len(wrong), "not_found": not_found},
            )
        )

    async def spread(self, calls: int = 60) -> None:
        """Calls without a session id reach every replica."""
        replicas = self.topology.replicas
        before = await asyncio.gather(*(self.server_stats(r) for r in replicas))
        await self.bounded((self.query(self.proxy, None, self.person(i)) for i in range(calls)), 8)
        after = await asyncio.gather(*(self.server_stats(r) for r in replicas))
        served = {
            r.name: (a.hits + a.misses) - (b.hits + b.misses)
            for r, b, a in zip(replicas, before, after, strict=True)
        }
        passed = all(count > 0 for count in served.values()) and sum(served.values()) == calls
        self.add(
            Check(
                "calls without a session id are spread",
                passed,
                f"{calls} calls: " + ", ".join(f"{name} {count}" for name, count in served.items()),
                figures={"served": served},
            )
        )

    async def memory(self, before: dict[str, int], after: dict[str, int]) -> None:
        """Resident memory per session from the RSS growth during the affinity step."""
        per_replica = Counter(self.owner.values())
        lines = []
        rates = []
        for name, held in per_replica.items():
            grown = after[name] - before[name]
            if held:
                rates.append(grown / held)
            lines.append(
                f"{name}: RSS {before[name] / 2**20:.1f} -> {after[name] / 2**20:.1f} MiB "
                f"for {held} sessions"
            )
        stats = await asyncio.gather(*(self.server_stats(r) for r in self.topology.replicas))
        sessions = sum(s.sessions for s in stats)
        cache_bytes = sum(s.size_bytes for s in stats)
        per_session = statistics.mean(rates) if rates else 0.0
        self.figures["rss_bytes_per_session"] = per_session
        self.add(
            Check(
                "memory per session",
                None,
                f"about {per_session / 1024:.0f} KiB of RSS per session (one 1-row entry "
                f"each); the caches themselves report {cache_bytes / max(sessions, 1) / 1024:.1f}"
                " KiB per session",
                lines,
                {
                    "rss_bytes_per_session": round(per_session),
                    "cache_bytes_per_session": round(cache_bytes / max(sessions, 1)),
                },
            )
        )

    async def _warm(self, target: str, sessions: Sequence[str], request: bytes) -> None:
        query = pb.QueryPersonsRequest.FromString(request)
        await self.bounded(
            (
                self.stub(target).QueryPersons(
                    query, metadata=(("session-id", s),), timeout=CALL_TIMEOUT
                )
                for s in sessions
            ),
            16,
        )

    async def throughput(self) -> None:
        """Hits through nginx with 1 and N replicas, and directly to one replica."""
        s = self.settings
        topology = self.topology
        assert topology.proxy is not None
        assert topology.single is not None
        one = topology.replicas[0]
        request = pb.QueryPersonsRequest(name=person_name(10)).SerializeToString()
        on_one = tuple(f"bench-one-{n}" for n in range(s.bench_inflight))
        on_all = tuple(f"bench-all-{n}" for n in range(s.bench_inflight))
        await self._warm(one.target, on_one, request)
        await self._warm(topology.proxy.target, on_all, request)
        watch: dict[str, list[int]] = {r.name: [r.pid] for r in topology.replicas}
        replicas = [r.name for r in topology.replicas]
        watch["nginx"] = topology.proxy.worker_pids() + topology.single.worker_pids()
        configs = {
            "direct to replica-1": (one.target, on_one),
            "nginx -> replica-1 only": (topology.single.target, on_one),
            f"nginx -> {len(topology.replicas)} replicas": (topology.proxy.target, on_all),
        }
        loop = asyncio.get_running_loop()

        def load(target: str, sessions: tuple[str, ...], inflight: int) -> LoadResult:
            spec = LoadSpec(target, sessions, request, inflight, s.bench_duration, s.bench_warmup)
            return run_load(spec, watch=watch)

        latency: dict[str, LoadResult] = {}
        for label in list(configs)[:2]:
            target, sessions = configs[label]
            latency[label] = await loop.run_in_executor(None, load, target, sessions[:1], 1)
        rounds: dict[str, list[LoadResult]] = {label: [] for label in configs}
        for _ in range(s.bench_rounds):
            for label, (target, sessions) in configs.items():
                result = await loop.run_in_executor(None, load, target, sessions, s.bench_inflight)
                rounds[label].append(result)

        def best(label: str) -> LoadResult:
            return max(rounds[label], key=lambda r: r.calls_per_s)

        labels = list(configs)
        direct, single, spread = (best(label) for label in labels)
        lines = [
            f"{s.bench_inflight} calls in flight, best of {s.bench_rounds} rounds of "
            f"{s.bench_duration:g}s:"
        ]
        for label in labels:
            r = best(label)
            lines.append(
                f"  {label:<24} {r.calls_per_s:>6,.0f} hits/s  p50 {r.p50_ms:5.1f} ms  "
                f"p99 {r.p99_ms:5.1f} ms  errors {r.errors}"
            )
            lines.append(f"  {'':<24} CPU: {_cpu_text(r, watch)}")
            lines.append(
                f"  {'':<24} CPU per hit: replicas {_per_call_us(r, replicas):.0f} us, "
                f"nginx {_per_call_us(r, ['nginx']):.0f} us"
            )
        lines.append("1 call in flight:")
        for label, r in latency.items():
            lines.append(f"  {label:<24} p50 {r.p50_ms:6.3f} ms  p99 {r.p99_ms:6.3f} ms")
        overhead = direct.calls_per_s / single.calls_per_s if single.calls_per_s else 0.0
        latency_ratio = (
            latency[labels[1]].p50_ms / latency[labels[0]].p50_ms
            if latency[labels[0]].p50_ms
            else 0.0
        )
        scaling = spread.calls_per_s / single.calls_per_s if single.calls_per_s else 0.0
        # Server-side CPU per hit (replicas and nginx): the proxy's cost that the
        # load of other processes on the machine does not blur.
        direct_cpu = _per_call_us(direct, replicas)
        proxied_cpu = _per_call_us(single, [*replicas, "nginx"])
        cpu_ratio = proxied_cpu / direct_cpu if direct_cpu else 0.0
        errors = sum(r.errors for results in rounds.values() for r in results)
        not_hit = sum(r.not_hit for results in rounds.values() for r in results)
        self.figures["throughput"] = {
            label: [r.as_dict() for r in results] for label, results in rounds.items()
        }
        self.add(
            Check(
                "throughput of cache hits",
                None,
                f"{single.calls_per_s:,.0f} hits/s through nginx with 1 replica, "
                f"{spread.calls_per_s:,.0f} with {len(topology.replicas)} "
                f"({scaling:.2f}x); directly to one replica {direct.calls_per_s:,.0f} hits/s: "
                f"the proxy costs {overhead:.2f}x in throughput, "
                f"{latency_ratio:.2f}x in latency at 1 call in flight, {cpu_ratio:.2f}x in "
                f"server-side CPU per hit ({direct_cpu:.0f} -> {proxied_cpu:.0f} us)",
                [*lines, f"errors {errors}, sampled responses not HIT {not_hit}"],
                {
                    "inflight": s.bench_inflight,
                    "hits_per_s": {label: round(best(label).calls_per_s) for label in labels},
                    "p50_ms_1_in_flight": {label: r.p50_ms for label, r in latency.items()},
                    "proxy_overhead_throughput": round(overhead, 3),
                    "proxy_overhead_latency": round(latency_ratio, 3),
                    "proxy_overhead_cpu_per_hit": round(cpu_ratio, 3),
                    "server_cpu_us_per_hit": {
                        label: round(_per_call_us(best(label), [*replicas, "nginx"]), 1)
                        for label in labels
                    },
                    "scaling_n_over_1": round(scaling, 3),
                    "errors": errors,
                    "not_hit": not_hit,
                },
            )
        )

    async def failover(self) -> None:
        """Stop one replica: drain, reroute, only its sessions lost."""
        victim = self.topology.replicas[self.settings.victim - 1]
        await self._stop_under_load(victim)
        errors = await self._after_stop(victim)
        self._passive_checks(victim, errors)

    async def _stop_under_load(self, victim: Child) -> None:
        """SIGTERM ``victim`` while calls flow through nginx; watch its health."""
        s = self.settings
        topology = self.topology
        # Calls keep flowing through nginx while the victim drains and exits: half
        # from a plain channel, half from one with RETRY_SERVICE_CONFIG.
        half = max(1, s.drain_sessions // 2)
        flows = {
            "plain": Flow([f"drain-plain-{n}" for n in range(half)], self._channel(self.proxy)),
            "retry": Flow(
                [f"drain-retry-{n}" for n in range(half)],
                grpc.aio.insecure_channel(
                    self.proxy, options=[("grpc.service_config", RETRY_SERVICE_CONFIG)]
                ),
            ),
        }
        for flow in flows.values():
            await self._pass(flow.sessions, 1)

        health = health_pb2_grpc.HealthStub(self._channel(victim.target))
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        stop_flows = asyncio.Event()
        tasks = [
            asyncio.create_task(flow.run(n, self.person(n), stop_flows))
            for flow in flows.values()
            for n in range(len(flow.sessions))
        ]
        await asyncio.sleep(0.5)
        signalled = time.perf_counter()
        victim.terminate()
        not_serving_after: float | None = None
        draining = False
        try:
            while True:
                update = await asyncio.wait_for(watch.read(), 10)
                if not isinstance(update, health_pb2.HealthCheckResponse):
                    break
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    not_serving_after = time.perf_counter() - signalled
                    draining = victim.running
                    break
        except (TimeoutError, grpc.aio.AioRpcError):
            pass
        watch.cancel()
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, victim.wait, topology.grace + 20)
        exited_after = time.perf_counter() - signalled
        await asyncio.sleep(0.5)
        stop_flows.set()
        await asyncio.gather(*tasks)
        await flows["retry"].channel.close(None)
        self.add(
            Check(
                f"{victim.name} drains on SIGTERM: its health service reports NOT_SERVING",
                first.status == health_pb2.HealthCheckResponse.SERVING
                and not_serving_after is not None
                and draining
                and code == 0,
                f"Health.Watch on {victim.name}: SERVING, then NOT_SERVING "
                + (f"{1000 * not_serving_after:.0f} ms" if not_serving_after is not None else "?")
                + f" after SIGTERM, {'while it still ran' if draining else 'after it exited'};"
                f" exited with status {code} after {exited_after:.1f}s",
                figures={
                    "not_serving_after_s": not_serving_after,
                    "exit_code": code,
                    "exited_after_s": round(exited_after, 2),
                },
            )
        )
        plain, retry = flows["plain"], flows["retry"]
        cancelled = plain.errors.get("CANCELLED", 0)
        unavailable = plain.errors.get("UNAVAILABLE", 0)
        # Without a retry policy a client may see the cut: CANCELLED (received
        # but not started when the drain began) or UNAVAILABLE (refused while
        # draining). Anything else would be a bug.
        other_errors = sum(plain.errors.values()) - cancelled - unavailable
        self.add(
            Check(
                "calls through nginx while a replica stops: a retry policy hides the cut",
                retry.calls > 0
                and not retry.errors
                and other_errors == 0
                and cancelled + unavailable <= len(plain.sessions),
                f"with a retry policy (CANCELLED, UNAVAILABLE): {retry.calls:,} calls, "
                f"{sum(retry.errors.values())} errors; without: {plain.calls:,} calls, "
                f"{cancelled} CANCELLED (calls {victim.name} had received but not started "
                f"when its drain began: grpc cancels those, they never ran), {unavailable} "
                f"UNAVAILABLE (refused while it drained), {other_errors} other errors; "
                f"{len(plain.sessions)} + {len(retry.sessions)} sessions",
                [
                    f"{kind} errors: {dict(flow.errors)}"
                    for kind, flow in flows.items()
                    if flow.errors
                ],
                {
                    kind: {"calls": flow.calls, "errors": dict(flow.errors)}
                    for kind, flow in flows.items()
                },
            )
        )

    async def _after_stop(self, victim: Child) -> int:
        """Every session again: who lost what, and where sessions are now. Errors seen."""
        survivors = [r for r in self.topology.replicas if r is not victim]
        mine = [session for session in self.sessions if self.owner.get(session) == victim.name]
        others = [session for session in self.sessions if self.owner.get(session) != victim.name]

        # Every session once more, then once again.
        started = time.perf_counter()
        results, errors, first_error = await self._pass(self.sessions, 2)
        elapsed = time.perf_counter() - started
        status = dict(zip(self.sessions, results, strict=True))
        others_hit = sum(1 for session in others if status[session][0] == HIT)
        mine_miss = sum(1 for session in mine if status[session][0] == MISS)
        mine_then_hit = sum(1 for session in mine if status[session][1] == HIT)
        self.add(
            Check(
                f"stopping {victim.name} loses only the sessions it held",
                others_hit == len(others) and mine_miss == len(mine) and errors == 0,
                f"{others_hit}/{len(others)} sessions of the other replicas still HIT; "
                f"{mine_miss}/{len(mine)} of {victim.name}'s start afresh (MISS), "
                f"{mine_then_hit}/{len(mine)} HIT on their next query; {errors} errors "
                f"({2 * len(self.sessions):,} calls in {elapsed:.1f}s)",
                [f"first error: {first_error}"] if first_error else [],
                {
                    "others": len(others),
                    "others_hit": others_hit,
                    "moved": len(mine),
                    "moved_miss": mine_miss,
                    "moved_then_hit": mine_then_hit,
                    "errors": errors,
                },
            )
        )

        # Ask the survivors directly where each session is now.
        found = await self.bounded(
            (self.entries_on(r, session) for session in self.sessions for r in survivors), 64
        )
        width = len(survivors)
        now: dict[str, list[str]] = {}
        for index, session in enumerate(self.sessions):
            counts = found[index * width : (index + 1) * width]
            now[session] = [r.name for r, c in zip(survivors, counts, strict=True) if c]
        stayed = sum(1 for session in others if now[session] == [self.owner[session]])
        taken = Counter(now[session][0] for session in mine if len(now[session]) == 1)
        moved_once = sum(taken.values())
        self.add(
            Check(
                f"{victim.name}'s sessions start afresh on the replica that takes each over",
                stayed == len(others) and moved_once == len(mine),
                f"{moved_once}/{len(mine)} of its sessions now on exactly one survivor ("
                + ", ".join(f"{name} {count}" for name, count in sorted(taken.items()))
                + f"); {stayed}/{len(others)} other sessions still where they were",
                figures={"taken_over_by": dict(taken), "stayed": stayed},
            )
        )

        return errors

    def _passive_checks(self, victim: Child, errors: int) -> None:
        """How often nginx still tried the stopped replica."""
        s = self.settings
        assert self.topology.proxy is not None
        mine = [session for session in self.sessions if self.owner.get(session) == victim.name]
        proxy = self.topology.proxy
        failures = proxy.upstream_failures(victim.target)
        disabled = proxy.upstream_disabled(victim.target)
        bound = s.concurrency + s.drain_sessions
        reasons = Counter(_failure_reason(line) for line in failures)
        self.add(
            Check(
                "nginx stops routing to the stopped replica by itself",
                len(failures) <= bound and errors == 0,
                f"{len(failures)} attempt{'s' if len(failures) != 1 else ''} on "
                f"{victim.name} after it stopped, retried on the next replica by nginx "
                f"(nginx marked it failed {len(disabled)} time"
                f"{'s' if len(disabled) != 1 else ''}: max_fails=1 fail_timeout=10s), "
                f"while its sessions made {2 * len(mine):,} more calls; {errors} reached "
                "the client as errors",
                [f"nginx error log: {count} x {reason}" for reason, count in reasons.items()],
                {"failed_attempts": len(failures), "marked_failed": len(disabled)},
            )
        )


#: A client retry policy for sesscache's calls, for calls cut by a replica's
#: shutdown (CANCELLED: received, never started) or refused (UNAVAILABLE).
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "sesscache.v1.SessionCache"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["CANCELLED", "UNAVAILABLE"],
                },
            }
        ]
    }
)


def _per_call_us(result: LoadResult, names: Iterable[str]) -> float:
    """CPU microseconds the processes ``names`` spent per call of ``result``."""
    spent = sum(result.cpu.get(name, 0.0) for name in names)
    return 1e6 * spent / result.calls if result.calls else 0.0


def _only(names: list[str]) -> str:
    """The one replica holding a session, or ``?`` when it is not exactly one."""
    return names[0] if len(names) == 1 else "?"


def _cpu_text(result: LoadResult, watch: Iterable[str]) -> str:
    """Where the CPU went in a load run: each busy process, the client, everything else."""
    window = result.elapsed
    parts = [f"{name} {result.cpu_percent(name):.0f}%" for name in watch if result.cpu.get(name)]
    client = 100 * result.client_cpu / window if window else 0.0
    machine = result.cpu_percent(MACHINE)
    others = machine - client - sum(result.cpu_percent(name) for name in watch)
    parts.append(f"client {client:.0f}%")
    parts.append(f"other processes {max(others, 0):.0f}%")
    return ", ".join(parts) + f" (machine {machine:.0f}% of {100 * (os.cpu_count() or 1)}%)"


def _failure_reason(line: str) -> str:
    """``connect() failed (111: Connection refused) while connecting to upstream`` of a line."""
    message = line.split("] ", 1)[-1].split(": ", 1)[-1]
    message = re.sub(r"^\*\d+ ", "", message)
    return message.split(", client:", 1)[0]


@dataclass
class Flow:
    """Calls in ``sessions`` on ``channel``, back to back, until told to stop."""

    sessions: list[str]
    channel: grpc.aio.Channel
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, index: int, person: str, stop: asyncio.Event) -> None:
        stub = pb_grpc.SessionCacheStub(self.channel)
        metadata = (("session-id", self.sessions[index]),)
        request = pb.QueryPersonsRequest(name=person)
        while not stop.is_set():
            try:
                await stub.QueryPersons(request, metadata=metadata, timeout=CALL_TIMEOUT)
                self.calls += 1
            except grpc.aio.AioRpcError as error:
                self.errors[error.code().name] += 1
                await asyncio.sleep(0.01)


def run_scenario(
    topology: Topology,
    settings: Settings | None = None,
    *,
    report: Callable[[Check], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Scenario:
    """Run the scenario on a fresh event loop; the finished :class:`Scenario`."""
    scenario = Scenario(topology, settings, report=report, progress=progress)
    asyncio.run(scenario.run())
    return scenario
