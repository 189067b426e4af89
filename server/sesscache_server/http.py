"""The HTTP side of the server: ``/metrics`` and ``/healthz`` (``--http-listen HOST:PORT``).

An aiohttp application on the same asyncio event loop as the gRPC server: no
thread per connection, and every connection is bounded in number and time.

- **Connections.** At most ``max_connections`` TCP connections are open at
  once. One beyond that is answered ``503`` and closed at once, and counted
  (``sesscache_http_connections_refused_total``).
- **Silence.** A connection that sends no complete request within
  ``idle_timeout`` seconds of opening is closed, and so is a keep-alive
  connection idle that long after its last response. aiohttp does this
  itself: its keep-alive timer (``keepalive_timeout``) is armed when the
  connection opens, not only after a response, and fires while the handler
  still waits for a complete request, so a silent connection or one that
  trickles a request line byte by byte is closed on time.
  ``tests/test_http.py`` pins that behaviour of the pinned aiohttp.
- **Stalled readers.** A client that stops reading a response leaves the
  handler waiting for the socket to drain, which aiohttp never times out:
  :class:`_Connection` aborts a connection whose writes stay paused for
  ``idle_timeout``.
- **Requests.** aiohttp bounds the request line and each header at 8,190
  bytes and a request at 128 headers (larger ones get 400). A GET or HEAD
  with a body gets 413 and the connection is closed.

:func:`make_app` builds the application; more routes (the web console) go
on it before :meth:`HttpServer.start`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sesscache_server.health import DrainingHealthServicer
from sesscache_server.metrics import Metrics

log = logging.getLogger("sesscache.http")

#: Sent to a connection beyond the maximum, before it is closed.
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"too many connections\n"
)

#: Connections the kernel queues before they are accepted (capped by net.core.somaxconn):
#: a burst beyond it has its connection attempts dropped and retried a second later.
BACKLOG = 1024

#: Seconds :meth:`HttpServer.stop` gives requests in flight (handlers answer at once).
SHUTDOWN_TIMEOUT = 1.0

#: Application keys the handlers read.
METRICS_KEY = web.AppKey("metrics", Metrics)
HEALTH_KEY = web.AppKey("health", DrainingHealthServicer)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``; an empty host is 127.0.0.1, ``[::1]`` is ``::1``."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"cannot serve HTTP on {listen}: expected HOST:PORT")
    return host, int(port)


def make_app(metrics: Metrics, health: DrainingHealthServicer) -> web.Application:
    """The application with ``GET /metrics`` and ``GET /healthz``; add routes to it."""
    app = web.Application(middlewares=[_no_body])
    app[METRICS_KEY] = metrics
    app[HEALTH_KEY] = health
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    metrics.before_scrape()
    body = generate_latest(metrics.registry)
    response = web.Response(body=body)
    # Set as a header: CONTENT_TYPE_LATEST carries parameters (version, charset)
    # that web.Response(content_type=...) refuses.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _healthz(request: web.Request) -> web.Response:
    if request.app[HEALTH_KEY].draining:
        return web.Response(status=503, text="NOT_SERVING\n")
    return web.Response(text="SERVING\n")


@web.middleware
async def _no_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """GET and HEAD take no body: 413, and the connection is closed."""
    if request.method in ("GET", "HEAD") and request.body_exists:
        response = web.Response(status=413, text="request body not allowed\n")
        response.force_close()
        return response
    return await handler(request)


class ConnectionGate:
    """Counts open connections and admits at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.accepted = 0
        self.refused = 0
        self.stalled = 0

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        self.accepted += 1
        return True

    def release(self) -> None:
        self.open -= 1


class _Connection(asyncio.Protocol):
    """One TCP connection: admitted by the gate (else 503 and closed), then aiohttp's.

    Forwards every protocol callback to aiohttp's request handler, and aborts
    the connection when its writes stay paused (the peer reads nothing) for
    ``stall_timeout`` seconds.
    """

    __slots__ = ("_gate", "_inner", "_make_inner", "_stall", "_stall_timeout", "_transport")

    def __init__(
        self,
        gate: ConnectionGate,
        make_inner: Callable[[], asyncio.Protocol],
        stall_timeout: float,
    ) -> None:
        self._gate = gate
        self._make_inner = make_inner
        self._stall_timeout = stall_timeout
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._gate.admit():
            transport.write(REFUSED_RESPONSE)
            transport.close()
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._cancel_stall()
            self._stall = asyncio.get_running_loop().call_later(self._stall_timeout, self._abort)
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._cancel_stall()
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        self._transport = None
        inner, self._inner = self._inner, None
        if inner is not None:
            self._gate.release()
            inner.connection_lost(exc)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _abort(self) -> None:
        self._stall = None
        self._gate.stalled += 1
        if self._transport is not None:
            self._transport.abort()


class _GatedSite(web.BaseSite):
    """A TCP site whose connections pass through a :class:`ConnectionGate`."""

    __slots__ = ("_gate", "_host", "_port", "_stall_timeout")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        stall_timeout: float,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._gate = gate
        self._stall_timeout = stall_timeout

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        await super().start()
        handlers = self._runner.server
        assert handlers is not None
        gate, stall_timeout = self._gate, self._stall_timeout
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(gate, handlers, stall_timeout),
            self._host,
            self._port,
            backlog=BACKLOG,
            reuse_address=True,
        )
        sockets = self._server.sockets
        if sockets:
            self._port = sockets[0].getsockname()[1]


class _HttpCollector(Collector):
    """The gate's counts, read at scrape time."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily("sesscache_http_connections", "HTTP connections open")
        gauge.add_metric([], self.gate.open)
        yield gauge
        for name, documentation, value in (
            ("accepted", "HTTP connections accepted", self.gate.accepted),
            ("refused", "HTTP connections refused: the maximum was open", self.gate.refused),
            ("stalled", "HTTP connections aborted: the client stopped reading", self.gate.stalled),
        ):
            counter = CounterMetricFamily(f"sesscache_http_connections_{name}", documentation)
            counter.add_metric([], value)
            yield counter


class HttpServer:
    """The application served on ``host:port`` with bounded connections."""

    def __init__(
        self,
        app: web.Application,
        listen: str,
        *,
        max_connections: int,
        idle_timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.idle_timeout = idle_timeout
        self.gate = ConnectionGate(max_connections)
        if metrics is not None:
            metrics.registry.register(_HttpCollector(self.gate))
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Listen (port 0 picks a free port) and return the port.

        Raises OSError ``cannot serve HTTP on HOST:PORT: ...`` when the
        address cannot be bound.
        """
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.idle_timeout,
            lingering_time=self.idle_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = _GatedSite(runner, self.host, self.port, self.gate, self.idle_timeout)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            reason = error.strerror or error
            raise OSError(f"cannot serve HTTP on {self.listen}: {reason}") from None
        self._runner = runner
        self.port = site.port
        log.info("http on %s", self.url)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
