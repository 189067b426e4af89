"""The load generator: cache hits with N calls in flight, from a process of its own.

:func:`run_load` starts ``python -m scale.load``, hands it a :class:`LoadSpec`
(JSON on stdin) and returns a :class:`LoadResult`. The child keeps one
grpc.aio channel to the target and runs ``inflight`` workers, worker ``w``
always calling ``QueryPersons`` in session ``sessions[w % len(sessions)]``,
back to back, for ``warmup`` then ``duration`` seconds. Calls that start and
end within the measured window count. Requests and responses stay raw bytes
(serialized once, decoded only for a sample that checks the cache status), so
the client spends as little CPU per call as grpc.aio allows.

The child prints ``start`` and ``stop`` as the measured window opens and
closes, so the parent can read the CPU time the servers and nginx spend in
exactly that window, then one line of JSON: the result.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from scale.nginx import ROOT

METHOD = "/sesscache.v1.SessionCache/QueryPersons"
#: The key of :attr:`LoadResult.cpu` for the whole machine's busy CPU time.
MACHINE = "machine"
#: Every this many calls (and its first), a worker checks that the response is a HIT.
CHECK_EVERY = 50


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to run: see the module docstring."""

    target: str
    sessions: tuple[str, ...]
    request: bytes
    inflight: int = 32
    duration: float = 3.0
    warmup: float = 0.5

    def to_json(self) -> str:
        data = asdict(self)
        data["request"] = base64.b64encode(self.request).decode()
        data["sessions"] = list(self.sessions)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        data = json.loads(text)
        data["request"] = base64.b64decode(data["request"])
        data["sessions"] = tuple(data["sessions"])
        return cls(**data)


@dataclass(slots=True)
class LoadResult:
    """What a run did.

    ``cpu``: CPU seconds of each watched process in the measured window, and
    of the whole machine (:data:`MACHINE`: every process, this client included).
    ``client_cpu``: the load generator's own CPU seconds, prorated to the window.
    """

    calls: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str
    sampled: int
    not_hit: int
    client_cpu: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def cpu_percent(self, name: str) -> float:
        return 100 * self.cpu.get(name, 0.0) / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calls_per_s"] = round(self.calls_per_s, 1)
        data["cpu_percent"] = {name: round(self.cpu_percent(name), 1) for name in self.cpu}
        return data


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _generate(spec: LoadSpec, mark: Callable[[str], None]) -> LoadResult:
    from sesscache_client.v1 import sesscache_pb2 as pb

    latencies: list[float] = []
    errors: list[str] = []
    checks = [0, 0]  # sampled, not hit
    async with grpc.aio.insecure_channel(spec.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        # Raw bytes both ways: no serializers.
        call: Any = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        begin = time.perf_counter() + spec.warmup
        end = begin + spec.duration

        async def worker(index: int) -> None:
            metadata = (("session-id", spec.sessions[index % len(spec.sessions)]),)
            done = 0
            while (started := time.perf_counter()) < end:
                try:
                    response: bytes = await call(spec.request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    await asyncio.sleep(0.01)
                    continue
                finished = time.perf_counter()
                if started >= begin and finished <= end:
                    latencies.append(finished - started)
                if done % CHECK_EVERY == 0:
                    checks[0] += 1
                    status = pb.QueryPersonsResponse.FromString(response).cache_status
                    checks[1] += status != pb.CACHE_STATUS_HIT
                done += 1

        async def marks() -> None:
            await asyncio.sleep(max(0.0, begin - time.perf_counter()))
            mark("start")
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            mark("stop")

        cpu = time.process_time()
        await asyncio.gather(marks(), *(worker(w) for w in range(spec.inflight)))
        client_cpu = time.process_time() - cpu
    return LoadResult(
        calls=len(latencies),
        elapsed=spec.duration,
        p50_ms=round(1000 * _percentile(latencies, 0.5), 3),
        p99_ms=round(1000 * _percentile(latencies, 0.99), 3),
        errors=len(errors),
        first_error=errors[0] if errors else "",
        sampled=checks[0],
        not_hit=checks[1],
        client_cpu=round(client_cpu * spec.duration / (spec.duration + spec.warmup), 3),
    )


def run_load(spec: LoadSpec, *, watch: Mapping[str, Sequence[int]] | None = None) -> LoadResult:
    """Run ``spec`` in a child process; ``watch``: process name -> pids whose CPU to measure."""
    from scale.topology import cpu_seconds, machine_busy_seconds

    watch = watch or {}

    def sample() -> dict[str, float]:
        taken = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in watch.items()}
        taken[MACHINE] = machine_busy_seconds()
        return taken

    before: dict[str, float] = {}
    after: dict[str, float] = {}
    result_line = ""
    with subprocess.Popen(
        [sys.executable, "-m", "scale.load"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdin.write(spec.to_json() + "\n")
        child.stdin.close()
        for line in child.stdout:
            word = line.strip()
            if word == "start":
                before = sample()
            elif word == "stop":
                after = sample()
            elif word.startswith("{"):
                result_line = word
        stderr = child.stderr.read()
        code = child.wait(30)
    if code != 0 or not result_line:
        raise RuntimeError(f"the load generator failed ({code}):\n{stderr}")
    data = json.loads(result_line)
    result = LoadResult(**data)
    result.cpu = {
        name: round(after.get(name, 0.0) - before.get(name, 0.0), 3) for name in [*watch, MACHINE]
    }
    return result


def main() -> int:
    """``python -m scale.load``: read a spec from stdin, print marks and the result."""
    spec = LoadSpec.from_json(sys.stdin.readline())

    def mark(word: str) -> None:
        print(word, flush=True)

    result = asyncio.run(_generate(spec, mark))
    data = asdict(result)
    data.pop("cpu")
    print(json.dumps(data), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
