"""What the web console costs: its page load with many sessions, and the hit path while open.

``python -m bench.console`` starts ``python -m sesscache_server`` (its HTTP server on a free
port, SQLite), then:

1. **Hit path.** 1-row QueryPersons HITs (the load generator: grpc.aio, ``--inflight``
   calls in flight) in alternating rounds with the console closed and open. Open means
   what a browser on the Live events page holds: a ``GET /api/events?all=1`` stream
   (every session's events, read as they come) and a statistics stream (``GetStats``
   each second), both read by this process. The ratio is the median of the open rounds
   over the median of the closed ones (1.0: no cost).
2. **10,000 sessions.** The load generator makes ``--sessions`` sessions (one MISS each),
   then ListSessions is timed in each order, and headless Chromium (Debian's chromium,
   selenium) loads the overview and the sessions page with an empty cache: the time
   until the page has rendered (the app's ``rendered:PAGE`` performance mark), the DOM
   content loaded and load events, and the bytes transferred (navigation and
   resources, including the API calls), from the browser's Performance API.

The figures are printed and written to ``bench/results/console.json``. A few minutes at
the defaults; ``--quick`` is a few seconds (100 sessions, short rounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import servers
from bench.loadgen import LoadGenerator, Workload
from harness.child import ROOT, Child
from sesscache.v1 import sesscache_pb2 as pb
from sesscache.v1 import sesscache_pb2_grpc as pb_grpc

QUERY = "/sesscache.v1.SessionCache/QueryPersons"
API = "/api/sesscache.v1.SessionCache/"
_CONSOLE_LINE = re.compile(r"console: http://127\.0\.0\.1:(\d+)/")


def console_port(child: Child, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _CONSOLE_LINE.search(child.log_text())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise TimeoutError(f"no console line in the log:\n{child.log_tail()}")


class Stream(threading.Thread):
    """One ``GET /api/events`` stream, read to the end by a thread; counts its frames."""

    def __init__(self, port: int, query: str) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", f"/api/events?{query}")
        self.response = self.connection.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"/api/events?{query}: HTTP {self.response.status}")
        self.frames = 0
        self.start()

    def run(self) -> None:
        try:
            for line in self.response:
                if line.startswith(b"data:"):
                    self.frames += 1
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed under the reader (http.client then has no file)

    def close(self) -> None:
        if self.connection.sock is not None:
            self.connection.sock.close()
        self.connection.close()


def post(port: int, method: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(seconds, JSON response) of one API call."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    connection.request("POST", API + method, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method}: HTTP {response.status} {data}")
    return elapsed, data


def hit_path(
    load: LoadGenerator, child: Child, port: int, *, rounds: int, duration: float, inflight: int
) -> dict[str, Any]:
    """Hit throughput, and the server's CPU time per hit, of each side (see SIDES).

    On a shared machine throughput moves with everyone else's load; CPU time per
    call much less, so both are given."""
    target = child.target
    request = pb.QueryPersonsRequest(name="person 10").SerializeToString()
    sessions = tuple(f"bench-hit-{n}" for n in range(inflight))
    warm = Workload(target, QUERY, (request,), inflight=inflight, kind="each", sessions=sessions)
    load.run(warm)
    work = Workload(
        target,
        QUERY,
        (request,),
        inflight=inflight,
        sessions=sessions,
        duration=duration,
        expect=("QueryPersonsResponse", "cache_status", pb.CACHE_STATUS_HIT),
    )
    sides: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    frames = 0
    for number in range(rounds):
        order = SIDES if number % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            readers: list[Stream | GrpcWatch] = []
            if side == "overview":
                readers = [Stream(port, "")]
            elif side == "live_events":
                readers = [Stream(port, "all=1&stats=0"), Stream(port, "")]
            elif side == "grpc_watch_all":
                readers = [GrpcWatch(target)]
            used = child.cpu_seconds()
            try:
                result = load.run(work)
                used = child.cpu_seconds() - used
            finally:
                for reader in readers:
                    reader.close()
                frames += sum(reader.frames for reader in readers)
            if result.errors or result.wrong_status:
                raise RuntimeError(f"hit round failed: {result.first_error or 'not a HIT'}")
            sides[side].append(result.calls_per_s)
            # Calls of the whole round (the warm-up too), from the measured rate.
            calls = result.calls_per_s * (work.duration + work.warmup)
            cpu[side].append(1e6 * used / max(calls, 1.0))
    closed = statistics.median(sides["closed"])
    figures: dict[str, Any] = {
        f"{side}_calls_per_s": statistics.median(values) for side, values in sides.items()
    }
    closed_cpu = statistics.median(cpu["closed"])
    for side in SIDES[1:]:
        figures[f"ratio_{side}_over_closed"] = round(figures[f"{side}_calls_per_s"] / closed, 3)
    for side in SIDES:
        figures[f"{side}_server_cpu_us_per_hit"] = round(statistics.median(cpu[side]), 1)
    for side in SIDES[1:]:
        figures[f"cpu_ratio_{side}_over_closed"] = round(
            statistics.median(cpu[side]) / closed_cpu, 3
        )
    figures.update(rounds=rounds, round_seconds=duration, inflight=inflight, frames=frames)
    return figures


#: The hit rounds: no console; the overview open (statistics each second); the Live
#: events page open (every session's events, and statistics); for reference, a gRPC
#: client watching every session (the same events, without the console).
SIDES = ("closed", "overview", "live_events", "grpc_watch_all")


class GrpcWatch(threading.Thread):
    """WatchCacheEvents(all_sessions) over gRPC, read by a thread; counts its events."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(target)
        stub = pb_grpc.SessionCacheStub(self.channel)
        self.call: Any = stub.WatchCacheEvents(pb.WatchCacheEventsRequest(all_sessions=True))
        self.frames = 0
        self.start()
        time.sleep(0.2)  # subscribed before the round starts

    def run(self) -> None:
        try:
            for _ in self.call:
                self.frames += 1
        except grpc.RpcError:
            pass  # cancelled

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def make_sessions(load: LoadGenerator, target: str, count: int) -> None:
    request = pb.QueryPersonsRequest(name="person 11").SerializeToString()
    names = tuple(f"bench-console-{n:05d}" for n in range(count))
    result = load.run(Workload(target, QUERY, (request,), inflight=16, kind="each", sessions=names))
    if result.errors:
        raise RuntimeError(f"making sessions failed: {result.first_error}")


def list_sessions(port: int) -> dict[str, Any]:
    timings: dict[str, Any] = {}
    for order in ("SESSION_ORDER_CREATED", "SESSION_ORDER_LAST_ACTIVE", "SESSION_ORDER_HITS"):
        samples = [
            post(port, "ListSessions", {"page_size": 50, "order_by": order}) for _ in range(5)
        ]
        timings[order.removeprefix("SESSION_ORDER_").lower() + "_ms"] = round(
            1000 * statistics.median(s for s, _ in samples), 2
        )
        timings["total_size"] = samples[0][1]["total_size"]
    return timings


PAGE_FIGURES = """
const nav = performance.getEntriesByType('navigation')[0];
const resources = performance.getEntriesByType('resource');
const mark = performance.getEntriesByName(arguments[0])[0];
return {
  rendered_ms: mark ? mark.startTime : null,
  dom_content_loaded_ms: nav.domContentLoadedEventEnd,
  load_ms: nav.loadEventEnd,
  transfer_bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
  decoded_bytes: nav.decodedBodySize + resources.reduce((n, r) => n + r.decodedBodySize, 0),
  requests: 1 + resources.length,
  rows: document.querySelectorAll('#sessions tbody tr').length,
};
"""


def page_load(port: int, work: Path) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        return {"skipped": "chromium and chromedriver are needed"}
    figures: dict[str, Any] = {}
    for page in ("overview", "sessions"):
        options = Options()
        options.binary_location = binary
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            f"--user-data-dir={tempfile.mkdtemp(dir=work)}",  # a cold cache each time
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            hash_ = "" if page == "overview" else "#/sessions"
            driver.get(f"http://127.0.0.1:{port}/{hash_}")
            name = f"rendered:{page}"
            script = f"return performance.getEntriesByName('{name}').length"
            WebDriverWait(driver, 30, poll_frequency=0.02).until(
                lambda d: d.execute_script(script)  # noqa: B023 (called at once)
            )
            time.sleep(0.3)  # let the load event pass
            figures[page] = driver.execute_script(PAGE_FIGURES, name)
        finally:
            driver.quit()
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000, help="0: no page load")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each side")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="100 sessions, 2 short rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.rounds, args.duration = 100, 2, 0.5
    work = Path(tempfile.mkdtemp(prefix="sesscache-console-bench-"))
    try:
        child, _ = servers.sesscache(
            work / "server.log",
            f"sqlite:///{work / 'bench.db'}",
            seed_persons=50,
            optional=(("--http-listen", "127.0.0.1:0"), ("--max-sessions", "20000")),
        )
        with child, LoadGenerator() as load:
            port = console_port(child)
            results: dict[str, Any] = {
                "hit_path": hit_path(
                    load,
                    child,
                    port,
                    rounds=args.rounds,
                    duration=args.duration,
                    inflight=args.inflight,
                )
            }
            if args.sessions:
                make_sessions(load, child.target, args.sessions)
                results["list_sessions"] = list_sessions(port)
                results["page_load"] = page_load(port, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
