"""The load generator: a child process driving grpc.aio calls with N in flight.

The parent (:mod:`bench.scenarios`) starts one :class:`LoadGenerator`; it
runs in its own process (``multiprocessing`` spawn), keeps one grpc.aio
channel per server for the whole run, and runs one :class:`Workload` per
request, answering with a :class:`RoundResult`. Requests and responses are
raw bytes (serialized once, up front, never decoded except for a sample that
checks the cache status), so the client spends as little CPU per call as
grpc.aio allows.

Two kinds of workload:

``timed``
    ``inflight`` workers call back to back for ``warmup`` then ``duration``
    seconds; calls completing within the measured window count, with their
    latencies. Throughput is those calls over the window.
``each``
    A fixed amount of work: the workers take sessions from a queue and make
    ``per_session`` calls in each (fills, and EndSession). Throughput is the
    calls over the wall time of the whole batch.

How a worker picks its session (the ``session-id`` metadata) in timed mode:
``fixed`` (worker ``w`` always uses ``sessions[w % len]``; no metadata when
``sessions`` is empty), ``random`` (a random session among the worker's own
share ``sessions[w::inflight]``, or among all when there are fewer sessions
than workers) and ``rotate`` (``f"{sessions[0]}-w{w}-{n}"``, moving to the
next ``n`` every ``rotate`` calls, request ``k % rotate``: every call a new
cache key, no session grows beyond ``rotate`` entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Literal, Self

import grpc

SessionMode = Literal["fixed", "random", "rotate"]
Metadata = tuple[tuple[str, str], ...]
Expectation = tuple[str, str, int]

#: Seconds a single call may take before it counts as an error.
CALL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Workload:
    """What to run against one server; see the module docstring."""

    target: str
    method: str
    requests: tuple[bytes, ...]
    inflight: int = 1
    kind: Literal["timed", "each"] = "timed"
    sessions: tuple[str, ...] = ()
    session_mode: SessionMode = "fixed"
    rotate: int = 0
    duration: float = 2.0
    warmup: float = 0.25
    per_session: int = 1
    #: ``(message, field, value)``: decode every ``check_every``-th response of
    #: each worker (and its first) as ``sesscache_pb2.<message>`` and count
    #: those whose ``field`` is not ``value``, e.g. ``("QueryPersonsResponse",
    #: "cache_status", CACHE_STATUS_HIT)``.
    expect: Expectation | None = None
    check_every: int = 64


@dataclass(slots=True)
class RoundResult:
    """What one workload did."""

    calls: int
    elapsed: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    wrong_status: int = 0
    client_cpu: float = 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0


class _Counters:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.wrong_status = 0

    def error(self, error: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            if isinstance(error, grpc.aio.AioRpcError):
                self.first_error = f"{error.code().name}: {error.details()}"
            else:
                self.first_error = repr(error)


def _checker(expect: Expectation | None) -> Callable[[bytes], bool]:
    if expect is None:
        return lambda _response: True
    from sesscache_client.v1 import sesscache_pb2 as pb

    message, name, value = expect
    parse = getattr(pb, message).FromString

    def check(response: bytes) -> bool:
        return bool(getattr(parse(response), name) == value)

    return check


class _Runner:
    """Runs workloads on one event loop, with one channel per target."""

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, target: str) -> grpc.aio.Channel:
        channel = self.channels.get(target)
        if channel is None:
            channel = self.channels[target] = grpc.aio.insecure_channel(target)
        return channel

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(None)
        self.channels.clear()

    async def run(self, work: Workload) -> RoundResult:
        # Raw bytes both ways: no serializers.
        call: Any = self.channel(work.target).unary_unary(
            work.method, request_serializer=None, response_deserializer=None
        )
        cpu = time.process_time()
        if work.kind == "timed":
            result = await self._timed(work, call)
        else:
            result = await self._each(work, call)
        result.client_cpu = time.process_time() - cpu
        return result

    async def _timed(self, work: Workload, call: Any) -> RoundResult:
        counters = _Counters()
        check = _checker(work.expect)
        requests = work.requests
        calls = 0
        start = time.perf_counter_ns()
        measure_from = start + int(work.warmup * 1e9)
        until = measure_from + int(work.duration * 1e9)

        def metadata_picker(worker: int) -> Callable[[int], Metadata | None]:
            sessions = work.sessions
            if not sessions:
                return lambda _k: None
            if work.session_mode == "fixed":
                fixed: Metadata = (("session-id", sessions[worker % len(sessions)]),)
                return lambda _k: fixed
            if work.session_mode == "random":
                share = sessions[worker :: work.inflight] if len(sessions) >= work.inflight else ()
                pool = [(("session-id", s),) for s in (share or sessions)]
                rng = random.Random(worker)
                return lambda _k: rng.choice(pool)
            prefix, rotate = sessions[0], work.rotate
            return lambda k: (("session-id", f"{prefix}-w{worker}-{k // rotate}"),)

        async def worker(index: int) -> None:
            nonlocal calls
            metadata_for = metadata_picker(index)
            rotate = work.rotate if work.session_mode == "rotate" else 0
            k = 0
            while True:
                began = time.perf_counter_ns()
                if began >= until:
                    return
                request = requests[k % rotate if rotate else k % len(requests)]
                try:
                    response = await call(request, metadata=metadata_for(k), timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as error:
                    counters.error(error)
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        await asyncio.sleep(0.01)
                    k += 1
                    continue
                ended = time.perf_counter_ns()
                if measure_from <= ended <= until:
                    calls += 1
                    counters.latencies.append((ended - began) / 1e6)
                if k % work.check_every == 0 and not check(response):
                    counters.wrong_status += 1
                k += 1

        await asyncio.gather(*(worker(i) for i in range(work.inflight)))
        return RoundResult(
            calls=calls,
            elapsed=work.duration,
            latencies_ms=counters.latencies,
            errors=counters.errors,
            first_error=counters.first_error,
            wrong_status=counters.wrong_status,
        )

    async def _each(self, work: Workload, call: Any) -> RoundResult:
        counters = _Counters()
        check = _checker(work.expect)
        queue = list(reversed(work.sessions)) if work.sessions else [""]
        requests = work.requests

        async def worker() -> None:
            while queue:
                session = queue.pop()
                metadata: Metadata | None = (("session-id", session),) if session else None
                for k in range(work.per_session):
                    began = time.perf_counter_ns()
                    try:
                        response = await call(
                            requests[k % len(requests)], metadata=metadata, timeout=CALL_TIMEOUT
                        )
                    except grpc.aio.AioRpcError as error:
                        counters.error(error)
                        continue
                    counters.latencies.append((time.perf_counter_ns() - began) / 1e6)
                    if k % work.check_every == 0 and not check(response):
                        counters.wrong_status += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(work.inflight)))
        elapsed = time.perf_counter() - started
        return RoundResult(
            calls=len(counters.latencies),
            elapsed=elapsed,
            latencies_ms=counters.latencies,
            errors=counters.errors,
            first_error=counters.first_error,
            wrong_status=counters.wrong_status,
        )


def _serve(connection: Connection) -> None:
    """The child's loop: run each workload received, send back its result."""
    loop = asyncio.new_event_loop()
    runner = _Runner()
    try:
        while True:
            try:
                work = connection.recv()
            except EOFError:
                return
            if work is None:
                return
            try:
                connection.send(loop.run_until_complete(runner.run(work)))
            except Exception:
                connection.send(RuntimeError(traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(runner.close())
        loop.close()


class LoadGenerator:
    """The load-generator process, started on enter and stopped on exit."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="bench-loadgen")
        self._child = child

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> Self:
        self._process.start()
        self._child.close()
        return self

    def run(self, work: Workload) -> RoundResult:
        """Run ``work`` in the child and wait for its result."""
        self._connection.send(work)
        result = self._connection.recv()
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, RoundResult)
        return result

    def run_all(self, works: Sequence[Workload]) -> list[RoundResult]:
        return [self.run(work) for work in works]

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
        self._connection.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
