"""Unit tests of the sesscache client and CLI against a fake, in-process gRPC server.

The server is a real ``grpc.server`` on 127.0.0.1 with :class:`FakeSessionCache`, a
servicer written here that records the metadata and requests it receives and
answers with canned persons, paging and errors. No database, no real sesscache
server: the tests check what the client sends and how it reads the answers.

Triggers understood by the fake's QueryPersons: ``page_size < 0`` aborts with a
BadRequest on ``page_size``; ``name="abort:<CODE>"`` aborts with that status code;
``name="sleep"`` sleeps 0.2 s.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

import sesscache_client
from sesscache_client import (
    Client,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    SesscacheError,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from sesscache_client.cli import format_table, main
from sesscache_client.v1 import sesscache_pb2, sesscache_pb2_grpc

FAKE_PAGE_SIZE = 2


def _address(i: int, city: str) -> sesscache_pb2.Address:
    return sesscache_pb2.Address(
        id=i, street=f"{i} Main Street", postal_code=f"1000{i}", city=city, country="DE"
    )


PERSONS = [
    sesscache_pb2.Person(
        id=1, name="person 1", addresses=[_address(1, "Berlin"), _address(2, "Hamburg")]
    ),
    sesscache_pb2.Person(id=2, name="person 2", addresses=[_address(3, "Munich")]),
    sesscache_pb2.Person(id=3, name="person 3"),
    sesscache_pb2.Person(id=4, name="person 4", addresses=[_address(4, "Cologne")]),
    sesscache_pb2.Person(id=5, name="person 5", addresses=[_address(5, "Bonn")]),
]


@dataclass
class Call:
    """One call the fake received."""

    method: str
    metadata: dict[str, str]
    request: object


def _abort_bad_request(context: grpc.ServicerContext, field: str, description: str) -> None:
    detail = any_pb2.Any()
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}", details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))


@dataclass
class FakeSessionCache(sesscache_pb2_grpc.SessionCacheServicer):
    """A servicer with sesscache's semantics in miniature, recording every call."""

    calls: list[Call] = field(default_factory=list)
    sessions: dict[str, list[sesscache_pb2.CacheEntry]] = field(default_factory=dict)
    #: When set, EndSession aborts with this code.
    end_error: grpc.StatusCode | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, method: str, request: object, context: grpc.ServicerContext) -> str | None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        with self.lock:
            self.calls.append(Call(method, metadata, request))
        return metadata.get("session-id")

    def calls_of(self, method: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.method == method]

    def QueryPersons(
        self, request: sesscache_pb2.QueryPersonsRequest, context: grpc.ServicerContext
    ) -> sesscache_pb2.QueryPersonsResponse:
        session_id = self._record("QueryPersons", request, context)
        if request.page_size < 0:
            _abort_bad_request(context, "page_size", "must not be negative")
        if request.name.startswith("abort:"):
            context.abort(grpc.StatusCode[request.name.removeprefix("abort:")], "fake abort")
        if request.name == "sleep":
            time.sleep(0.2)
        matches = [p for p in PERSONS if not request.ids or p.id in request.ids]
        offset = int(request.page_token or "0")
        size = request.page_size or FAKE_PAGE_SIZE
        page = matches[offset : offset + size]
        if request.view == sesscache_pb2.PERSON_VIEW_BASIC:
            page = [sesscache_pb2.Person(id=p.id, name=p.name) for p in page]
        response = sesscache_pb2.QueryPersonsResponse(persons=page)
        if offset + size < len(matches):
            response.next_page_token = str(offset + size)
        if request.bypass_cache:
            response.cache_status = sesscache_pb2.CACHE_STATUS_BYPASS
            response.sql_statements = 1
            return response
        response.cache_key = f"persons:ids={list(request.ids)}:offset={offset}:size={size}"
        with self.lock:
            entries = self.sessions.setdefault(session_id or "throwaway", [])
            if any(entry.key == response.cache_key for entry in entries):
                response.cache_status = sesscache_pb2.CACHE_STATUS_HIT
            else:
                response.cache_status = sesscache_pb2.CACHE_STATUS_MISS
                response.sql_statements = 1
                entries.append(make_entry(response.cache_key, rows=len(page)))
            if session_id is None:
                del self.sessions["throwaway"]
        return response

    def ListCacheKeys(
        self, request: sesscache_pb2.ListCacheKeysRequest, context: grpc.ServicerContext
    ) -> sesscache_pb2.ListCacheKeysResponse:
        session_id = self._record("ListCacheKeys", request, context)
        with self.lock:
            entries = self.sessions.get(session_id) if session_id is not None else None
            if entries is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "session not found")
            offset = int(request.page_token or "0")
            size = request.page_size or FAKE_PAGE_SIZE
            response = sesscache_pb2.ListCacheKeysResponse(
                entries=entries[offset : offset + size], total_size=len(entries)
            )
            if offset + size < len(entries):
                response.next_page_token = str(offset + size)
            return response

    def EndSession(
        self, request: sesscache_pb2.EndSessionRequest, context: grpc.ServicerContext
    ) -> sesscache_pb2.EndSessionResponse:
        session_id = self._record("EndSession", request, context)
        if self.end_error is not None:
            context.abort(self.end_error, "fake end failure")
        with self.lock:
            entries = self.sessions.pop(session_id, None) if session_id is not None else None
        if entries is None:
            return sesscache_pb2.EndSessionResponse(existed=False)
        return sesscache_pb2.EndSessionResponse(existed=True, keys_dropped=len(entries))


def make_entry(key: str, *, rows: int = 1, size_bytes: int = 512) -> sesscache_pb2.CacheEntry:
    return sesscache_pb2.CacheEntry(
        key=key,
        digest=f"d{abs(hash(key)) % 10**8:08d}",
        region="local_session",
        rows=rows,
        stored_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        hits=0,
        size_bytes=size_bytes,
    )


@dataclass
class Served:
    """A running fake server."""

    target: str
    fake: FakeSessionCache
    health: health.HealthServicer


@contextlib.contextmanager
def _serve(credentials: grpc.ServerCredentials | None = None) -> Iterator[Served]:
    # Only the RPCs the client calls are faked; the rest answer UNIMPLEMENTED.
    fake = FakeSessionCache()  # type: ignore[abstract]
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(sesscache_client.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.server(pool)
        sesscache_pb2_grpc.add_SessionCacheServicer_to_server(fake, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("localhost:0", credentials)
        server.start()
        try:
            yield Served(f"localhost:{port}", fake, health_servicer)
        finally:
            server.stop(None).wait()


@pytest.fixture
def served() -> Iterator[Served]:
    with _serve() as running:
        yield running


@pytest.fixture
def api(served: Served) -> Iterator[Client]:
    with Client(served.target, timeout=5) as c:
        yield c


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Metadata and requests.


def test_session_calls_send_session_id(api: Client, served: Served) -> None:
    session = api.session("abc-1.2_3~")
    session.query_persons(ids=[1])
    session.list_cache_keys()
    session.end()
    calls = served.fake.calls
    assert [c.method for c in calls] == ["QueryPersons", "ListCacheKeys", "EndSession"]
    assert all(c.metadata["session-id"] == "abc-1.2_3~" for c in calls)
    assert all("authorization" not in c.metadata for c in calls)


def test_sessionless_query_sends_no_session_id(api: Client, served: Served) -> None:
    response = api.query_persons(ids=[2])
    assert [p.name for p in response.persons] == ["person 2"]
    assert "session-id" not in served.fake.calls[0].metadata


def test_token_is_sent_as_bearer_and_kept_out_of_repr(served: Served) -> None:
    with Client(served.target, token="s3cret-token") as c:
        c.session("s").query_persons()
        c.query_persons()
        assert c.health() == "SERVING"
        assert "s3cret" not in repr(c)
    assert [call.metadata["authorization"] for call in served.fake.calls] == [
        "Bearer s3cret-token",
        "Bearer s3cret-token",
    ]


def test_query_request_is_built_from_keywords(api: Client, served: Served) -> None:
    api.session("s").query_persons(
        name="person 1",
        name_first="person 1",
        name_last="person 3",
        ids=[1, 3],
        bypass_cache=True,
        page_size=7,
        page_token="0",
        view="basic",
    )
    api.query_persons(view=sesscache_pb2.PERSON_VIEW_FULL)
    full, default = (c.request for c in served.fake.calls_of("QueryPersons"))
    assert full == sesscache_pb2.QueryPersonsRequest(
        name="person 1",
        name_range=sesscache_pb2.NameRange(first="person 1", last="person 3"),
        ids=[1, 3],
        bypass_cache=True,
        page_size=7,
        page_token="0",
        view=sesscache_pb2.PERSON_VIEW_BASIC,
    )
    assert isinstance(default, sesscache_pb2.QueryPersonsRequest)
    assert not default.HasField("name_range")
    assert default.view == sesscache_pb2.PERSON_VIEW_FULL


def test_cache_status_and_iteration_over_pages(api: Client, served: Served) -> None:
    session = api.session("s")
    first = session.query_persons()
    again = session.query_persons()
    assert first.cache_status == sesscache_pb2.CACHE_STATUS_MISS
    assert again.cache_status == sesscache_pb2.CACHE_STATUS_HIT
    assert first.next_page_token == "2"
    assert [p.id for p in session.iter_persons()] == [1, 2, 3, 4, 5]
    assert [p.id for p in api.iter_persons(page_token="2")] == [3, 4, 5]
    requests = [c.request for c in served.fake.calls_of("QueryPersons")]
    tokens = [r.page_token for r in requests if isinstance(r, sesscache_pb2.QueryPersonsRequest)]
    assert tokens == ["", "", "", "2", "4", "2", "4"]


def test_list_cache_keys_follows_every_page(api: Client, served: Served) -> None:
    served.fake.sessions["s"] = [make_entry(f"k{i}") for i in range(5)]
    entries = api.session("s").list_cache_keys()
    assert [e.key for e in entries] == ["k0", "k1", "k2", "k3", "k4"]
    requests = [c.request for c in served.fake.calls_of("ListCacheKeys")]
    assert requests == [
        sesscache_pb2.ListCacheKeysRequest(),
        sesscache_pb2.ListCacheKeysRequest(page_token="2"),
        sesscache_pb2.ListCacheKeysRequest(page_token="4"),
    ]
    assert len(api.session("s").list_cache_keys(page_size=10)) == 5


# Sessions.


def test_session_context_manager_ends_the_session(api: Client, served: Served) -> None:
    with api.session() as session:
        session.query_persons()
        assert session.id in served.fake.sessions
    assert session.id not in served.fake.sessions
    (end,) = served.fake.calls_of("EndSession")
    assert end.metadata["session-id"] == session.id


def test_end_reports_existence_and_dropped_keys(api: Client) -> None:
    session = api.session("s")
    session.query_persons()
    session.query_persons(page_token="2")
    assert session.end() == sesscache_pb2.EndSessionResponse(existed=True, keys_dropped=2)
    assert session.end() == sesscache_pb2.EndSessionResponse(existed=False)


def test_session_exit_keeps_the_blocks_error(api: Client, served: Served) -> None:
    served.fake.end_error = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(KeyError), api.session():
        raise KeyError("from the block")


def test_session_exit_suppresses_only_a_gone_session(api: Client, served: Served) -> None:
    served.fake.end_error = grpc.StatusCode.UNAVAILABLE
    with api.session():
        pass
    served.fake.end_error = grpc.StatusCode.NOT_FOUND
    with api.session():
        pass
    served.fake.end_error = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied), api.session():
        pass


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "é", "a/b", "tab\t"])
def test_invalid_session_id_is_rejected_locally(api: Client, served: Served, bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        api.session(bad)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field_violations[0][0] == "session-id"
    assert "[A-Za-z0-9._~-]" in str(caught.value)
    assert served.fake.calls == []


def test_generated_and_edge_session_ids_are_valid(api: Client) -> None:
    ids = {api.session().id for _ in range(50)}
    assert len(ids) == 50
    assert all(sesscache_client.validate_session_id(i) == i for i in ids)
    assert api.session("A" * 128).id == "A" * 128
    assert api.session("._~-").id == "._~-"


# Error mapping.


def test_bad_request_becomes_invalid_argument(api: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        api.session("s").query_persons(page_size=-1)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == [("page_size", "must not be negative")]
    assert str(error) == "INVALID_ARGUMENT: page_size: must not be negative"
    assert error.details[0].TypeName() == "google.rpc.BadRequest"
    assert isinstance(error.__cause__, grpc.RpcError)
    assert isinstance(error, ValueError)


def test_not_found_becomes_session_not_found(api: Client) -> None:
    with pytest.raises(SessionNotFound) as caught:
        api.session("never-used").list_cache_keys()
    text = str(caught.value)
    assert text.startswith("NOT_FOUND: session 'never-used': session not found (")
    assert "server process" in text
    assert "restarted" in text
    assert caught.value.session_id == "never-used"


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    ],
)
def test_status_codes_map_to_exceptions(
    api: Client, code: grpc.StatusCode, error_type: type[SesscacheError]
) -> None:
    with pytest.raises(error_type) as caught:
        api.query_persons(name=f"abort:{code.name}")
    assert type(caught.value) is error_type
    assert caught.value.code is code
    assert caught.value.message == "fake abort"
    assert str(caught.value) == f"{code.name}: fake abort"
    assert caught.value.retryable is (code is grpc.StatusCode.UNAVAILABLE)


def test_timeout_is_applied(served: Served) -> None:
    with Client(served.target, timeout=0.05) as c, pytest.raises(DeadlineExceeded):
        c.query_persons(name="sleep")


def test_unreachable_server_is_unavailable() -> None:
    with Client(f"127.0.0.1:{_unused_port()}", timeout=5) as c, pytest.raises(Unavailable):
        c.query_persons()


def test_bare_rpc_error_is_a_server_error() -> None:
    error = sesscache_client.from_rpc_error(grpc.RpcError())
    assert type(error) is ServerError
    assert error.code is grpc.StatusCode.UNKNOWN


# Client lifecycle and arguments.


def test_close_leaves_an_injected_channel_open(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        borrowed = Client(channel=channel)
        borrowed.query_persons()
        borrowed.close()
        assert borrowed.closed
        with pytest.raises(RuntimeError, match="closed"):
            borrowed.query_persons()
        with Client(channel=channel) as again:
            assert again.health() == "SERVING"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"private_key": b"k"}, "together"),
        ({"channel": "x", "root_certificates": b"ca"}, "not both"),
        ({"token": "bad token\n"}, "token"),
    ],
)
def test_client_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Client(**kwargs)  # type: ignore[arg-type]
    assert "bad token" not in str(caught.value)


def test_health_statuses(api: Client, served: Served) -> None:
    assert api.health() == "SERVING"
    served.health.set(sesscache_client.SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert api.health(sesscache_client.SERVICE_NAME) == "NOT_SERVING"
    assert api.health("no.such.Service") == "SERVICE_UNKNOWN"


def _self_signed(common_name: str) -> tuple[bytes, bytes]:
    """A PEM (certificate, private key) valid for localhost and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def test_mutual_tls_client_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server_cert, server_key = _self_signed("localhost")
    client_cert, client_key = _self_signed("sesscache client")
    credentials = grpc.ssl_server_credentials(
        [(server_key, server_cert)], root_certificates=client_cert, require_client_auth=True
    )
    with _serve(credentials) as served:
        with Client(
            served.target,
            root_certificates=server_cert,
            private_key=client_key,
            certificate_chain=client_cert,
        ) as c:
            assert c.health() == "SERVING"
            assert "tls=True" in repr(c)
        files = {"ca": server_cert, "cert": client_cert, "key": client_key}
        for name, data in files.items():
            (tmp_path / f"{name}.pem").write_bytes(data)
        tls = ["--tls-ca", str(tmp_path / "ca.pem")]
        tls += ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
        assert main(["--target", served.target, *tls, "health"]) == 0
        assert capsys.readouterr().out == "SERVING\n"
        # Without a client certificate the handshake fails.
        assert (
            main(["--target", served.target, "--tls-ca", str(tmp_path / "ca.pem"), "health"]) == 4
        )
        assert capsys.readouterr().err.startswith(
            f"error: cannot reach the server at {served.target}"
        )


# The command line tool.


def run(served: Served, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["--target", served.target, "--timeout", "5", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_query_prints_a_table_and_the_cache_status(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(served, capsys, "query", "--session", "cli", "--page-size", "3")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STREET", "POSTAL", "CODE", "CITY", "COUNTRY"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["1", "person", "1", "1", "Main", "Street", "10001", "Berlin", "DE"]
    assert lines[3].split() == ["2", "Main", "Street", "10002", "Hamburg", "DE"]
    assert lines[5].split() == ["3", "person", "3"]
    key = "persons:ids=[]:offset=0:size=3"
    digest = sesscache_client.cache_digest(key)
    assert lines[6] == f"cache: MISS  sql statements: 1  digest: {digest}  key: {key}"
    assert lines[7] == "next page token: 3"
    assert served.fake.calls[0].metadata["session-id"] == "cli"

    status, out, _ = run(served, capsys, "query", "--session", "cli", "--page-size", "3")
    assert "cache: HIT  sql statements: 0  digest: " in out


def test_cli_query_options(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "--session", "cli", "--id", "2", "4", "--id", "5", "--basic"]
    status, out, _ = run(served, capsys, *argv, "--bypass-cache", "--first", "a", "--last", "z")
    assert status == 0
    assert out.splitlines()[0].split() == ["ID", "NAME"]
    assert "cache: BYPASS  sql statements: 1  digest: -  key: -" in out
    assert "next page token: 2" in out
    request = served.fake.calls[0].request
    assert request == sesscache_pb2.QueryPersonsRequest(
        ids=[2, 4, 5],
        bypass_cache=True,
        view=sesscache_pb2.PERSON_VIEW_BASIC,
        name_range=sesscache_pb2.NameRange(first="a", last="z"),
    )
    status, out, _ = run(served, capsys, "query", "--session", "cli", "--id", "99")
    assert (status, out.splitlines()[0]) == (0, "no persons")


def test_cli_query_invalid_argument_exits_5(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(served, capsys, "query", "--session", "cli", "--page-size", "-1")
    assert (status, out) == (5, "")
    assert err == "error: INVALID_ARGUMENT: page_size: must not be negative\n"
    status, out, err = run(served, capsys, "query", "--session", "bad id")
    assert status == 5
    assert err.startswith("error: INVALID_ARGUMENT: session-id: must be 1 to 128 characters")


def test_cli_server_errors_exit_by_kind(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(served, capsys, "query", "--session", "s", "--name", "abort:UNAVAILABLE")
    assert (status, out, err) == (4, "", "error: UNAVAILABLE: fake abort\n")
    status, out, err = run(served, capsys, "keys", "--session", "gone")
    assert (status, out) == (3, "")
    assert err.startswith("error: NOT_FOUND: session 'gone': session not found (sessions live")
    assert err.count("\n") == 1


def test_cli_keys_prints_the_entries(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.fake.sessions["k"] = [
        make_entry("first key", rows=3, size_bytes=2048),
        make_entry("second\nkey", rows=10),
        make_entry("third key"),
    ]
    served.fake.sessions["k"][1].ClearField("stored_at")
    status, out, _ = run(served, capsys, "keys", "--session", "k")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DIGEST", "REGION", "ROWS", "STORED", "AT", "HITS", "SIZE"]
    digest = served.fake.sessions["k"][0].digest
    expected = [digest, "local_session", "3", "2023-11-14", "22:13:20Z", "0", "2.0", "KiB"]
    assert lines[2].split() == expected
    assert lines[3].split()[3:] == ["-", "0", "512", "B"]
    assert lines[-1] == "entries: 3"
    assert len(served.fake.calls_of("ListCacheKeys")) == 2

    status, out, _ = run(served, capsys, "keys", "--session", "k", "--full-keys")
    assert out.splitlines()[0].startswith("KEY ")
    assert "second key" in out

    served.fake.sessions["empty"] = []
    status, out, _ = run(served, capsys, "keys", "--session", "empty")
    assert (status, out) == (0, "no cache entries\n")


def test_cli_end(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.fake.sessions["e"] = [make_entry("a"), make_entry("b")]
    status, out, _ = run(served, capsys, "end", "--session", "e")
    assert (status, out) == (0, "session: e  existed: yes  keys dropped: 2\n")
    status, out, _ = run(served, capsys, "end", "--session", "e")
    assert (status, out) == (0, "session: e  existed: no  keys dropped: 0\n")


def test_cli_health_exit_status(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(served, capsys, "health") == (0, "SERVING\n", "")
    served.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run(served, capsys, "health") == (1, "NOT_SERVING\n", "")
    assert run(served, capsys, "health", "--service", sesscache_client.SERVICE_NAME)[:2] == (
        0,
        "SERVING\n",
    )
    assert run(served, capsys, "health", "--service", "nope")[:2] == (1, "SERVICE_UNKNOWN\n")


def test_cli_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", f"127.0.0.1:{_unused_port()}", "health"]) == 4
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: cannot reach the server at 127.0.0.1:")
    assert err.count("\n") == 1


def test_cli_environment(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSCACHE_TARGET", served.target)
    monkeypatch.setenv("SESSCACHE_TOKEN", "env-token")
    assert main(["query", "--session", "env"]) == 0
    assert served.fake.calls[0].metadata["authorization"] == "Bearer env-token"
    assert main(["--token", "flag-token", "end", "--session", "env"]) == 0
    assert served.fake.calls[1].metadata["authorization"] == "Bearer flag-token"
    assert "env-token" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["query"], "required: --session"),
        (["--timeout", "0", "health"], "must be positive"),
        (
            ["--tls-cert", "c.pem", "health"],
            "error: --tls-cert and --tls-key must be given together",
        ),
        (["--tls-ca", "/nonexistent/ca.pem", "health"], "error: cannot read --tls-ca"),
        (["--token", "two words", "health"], "error: token must be"),
    ],
)
def test_cli_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "SESSCACHE_TARGET" in capsys.readouterr().out


def test_format_table() -> None:
    table = format_table(["ID", "NAME"], [["7", "a\tb"], ["123", "c"]], right={0})
    assert table.splitlines() == [" ID  NAME", "---  ----", "  7  a b", "123  c"]


@pytest.mark.parametrize(
    ("message", "connection_failed"),
    [
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
         "Failed to connect to remote host: connect: Connection refused (111)", True),
        ("errors resolving nosuch.invalid:50051: [field:hostname lookup error:address lookup "
         "failed for nosuch.invalid:50051: Domain name not found]", True),
        ("the database is unavailable right now; cached results of existing sessions are "
         "still served; retry later", False),
        ("fake abort", False),
    ],
)  # fmt: skip
def test_unavailable_tells_a_connection_failure_from_the_server(
    message: str, connection_failed: bool
) -> None:
    assert sesscache_client.Unavailable(message).connection_failed is connection_failed
