"""The JSON API of the web console: ``POST /api/sesscache.v1.SessionCache/METHOD``, and live
events at ``GET /api/events``, on a real server (``--http-listen 127.0.0.1:0``).

- every unary RPC of the service descriptor is transcoded (none is listed by hand),
  and answers what the gRPC call answers;
- gRPC statuses become grpc-gateway's HTTP statuses, with ``{code, message, details}``;
- bad JSON, an unknown field or a wrong value is 400 naming the field, in a short
  message that never echoes a long input;
- the body is bounded by ``--max-request-bytes`` (413);
- authentication: the bearer token of the ``Authorization`` header, the same rights
  as over gRPC (401, 403, what a non-admin sees);
- the security headers, the loopback ``Host`` rule, and application/json only;
- Server-Sent Events: cache events and stats frames; refusals before the stream
  starts (403, 429, 400), and the watcher slot freed when the client goes;
- the default HTTP address, its alias and ``off``.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.child import Child
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_client import Client
from sesscache_server import config
from sesscache_server.gateway import HTTP_STATUS, SERVICE, to_json, to_json_fast
from tests.support.servers import ServerThread

PREFIX = "/api/sesscache.v1.SessionCache/"
ADMIN, VIEWER = "admin-token-1", "viewer-token-1"
AUTH = f"{ADMIN}=ops:admin,{VIEWER}=alice"

MakeServer = Callable[..., ServerThread]


def _port(server: ServerThread) -> int:
    assert server.running is not None
    assert server.running.http is not None
    return server.running.http.port


def post(
    port: int,
    method: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    """POST to the API; (status, JSON body, headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        connection.request(
            "POST",
            PREFIX + method,
            body=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = connection.getresponse()
        text = response.read()
        return response.status, json.loads(text) if text else {}, response.headers
    finally:
        connection.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from tests.conftest import settings_for

    url = f"sqlite:///{tmp_path_factory.mktemp('gw') / 'gw.db'}"
    with ServerThread(settings_for(url, http_listen="127.0.0.1:0")) as running:
        yield running


@pytest.fixture(scope="module")
def port(server: ServerThread) -> int:
    return _port(server)


# -- transcoding -----------------------------------------------------------------------

UNARY = [m.name for m in SERVICE.methods if not m.server_streaming and not m.client_streaming]


@pytest.mark.parametrize("method", UNARY)
def test_every_unary_rpc_is_transcoded(port: int, method: str) -> None:
    """Each method of the descriptor answers JSON, with an HTTP status of the mapping (an
    empty request may be refused, but it is the method's own answer, never a 404 route)."""
    status, body, headers = post(port, method, {}, headers={"Session-Id": "gw-every"})
    assert headers["Content-Type"].startswith("application/json")
    if status == 200:
        output = SERVICE.methods_by_name[method].output_type
        assert isinstance(body, dict)
        # Every field is rendered (zeros too), with the proto's names.
        assert set(body) >= {f.name for f in output.fields if f.message_type is None}
    else:
        assert status in set(HTTP_STATUS.values()) - {200}
        assert body["code"] in grpc.StatusCode.__members__
        assert "no unary method" not in body["message"]


def test_queries_and_inspection_as_over_grpc(server: ServerThread, port: int) -> None:
    session = {"Session-Id": "gw-demo"}
    status, miss, _ = post(port, "QueryPersons", {"name": "person 10"}, headers=session)
    assert status == 200
    assert miss["cache_status"] == "CACHE_STATUS_MISS"
    assert miss["persons"][0]["name"] == "person 10"
    assert miss["persons"][0]["addresses"][0]["city"]
    _, hit, _ = post(port, "QueryPersons", {"name": "person 10"}, headers=session)
    assert hit["cache_status"] == "CACHE_STATUS_HIT"
    assert hit["sql_statements"] == 0
    # The JSON names are the proto's; camelCase input is accepted too.
    _, page, _ = post(port, "QueryPersons", {"pageSize": 2, "view": "PERSON_VIEW_BASIC"})
    assert len(page["persons"]) == 2
    assert page["persons"][0]["addresses"] == []

    with Client(server.target, timeout=10) as client:
        over_grpc = client.session("gw-demo").list_cache_keys()
    _, keys, _ = post(port, "ListCacheKeys", {}, headers=session)
    assert [e["digest"] for e in keys["entries"]] == [e.digest for e in over_grpc]
    assert keys["total_size"] == 1
    entry = keys["entries"][0]
    assert entry["hits"] == "1"  # int64 in the proto3 JSON mapping: a string
    assert entry["parameters"]
    assert entry["no_expiry"] is True

    _, sessions, _ = post(port, "ListSessions", {"order_by": "SESSION_ORDER_LAST_ACTIVE"})
    assert sessions["sessions"][0]["id"] == "gw-demo"
    handle = sessions["sessions"][0]["handle"]
    _, by_handle, _ = post(port, "ListCacheKeys", {"session": handle})
    assert [e["digest"] for e in by_handle["entries"]] == [entry["digest"]]

    _, stats, _ = post(port, "GetStats", {}, headers=session)
    assert stats["session"]["hits"] == "1"
    _, info, _ = post(port, "GetServerInfo")
    assert info["settings"]["max_request_bytes"] == str(256 * 1024)

    _, removed, _ = post(port, "Invalidate", {"key": entry["digest"]}, headers=session)
    assert removed["removed_count"] == 1
    _, after, _ = post(port, "ListCacheKeys", {}, headers=session)
    assert after["entries"] == []
    _, ended, _ = post(port, "EndSession", {}, headers=session)
    assert ended == {"existed": True, "keys_dropped": 0}


def test_sessions_ordered_and_paged(port: int) -> None:
    for index, count in enumerate((3, 1, 2)):
        for n in range(count):
            post(
                port, "QueryPersons", {"ids": [n + 1]}, headers={"Session-Id": f"gw-order-{index}"}
            )
    status, page, _ = post(port, "ListSessions", {"order_by": "SESSION_ORDER_ENTRIES"})
    assert status == 200
    ours = [s["id"] for s in page["sessions"] if s["id"].startswith("gw-order-")]
    assert ours == ["gw-order-0", "gw-order-2", "gw-order-1"]
    entries = [s["entries"] for s in page["sessions"]]
    assert entries == sorted(entries, reverse=True)
    # Keyset paging in that order: page by page, every session once.
    seen: list[str] = []
    token = ""
    while True:
        _, part, _ = post(
            port,
            "ListSessions",
            {"order_by": "SESSION_ORDER_ENTRIES", "page_size": 1, "page_token": token},
        )
        seen += [s["id"] for s in part["sessions"]]
        token = part["next_page_token"]
        if not token:
            break
    assert seen == [s["id"] for s in page["sessions"]]
    # A token is bound to its order.
    status, body, _ = post(port, "ListSessions", {"page_size": 1, "page_token": token or "x"})
    assert status == 400
    assert body["details"][0]["fieldViolations"][0]["field"] == "page_token"


# -- errors ------------------------------------------------------------------------------


def test_status_mapping_table() -> None:
    assert HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT] == 400
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert HTTP_STATUS[grpc.StatusCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.ALREADY_EXISTS] == 409
    assert HTTP_STATUS[grpc.StatusCode.ABORTED] == 409
    assert HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 400
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_service_errors_keep_their_status(port: int) -> None:
    status, body, _ = post(port, "ListCacheKeys", {}, headers={"Session-Id": "gw-never"})
    assert (status, body["code"]) == (404, "NOT_FOUND")
    assert "gw-never" in body["message"]
    assert body["details"] == []

    status, body, _ = post(port, "QueryPersons", {"page_size": -3})
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    [detail] = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == "page_size"

    status, body, _ = post(
        port, "GetStats", {}, headers={"Session-Id": "<img src=x onerror=alert(1)>"}
    )
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    assert body["details"][0]["fieldViolations"][0]["field"] == "session-id"
    assert "<img" not in body["message"]


@pytest.mark.parametrize(
    ("method", "payload", "field"),
    [
        ("ListSessions", {"foo": 1}, "foo"),
        ("ListSessions", {"page_size": "abc"}, "page_size"),
        ("ListSessions", {"pageSize": [1]}, "pageSize"),
        ("Invalidate", {"query": {"bad": 1}}, "query.bad"),
        ("Invalidate", {"query": {"ids": ["x"]}}, "ids"),
        ("EndSessions", {"min_idle": "soon"}, "min_idle"),
        ("ListCacheKeys", {"order_by": "CACHE_ENTRY_ORDER_NOPE"}, "order_by"),
        ("ListSessions", ["not", "an", "object"], "body"),
    ],
)
def test_bad_json_names_the_field(port: int, method: str, payload: Any, field: str) -> None:
    status, body, _ = post(port, method, payload)
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    assert body["details"][0]["fieldViolations"][0]["field"] == field
    assert body["message"].startswith(f"{field}: ")
    assert len(body["message"]) < 200


def test_bad_json_syntax_and_long_input(port: int) -> None:
    status, body, _ = post(port, "GetStats", raw=b'{"page_size": 1,')
    assert status == 400
    assert body["details"][0]["fieldViolations"][0]["field"] == "body"
    assert "not valid JSON" in body["message"]
    status, body, _ = post(port, "GetStats", raw=b"\xff\xfe")
    assert status == 400
    long_value = "9" * 20 + "x" * 5000
    status, body, _ = post(port, "ListSessions", {"page_size": long_value})
    assert status == 400
    assert len(json.dumps(body)) < 700  # a short prefix at most, never the whole input
    status, body, _ = post(port, "ListSessions", {"z" * 5000: 1})
    assert status == 400
    assert len(body["message"]) < 120


def test_unknown_and_streaming_methods(port: int) -> None:
    status, body, _ = post(port, "NoSuchMethod")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    status, body, _ = post(port, "WatchCacheEvents")
    assert status == 404
    assert "/api/events" in body["message"]


def test_body_limit_and_content_type(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(
        f"sqlite:///{tmp_path}/limit.db", http_listen="127.0.0.1:0", max_request_bytes=1024
    )
    port = _port(server)
    status, body, _ = post(port, "QueryPersons", {"ids": list(range(1, 400))})
    assert (status, body["code"]) == (413, "RESOURCE_EXHAUSTED")
    assert "max_request_bytes" in body["message"]
    status, _, _ = post(port, "QueryPersons", {"ids": [1, 2, 3]})
    assert status == 200
    # Chunked, without a Content-Length: counted as it arrives.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "POST",
        PREFIX + "GetStats",
        body=iter([b"{", b" " * 2000, b"}"]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    assert connection.getresponse().status == 413
    connection.close()
    # A form post (what another site's page can send without asking) is refused.
    status, body, _ = post(port, "GetStats", headers={"Content-Type": "text/plain"})
    assert status == 415


def test_security_headers_and_loopback_host(port: int) -> None:
    for path, method in (("/", "GET"), ("/static/app.js", "GET"), (PREFIX + "GetStats", "POST")):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            method,
            path,
            body=b"{}" if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 200, path
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "Set-Cookie" not in response.headers
    # A name rebound to 127.0.0.1 by another site does not reach the console.
    status, _, _ = post(port, "GetStats", headers={"Host": "evil.example:8051"})
    assert status == 421
    for host in ("localhost:1", "127.0.0.1", "[::1]:5"):
        assert post(port, "GetStats", headers={"Host": host})[0] == 200
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/static/../console.py")
    assert connection.getresponse().status == 404
    connection.close()


# -- authentication -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    from tests.conftest import settings_for

    url = f"sqlite:///{tmp_path_factory.mktemp('gwauth') / 'a.db'}"
    settings = settings_for(
        url, http_listen="127.0.0.1:0", auth_tokens=AUTH, max_watchers_per_principal=1
    )
    with ServerThread(settings) as running:
        yield _port(running)


def test_auth_tokens_and_rights(auth_port: int) -> None:
    status, body, _ = post(auth_port, "GetStats")
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")
    assert post(auth_port, "GetStats", headers=bearer("wrong"))[0] == 401
    assert post(auth_port, "GetStats", headers={"Authorization": "Basic eDp5"})[0] == 401

    mine = {**bearer(VIEWER), "Session-Id": "gw-alice"}
    status, body, _ = post(auth_port, "QueryPersons", {"name": "person 11"}, headers=mine)
    assert status == 200
    status, body, _ = post(auth_port, "ListSessions", headers=bearer(VIEWER))
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    _, info, _ = post(auth_port, "GetServerInfo", headers=bearer(VIEWER))
    assert info["settings"] == {}  # admins only
    _, stats, _ = post(auth_port, "GetStats", headers=bearer(VIEWER))
    assert "server" not in stats
    assert stats["principal"]["misses"] == "1"

    # The admin sees the session by its hash, and another principal's same id is its own.
    _, sessions, _ = post(auth_port, "ListSessions", headers=bearer(ADMIN))
    assert [s["id"][:2] for s in sessions["sessions"]] == ["h:"]
    _, info, _ = post(auth_port, "GetServerInfo", headers=bearer(ADMIN))
    assert info["settings"]["auth_tokens"] == "***"
    status, _, _ = post(
        auth_port, "ListCacheKeys", headers={**bearer(ADMIN), "Session-Id": "gw-alice"}
    )
    assert status == 404


# -- live events ---------------------------------------------------------------------------------


class EventStream:
    """``GET /api/events`` read frame by frame."""

    def __init__(self, port: int, query: str, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.connection.request("GET", f"/api/events?{query}", headers=headers or {})
        self.response = self.connection.getresponse()

    def frames(self) -> Iterator[tuple[str, dict[str, Any]]]:
        event = ""
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])

    def next(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event, data in self.frames():
            if event == kind:
                return data
            assert time.monotonic() < deadline, f"no {kind} frame in {timeout}s"
        raise AssertionError("the stream ended")

    def close(self) -> None:
        if self.connection.sock is not None:
            self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()


def test_events_and_stats_frames(server: ServerThread, port: int) -> None:
    stream = EventStream(port, "all=1&types=hit,miss")
    try:
        assert stream.response.status == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        first = stream.next("stats")
        assert "server" in first
        post(port, "QueryPersons", {"name": "person 12"}, headers={"Session-Id": "gw-live"})
        post(port, "QueryPersons", {"name": "person 12"}, headers={"Session-Id": "gw-live"})
        miss = stream.next("cache")
        assert (miss["type"], miss["session"]) == ("CACHE_EVENT_TYPE_MISS", "gw-live")
        hit = stream.next("cache")
        assert hit["type"] == "CACHE_EVENT_TYPE_HIT"
        assert hit["digest"] == miss["digest"]
        stats = stream.next("stats")
        assert int(stats["server"]["hits"]) >= 1
    finally:
        stream.close()
    running = server.running
    assert running is not None
    deadline = time.monotonic() + 10
    while running.servicer.watchers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running.servicer.watchers  # the slot is free once the client went


def test_events_refusals(port: int, auth_port: int) -> None:
    stream = EventStream(port, "types=hit,nope")
    assert stream.response.status == 400
    body = json.loads(stream.response.read())
    assert body["details"][0]["fieldViolations"][0]["field"] == "types[1]"
    stream.close()
    stream = EventStream(port, "session=<script>")
    assert stream.response.status == 400
    stream.close()

    anonymous = EventStream(auth_port, "stats=1")
    assert anonymous.response.status == 401
    anonymous.close()
    viewer = EventStream(auth_port, "all=1", bearer(VIEWER))
    assert viewer.response.status == 403
    viewer.close()
    # One stream per principal here: the second is RESOURCE_EXHAUSTED, 429.
    first = EventStream(auth_port, "session=gw-alice", bearer(VIEWER))
    try:
        assert first.response.status == 200
        second = EventStream(auth_port, "session=gw-alice", bearer(VIEWER))
        assert second.response.status == 429
        assert "max_watchers_per_principal" in json.loads(second.response.read())["message"]
        second.close()
        # Statistics only (no watch) take no watcher slot.
        only_stats = EventStream(auth_port, "", bearer(VIEWER))
        assert only_stats.response.status == 200
        assert "principal" in only_stats.next("stats")
        only_stats.close()
    finally:
        first.close()


# -- the address ------------------------------------------------------------------------------


def test_http_listen_default_alias_and_off() -> None:
    assert config.load([]).effective_http_listen() == config.DEFAULT_HTTP_LISTEN
    assert config.DEFAULT_HTTP_LISTEN.startswith("127.0.0.1:")
    alias = config.load(["--metrics-listen", "127.0.0.1:9999"])
    assert alias.effective_http_listen() == "127.0.0.1:9999"
    both = config.load(["--metrics-listen", "127.0.0.1:9999", "--http-listen", "127.0.0.1:1"])
    assert both.effective_http_listen() == "127.0.0.1:1"
    assert config.load(["--http-listen", "off"]).effective_http_listen() == ""
    assert config.load([], {"SESSCACHE_HTTP_LISTEN": ""}).effective_http_listen() == ""


def test_start_up_prints_the_console_address(tmp_path: Path) -> None:
    """With the default address (taken or not: then a free port), the log says where
    the console is, and it answers there."""
    env = {"SESSCACHE_HTTP_LISTEN": config.DEFAULT_HTTP_LISTEN}
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)]
    with Child(args, env=env) as process:
        line = next(line for line in process.lines if "console: http://127.0.0.1:" in line)
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        status, body, _ = post(port, "GetServerInfo")
        assert status == 200
        assert body["database_kind"] == "sqlite"


def test_stopping_server_ends_open_streams(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(f"sqlite:///{tmp_path}/stop.db", http_listen="127.0.0.1:0")
    watching = EventStream(_port(server), "all=1")
    stats_only = EventStream(_port(server), "")
    try:
        assert watching.next("stats")
        assert stats_only.next("stats")
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        assert watching.next("end")["reason"]
    finally:
        watching.close()
        stats_only.close()


def test_fast_json_is_json_format() -> None:
    """The live events' renderer gives exactly what json_format gives, for every message
    of the contract (flat ones rendered directly, the others by json_format)."""
    event = pb.CacheEvent(
        type=pb.CACHE_EVENT_TYPE_EVICT, session="s<b>", key="k" * 300, digest="ab", rows=2, lost=7
    )
    event.time.GetCurrentTime()
    unknown_enum = pb.CacheEvent(type=99)  # type: ignore[arg-type]
    samples: list[Any] = [event, unknown_enum, pb.SessionInfo(id="x", entries=3, size_bytes=2**40)]
    samples += [getattr(pb, name)() for name in pb.DESCRIPTOR.message_types_by_name]
    for message in samples:
        assert to_json_fast(message) == to_json(message), type(message).__name__
