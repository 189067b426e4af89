"""The HTTP server (``--http-listen``): /metrics and /healthz, bounded in connections and time.

Real servers from ``make_server`` (the aio server on the test run's event-loop
thread, in this process), reached over real TCP sockets and urllib:

- /healthz says SERVING, then 503 NOT_SERVING once the health service drains;
- 2,000 silent connections add no thread to this process, and /metrics still
  answers while they are open;
- beyond ``http_max_connections`` a connection is answered 503 and closed at
  once, counted in ``sesscache_http_connections_refused_total``;
- a silent connection, one with half a request, and an idle keep-alive one are
  closed after ``http_idle_timeout`` (this pins the pinned aiohttp's behaviour:
  its keep-alive timer runs from the connection's start), while a keep-alive
  connection that keeps asking stays open past it;
- a client that stops reading a response is aborted after ``http_idle_timeout``;
- oversized request lines and headers get 400, a GET with a body 413;
- a taken port: ``python -m sesscache_server`` says "cannot serve HTTP on ... already in
  use" and exits 1; a free one: it logs where it serves HTTP and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from harness.child import Child
from sesscache_server.http import REFUSED_RESPONSE, HttpServer
from tests.support.servers import ServerThread

SILENT = 2000


def _get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path``, through urllib."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def _http_port(server: ServerThread) -> int:
    assert server.running is not None
    assert server.running.http is not None
    return server.running.http.port


def _http(server: ServerThread) -> HttpServer:
    assert server.running is not None
    assert server.running.http is not None
    return server.running.http


def _new_threads(before: set[threading.Thread]) -> list[str]:
    """Names of threads running now that were not running ``before``."""
    return [thread.name for thread in threading.enumerate() if thread not in before]


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


@contextlib.contextmanager
def _connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections to ``port`` that send nothing; closed on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * count + 512  # both ends live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _closed_at(sockets: list[socket.socket], timeout: float = 10) -> list[float]:
    """When (``time.monotonic()``) the server closed each of ``sockets``; fail after ``timeout``."""
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(sockets):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{len(sockets) - len(closed)} connections still open after {timeout}s")
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[ready] = time.monotonic()
                    selector.unregister(ready)
    return [closed[sock] for sock in sockets]


def test_healthz_serving_then_not_serving_while_draining(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(f"sqlite:///{tmp_path}/h.db", http_listen="127.0.0.1:0")
    port = _http_port(server)
    assert _get(port, "/healthz") == (200, "SERVING\n")
    assert server.running is not None
    server.run(server.running.health.enter_graceful_shutdown())
    assert _get(port, "/healthz") == (503, "NOT_SERVING\n")
    # /metrics still answers while draining.
    status, text = _get(port, "/metrics")
    assert status == 200
    assert "sesscache_sessions 0.0" in text


def test_silent_connections_add_no_threads_and_metrics_still_answer(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(
        f"sqlite:///{tmp_path}/s.db",
        http_listen="127.0.0.1:0",
        http_max_connections=SILENT + 10,
        http_idle_timeout=120.0,
    )
    http = _http(server)
    assert _get(http.port, "/healthz")[0] == 200
    _wait_until(lambda: http.gate.open == 0, 5, "the probe's connection closed")
    threads = set(threading.enumerate())
    with _connections(http.port, SILENT):
        _wait_until(lambda: http.gate.open == SILENT, 30, f"{SILENT} connections accepted")
        assert _new_threads(threads) == []
        start = time.monotonic()
        status, text = _get(http.port, "/metrics")
        assert status == 200
        assert time.monotonic() - start < 5
        assert f"sesscache_http_connections {SILENT + 1}.0" in text
        assert "sesscache_http_connections_refused_total 0.0" in text
        assert http.gate.refused == 0
        assert _new_threads(threads) == []
    _wait_until(lambda: http.gate.open == 0, 10, "closed connections released")


def test_connections_beyond_the_maximum_are_refused_at_once(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    limit = 50
    server = make_server(
        f"sqlite:///{tmp_path}/r.db",
        http_listen="127.0.0.1:0",
        http_max_connections=limit,
        http_idle_timeout=120.0,
    )
    http = _http(server)
    threads = set(threading.enumerate())
    with _connections(http.port, SILENT) as sockets:
        opened = time.monotonic()
        _wait_until(lambda: http.gate.refused == SILENT - limit, 30, "the excess refused")
        assert http.gate.open == limit
        assert _new_threads(threads) == []
        # The refused ones are readable at once: a 503, then end of stream.
        with selectors.DefaultSelector() as selector:
            for sock in sockets:
                selector.register(sock, selectors.EVENT_READ)
            ready = {key.fileobj for key, _ in selector.select(timeout=2)}
            while len(ready) < SILENT - limit and time.monotonic() - opened < 10:
                ready |= {key.fileobj for key, _ in selector.select(timeout=0.5)}
            # Give any wrongly closed admitted connection a moment to show.
            ready |= {key.fileobj for key, _ in selector.select(timeout=0.5)}
        assert len(ready) == SILENT - limit
        assert time.monotonic() - opened < 10
        for sock in sockets:
            if sock in ready:
                assert _read_to_eof(sock, 5) == REFUSED_RESPONSE
        # While full, a scrape is refused too; once a slot is free, it answers.
        assert _get(http.port, "/metrics")[0] == 503
        admitted = [sock for sock in sockets if sock not in ready]
        assert len(admitted) == limit
        admitted[0].close()
        _wait_until(lambda: http.gate.open == limit - 1, 5, "a slot freed")
        status, text = _get(http.port, "/metrics")
        assert status == 200
        assert f"sesscache_http_connections_refused_total {SILENT - limit + 1}.0" in text
        assert _new_threads(threads) == []


def test_silent_and_idle_connections_are_closed_after_the_idle_timeout(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    idle = 0.5
    server = make_server(
        f"sqlite:///{tmp_path}/i.db", http_listen="127.0.0.1:0", http_idle_timeout=idle
    )
    http = _http(server)
    opened = time.monotonic()
    with _connections(http.port, 20) as silent, _connections(http.port, 2) as (partial, alive):
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        time.sleep(idle / 2)
        alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        alive.settimeout(5)
        assert alive.recv(65536).startswith(b"HTTP/1.1 200 OK")
        answered = time.monotonic()
        *silent_closed, partial_closed, alive_closed = _closed_at([*silent, partial, alive])
        for closed in [*silent_closed, partial_closed]:
            assert idle - 0.1 < closed - opened < idle + 5
        # The keep-alive one: idle after its response, not after it opened.
        assert idle - 0.1 < alive_closed - answered < idle + 5
    _wait_until(lambda: http.gate.open == 0, 5, "all connections released")


def test_silent_connection_is_closed_no_sooner_than_the_idle_timeout(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    idle = 0.5
    server = make_server(
        f"sqlite:///{tmp_path}/t.db", http_listen="127.0.0.1:0", http_idle_timeout=idle
    )
    with _connections(_http_port(server), 1) as (sock,):
        opened = time.monotonic()
        (closed,) = _closed_at([sock])
    assert idle - 0.1 < closed - opened < idle + 5


def test_keep_alive_connection_that_keeps_asking_outlives_the_idle_timeout(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    idle = 1.0
    server = make_server(
        f"sqlite:///{tmp_path}/k.db", http_listen="127.0.0.1:0", http_idle_timeout=idle
    )
    with _connections(_http_port(server), 1) as (sock,):
        sock.settimeout(5)
        start = time.monotonic()
        for _ in range(8):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b"SERVING\n"):
                chunk = sock.recv(65536)
                assert chunk, "closed while in use"
                response += chunk
            assert response.startswith(b"HTTP/1.1 200 OK")
            time.sleep(idle / 4)
        assert time.monotonic() - start > 1.5 * idle


def test_request_size_limits_and_bodies(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(f"sqlite:///{tmp_path}/l.db", http_listen="127.0.0.1:0")
    port = _http_port(server)
    requests = {
        "long request line": b"GET /metrics?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "long header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
        "many headers": b"GET /metrics HTTP/1.1\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
        + b"\r\n",
        "GET with a body": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "chunked GET": b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    }
    statuses = {}
    for name, request in requests.items():
        with _connections(port, 1) as (sock,):
            sock.sendall(request)
            # Each is answered and the connection closed (no keep-alive after it).
            response = _read_to_eof(sock, 5)
            statuses[name] = int(response.split(b" ", 2)[1])
    assert statuses == {
        "long request line": 400,
        "long header": 400,
        "many headers": 400,
        "GET with a body": 413,
        "chunked GET": 413,
    }
    assert _get(port, "/nothing")[0] == 404


async def _stalled_reader(idle: float) -> tuple[float, int, int]:
    """A client that asks for 8 MB and reads none of it: (seconds to abort, stalled, open)."""
    app = web.Application()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 8_000_000)

    app.router.add_get("/big", big)
    http = HttpServer(app, "127.0.0.1:0", max_connections=4, idle_timeout=idle)
    await http.start()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", http.port))
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            start = loop.time()
            for want_open in (True, False):  # accepted, then aborted
                for _ in range(1000):  # 10 s at most
                    if bool(http.gate.open) == want_open:
                        break
                    await asyncio.sleep(0.01)
            return loop.time() - start, http.gate.stalled, http.gate.open
    finally:
        await http.stop()


def test_client_that_stops_reading_is_aborted() -> None:
    idle = 0.5
    seconds, stalled, still_open = asyncio.run(_stalled_reader(idle))
    assert (stalled, still_open) == (1, 0)
    assert idle - 0.1 < seconds < idle + 5


def test_taken_port_exits_non_zero_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        process = Child(
            ["--listen=127.0.0.1:0", f"--data-dir={tmp_path}", f"--http-listen={listen}"]
        )
        process.start(wait=False)
        assert process.wait(60) == 1
    assert f"cannot serve HTTP on {listen}: " in process.log_text()
    assert "already in use" in process.log_text()


def test_process_logs_where_it_serves_http(tmp_path: Path) -> None:
    with Child(
        ["--listen=127.0.0.1:0", f"--data-dir={tmp_path}", "--http-listen=127.0.0.1:0"]
    ) as process:
        log = process.log_text()
        http = re.search(r"http on http://127\.0\.0\.1:(\d+)\b", log)
        metrics = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log)
        assert http is not None
        assert metrics is not None
        assert http.group(1) == metrics.group(1)
        port = int(metrics.group(1))
        assert _get(port, "/healthz") == (200, "SERVING\n")
        assert _get(port, "/metrics")[0] == 200
        process.signal()
        assert process.wait() == 0
