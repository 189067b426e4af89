"""The web console on the HTTP server: ``/``, ``/static/*``, the JSON API and live events.

- ``GET /``: the console (``console/static/index.html``); ``GET /static/NAME``
  its scripts and styles, read once from the package (nothing from the internet).
- ``POST /api/sesscache.v1.SessionCache/METHOD``: every unary RPC, transcoded
  (:mod:`sesscache_server.gateway`). The body is at most ``--max-request-bytes``.
- ``GET /api/events?session=ID&all=1&types=hit,miss&stats=1``: Server-Sent
  Events: ``cache`` events from ``WatchCacheEvents`` (of session ``ID``, or of
  every session with ``all=1``; none when neither is given), and a ``stats``
  frame (``GetStats``) every second. A refused watch (no admin role, the
  watcher limits) is answered with its JSON error before any event.

Every response carries a strict Content-Security-Policy (no inline script or
style, nothing from elsewhere, no framing), ``nosniff`` and no-referrer; the
console sets no cookie and reads its bearer token from ``Authorization``
only. When the server listens on loopback, the console and the API answer
only requests whose ``Host`` is a loopback name (a page from elsewhere cannot
reach them by rebinding its name to 127.0.0.1); the API takes only
``application/json`` bodies, which a page from another origin cannot send
without the preflight this server never grants.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server import config
from sesscache_server.gateway import (
    AUTHORIZATION_KEY,
    PREFIX,
    CallError,
    Gateway,
    HttpContext,
    cancel,
    metadata_of,
    parse_request,
    short,
    to_json,
    to_json_fast,
)
from sesscache_server.health import DrainingHealthServicer
from sesscache_server.http import HttpServer, make_app, parse_listen
from sesscache_server.metrics import Metrics

log = logging.getLogger("sesscache.console")

STATIC = Path(__file__).parent / "console" / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: Seconds between the ``stats`` frames of a live stream.
STATS_INTERVAL = 1.0
#: Seconds between comment lines on a stream that sends nothing else.
HEARTBEAT = 15.0
#: Events read ahead of the HTTP client; beyond it the event ring keeps them (and counts
#: what it drops in ``lost``).
EVENT_QUEUE = 256
#: Events written to the HTTP client at once, at most.
WRITE_BATCH = 64
_LOOPBACK_NAMES = ("localhost", "localhost.")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def assets(folder: Path = STATIC) -> dict[str, Asset]:
    """The console's files by name, read once."""
    found: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        found[path.name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return found


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a Host header or a listen host, port allowed) names loopback."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Console:
    """The console's routes over one :class:`Gateway`."""

    def __init__(self, gateway: Gateway, *, max_request_bytes: int, loopback: bool) -> None:
        self.gateway = gateway
        self.max_request_bytes = max_request_bytes
        self.loopback = loopback
        self.assets = assets()
        self.streams = 0

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(_secure)
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_post(PREFIX + "{method}", self.call)
        app.router.add_get("/api/events", self.events)

    # -- pages ----------------------------------------------------------------------

    def _checked_host(self, request: web.Request) -> None:
        if self.loopback and not is_loopback_host(request.host):
            body = CallError(
                grpc.StatusCode.PERMISSION_DENIED,
                "this server listens on loopback: use a loopback name (localhost, 127.0.0.1)",
            ).body()
            raise web.HTTPMisdirectedRequest(text=json.dumps(body), content_type="application/json")

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request, "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request, request.match_info["name"])

    def _asset(self, request: web.Request, name: str) -> web.StreamResponse:
        self._checked_host(request)
        asset = self.assets.get(name)
        if asset is None:
            raise web.HTTPNotFound(text="no such file\n")
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        response = web.Response(body=asset.body, headers=headers)
        response.headers["Content-Type"] = asset.content_type
        return response

    # -- the JSON API -------------------------------------------------------------------

    async def call(self, request: web.Request) -> web.StreamResponse:
        """One unary RPC: the JSON request in, the JSON response (or error) out."""
        self._checked_host(request)
        name = request.match_info["method"]
        method = self.gateway.methods.get(name)
        if method is None or method.streaming:
            hint = " (a stream: GET /api/events)" if method is not None else ""
            text = f"no unary method {short(name)!r} in the service{hint}"
            return _error(CallError(grpc.StatusCode.NOT_FOUND, text))
        if request.content_type != "application/json":
            return _error(
                CallError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "send the request as application/json",
                    status=415,
                )
            )
        try:
            body = await self._body(request)
            message = parse_request(body, method.request)
            response = await self.gateway.unary(name, message, self._context(request))
        except CallError as error:
            return _error(error)
        return _json(to_json(response))

    async def _body(self, request: web.Request) -> bytes:
        limit = self.max_request_bytes
        too_large = CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request body is over {limit} bytes (max_request_bytes)",
            status=413,
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _context(request: web.Request, *, session: str | None = None, **kwargs: Any) -> HttpContext:
        def gone() -> bool:
            transport = request.transport
            return transport is None or transport.is_closing()

        return HttpContext(
            metadata_of(request.headers, session=session), _peer(request), gone=gone, **kwargs
        )

    # -- live events ----------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: cache events and statistics, until the client goes."""
        self._checked_host(request)
        query = request.query
        try:
            types = _event_types(query.get("types", ""))
        except CallError as error:
            return _error(error)
        session = query.get("session") or None
        all_sessions = query.get("all", "") in ("1", "true")
        with_stats = query.get("stats", "1") not in ("0", "false")
        try:  # the first frame, and the caller's credentials checked
            first = await self.gateway.unary(
                "GetStats", pb.GetStatsRequest(), _stats_context(request), quiet=True
            )
        except CallError as error:
            return _error(error)
        queue: asyncio.Queue[Message | CallError | None] = asyncio.Queue(EVENT_QUEUE)
        pump: asyncio.Task[None] | None = None
        if all_sessions or session is not None:
            started = asyncio.Event()

            async def on_start() -> None:
                started.set()

            watch = pb.WatchCacheEventsRequest(all_sessions=all_sessions, types=types)
            context = self._context(request, session=session, on_initial_metadata=on_start)
            pump = asyncio.create_task(self._pump(watch, context, queue))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({pump, waiter}, return_when=asyncio.FIRST_COMPLETED)
            await cancel(waiter)
            if not started.is_set():
                item = queue.get_nowait() if not queue.empty() else None
                if isinstance(item, CallError):
                    return _error(item)
                return _error(CallError(grpc.StatusCode.UNAVAILABLE, "the event stream ended"))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        self.streams += 1
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            await _send(response, "stats", _stats_frame(first))
            await self._relay(request, response, queue, pump is not None, with_stats)
        except ConnectionError:
            pass  # the client went away
        finally:
            self.streams -= 1
            if pump is not None:
                await cancel(pump)
        return response

    async def _pump(
        self,
        watch: pb.WatchCacheEventsRequest,
        context: HttpContext,
        queue: asyncio.Queue[Message | CallError | None],
    ) -> None:
        try:
            async for message in self.gateway.stream("WatchCacheEvents", watch, context):
                await queue.put(message)
            await queue.put(None)
        except CallError as error:
            await queue.put(error)

    async def _relay(
        self,
        request: web.Request,
        response: web.StreamResponse,
        queue: asyncio.Queue[Message | CallError | None],
        watching: bool,
        with_stats: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + STATS_INTERVAL
        quiet_since = loop.time()
        while True:
            item = await _next(queue, watching, max(0.0, next_tick - loop.time()))
            if item is None:
                await _send(response, "end", {"reason": "the event stream ended"})
                return
            if isinstance(item, CallError):
                await _send(response, "error", item.body())
                return
            if isinstance(item, Message):
                await response.write(_batch(item, queue))
                quiet_since = loop.time()
                if loop.time() < next_tick:
                    continue  # else a tick is due, however busy the stream
            next_tick = loop.time() + STATS_INTERVAL
            if request.transport is None or request.transport.is_closing():
                return
            if with_stats:
                try:
                    stats = await self.gateway.unary(
                        "GetStats", pb.GetStatsRequest(), _stats_context(request), quiet=True
                    )
                except CallError as error:
                    await _send(response, "error", error.body())
                    return
                await _send(response, "stats", _stats_frame(stats))
            elif loop.time() - quiet_since >= HEARTBEAT:
                await response.write(b": keep-alive\n\n")
                quiet_since = loop.time()


def _stats_context(request: web.Request) -> HttpContext:
    """The context of a stream's GetStats: the caller's credentials, and no session (a
    GetStats naming a session that has ended is NOT_FOUND, which would end the stream)."""
    return HttpContext(
        [(AUTHORIZATION_KEY, value) for value in request.headers.getall("Authorization", ())],
        _peer(request),
    )


def _stats_frame(stats: Message) -> dict[str, Any]:
    frame = to_json(stats)
    frame["time"] = time.time()
    return frame


async def _next(
    queue: asyncio.Queue[Message | CallError | None], watching: bool, wait: float
) -> Message | CallError | bool | None:
    """The next item of a stream's queue, or False when ``wait`` seconds pass first."""
    if not watching:
        await asyncio.sleep(wait)
        return False
    if not queue.empty():
        return queue.get_nowait()  # busy: no timer, no task per event
    try:
        return await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return False


def _batch(first: Message, queue: asyncio.Queue[Message | CallError | None]) -> bytes:
    """The frames of ``first`` and of the events ready after it (at most WRITE_BATCH), for
    one write."""
    frames = [_frame("cache", to_json_fast(first))]
    while len(frames) < WRITE_BATCH and not queue.empty():
        following = queue.get_nowait()
        if not isinstance(following, Message):
            queue.put_nowait(following)  # the end, or an error: after these
            break
        frames.append(_frame("cache", to_json_fast(following)))
    return b"".join(frames)


def _frame(event: str, data: Any) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


async def _send(response: web.StreamResponse, event: str, data: Any) -> None:
    await response.write(_frame(event, data))


_EVENT_TYPE_NAMES = frozenset(pb.CacheEventType.keys()) - {"CACHE_EVENT_TYPE_UNSPECIFIED"}


def _event_types(text: str) -> list[pb.CacheEventType.ValueType]:
    """``hit,miss`` (or ``CACHE_EVENT_TYPE_HIT``, ...) as CacheEventType values."""
    values: list[pb.CacheEventType.ValueType] = []
    for index, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        name = part.upper()
        name = name if name.startswith("CACHE_EVENT_TYPE_") else f"CACHE_EVENT_TYPE_{name}"
        if name not in _EVENT_TYPE_NAMES:
            raise CallError.bad_field(f"types[{index}]", f"unknown event type {short(part)!r}")
        values.append(pb.CacheEventType.Value(name))
        if len(values) > 16:
            raise CallError.bad_field("types", "at most 16 types")
    return values


def _peer(request: web.Request) -> str:
    """The HTTP client as gRPC names peers (``ipv4:127.0.0.1:PORT``)."""
    transport = request.transport
    address = transport.get_extra_info("peername") if transport is not None else None
    if not address:
        return "http:unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _error(error: CallError) -> web.Response:
    return _json(error.body(), status=error.http_status)


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: the console's security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def listen_candidates(listen: str) -> Iterator[str]:
    """Where to serve HTTP: ``listen``; for the default address, then any free port
    of it (several servers on one machine, tests, replicas)."""
    yield listen
    if listen == config.DEFAULT_HTTP_LISTEN:
        host, _ = parse_listen(listen)
        yield f"{host}:0"


async def start_http(
    settings: config.Settings,
    metrics: Metrics,
    health: DrainingHealthServicer,
    gateway: Gateway,
) -> HttpServer:
    """The HTTP server with /metrics, /healthz and the console, started.

    Raises OSError ``cannot serve HTTP on HOST:PORT: ...`` (or ValueError for
    an unparsable address).
    """
    listen = settings.effective_http_listen()
    host, _ = parse_listen(listen)
    app = make_app(metrics, health)
    Console(
        gateway, max_request_bytes=settings.max_request_bytes, loopback=is_loopback_host(host)
    ).install(app)
    server = HttpServer(
        app,
        listen,
        max_connections=settings.http_max_connections,
        idle_timeout=settings.http_idle_timeout,
        metrics=metrics,
    )
    candidates = list(listen_candidates(listen))
    for number, candidate in enumerate(candidates):
        server.listen = candidate
        server.host, server.port = parse_listen(candidate)
        try:
            await server.start()
        except OSError as error:
            if number + 1 == len(candidates):
                raise
            log.warning("%s; serving HTTP on a free port instead", error)
            continue
        break
    log.info("console: %s/", server.url)
    return server
