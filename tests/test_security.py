"""Security: loopback by default, optional bearer tokens, private sessions, quiet logs, TLS.

Shows, through real servers (in a thread, or ``python -m sesscache_server`` children
whose log is read) and the real client:

- the server listens on 127.0.0.1 unless told otherwise;
- with tokens configured (``SESSCACHE_AUTH_TOKENS`` / ``--auth-tokens``, or
  ``--auth-tokens-file``) a call without a token, with an unknown token or
  with a malformed ``authorization`` header is UNAUTHENTICATED; health and
  reflection stay open; an admin token authenticates;
- sessions are private to their principal: bob naming alice's session id
  reaches a session of his own and can neither list nor end hers;
- tokens never reach the log, and session ids are logged as a short hash
  when authentication is on (in full when it is off);
- a malformed tokens file stops the server at start-up with a clear error,
  a non-zero exit status and no traceback;
- TLS (certificates made at run time with ``cryptography``: a CA, a server
  certificate for 127.0.0.1 and localhost, a client certificate, and a
  second, unrelated CA): a plaintext client and a client trusting the wrong
  CA are refused, a client trusting the right CA runs the README
  walk-through; with ``tls_client_ca`` a client without a certificate, or
  with one from the wrong CA, is refused and one with a valid certificate
  is accepted.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from harness.child import Child
from sesscache_client import Client, SessionNotFound, Unauthenticated, Unavailable
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_client.walkthrough import run as walk_through
from sesscache_server import config
from sesscache_server.keys import ServerKeys
from tests.conftest import settings_for
from tests.support.servers import ServerThread

TOKENS = "tok-a=alice,tok-b=bob,tok-admin=root:admin"
LOCAL = "local_session"
MakeServer = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for the module: nothing here depends on the database kind."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'sesscache.db'}"


def process_args(database_url: str, *extra: str) -> list[str]:
    return ["--listen=127.0.0.1:0", f"--database-url={database_url}", *extra]


# -- listening ----------------------------------------------------------------------------


def test_default_listen_address_is_loopback() -> None:
    assert config.Settings().listen == "127.0.0.1:50051"
    assert config.load([], environ={}).listen == "127.0.0.1:50051"
    assert "127.0.0.1:50051" in config.parser().format_help()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_server_started_without_listen_binds_loopback_only(sqlite_url: str) -> None:
    if "SESSCACHE_LISTEN" in os.environ:
        pytest.skip("SESSCACHE_LISTEN is set in this environment")
    if not _port_free(50051):
        pytest.skip("port 50051 is taken on this machine")
    process = Child([f"--database-url={sqlite_url}"]).start(wait=False)
    try:
        try:
            process.wait_serving(60)
        except RuntimeError as error:
            if "cannot listen" in str(error):
                pytest.skip("port 50051 was taken meanwhile")
            raise
        listening = [
            c.laddr
            for c in psutil.Process(process.process.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening
        ports = set()
        for address in listening:
            ip = ipaddress.ip_address(address.ip)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # a dual-stack socket bound to ::ffff:127.0.0.1
            assert str(ip) == "127.0.0.1"
            ports.add(address.port)
        # gRPC, and the web console's HTTP server (its default port, or a free one).
        assert 50051 in ports
        assert len(ports) == 2
        with Client("127.0.0.1:50051", timeout=10) as client:
            assert client.health() == "SERVING"
        others = [
            a.address
            for addresses in psutil.net_if_addrs().values()
            for a in addresses
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
        ]
        for address in others[:1]:  # not reachable from the machine's other interfaces
            with Client(f"{address}:50051", timeout=3) as outside, pytest.raises(Unavailable):
                outside.health()
    finally:
        assert process.stop() == 0


# -- authentication -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(sqlite_url: str) -> Iterator[ServerThread]:
    with ServerThread(settings_for(sqlite_url, auth_tokens=TOKENS)) as running:
        yield running


def test_calls_without_a_valid_token_are_unauthenticated(auth_server: ServerThread) -> None:
    for token in (None, "tok-wrong", "tok-a-but-longer", "TOK-A"):
        with Client(auth_server.target, timeout=10, token=token) as client:
            session = client.session("auth-refused")
            for call in (
                lambda s=session: s.query_persons(name="person 01"),
                session.list_cache_keys,
                session.end,
                lambda c=client: c.query_persons(name="person 01"),
            ):
                with pytest.raises(Unauthenticated) as refused:
                    call()
                if token is not None:
                    assert token not in str(refused.value)
    assert auth_server.running is not None
    assert auth_server.running.registry.get("auth-refused") is None


@pytest.mark.parametrize(
    "header",
    ["tok-a", "Basic tok-a", "Bearer", "Bearer ", "Bearer tok-a tok-b", "bearer-tok-a"],
)
def test_malformed_authorization_headers_are_unauthenticated(
    auth_server: ServerThread, header: str
) -> None:
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.QueryPersons(
                pb.QueryPersonsRequest(name="person 01"),
                metadata=(("authorization", header), ("session-id", "auth-malformed")),
                timeout=10,
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as twice:
            stub.QueryPersons(
                pb.QueryPersonsRequest(name="person 01"),
                metadata=(("authorization", "Bearer tok-a"), ("authorization", "Bearer tok-a")),
                timeout=10,
            )
        assert twice.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_sessions_are_private_to_their_principal(auth_server: ServerThread) -> None:
    with (
        Client(auth_server.target, timeout=10, token="tok-a") as alice,
        Client(auth_server.target, timeout=10, token="tok-b") as bob,
    ):
        hers = alice.session("shared-id")
        stored = hers.query_persons(name="person 10")
        assert stored.cache_status == pb.CACHE_STATUS_MISS

        his = bob.session("shared-id")
        with pytest.raises(SessionNotFound):
            his.list_cache_keys()
        ended = his.end()
        assert (ended.existed, ended.keys_dropped) == (False, 0)
        # Bob's query reaches a session of his own: a miss, not her entry.
        mine = his.query_persons(name="person 10")
        assert mine.cache_status == pb.CACHE_STATUS_MISS
        assert [e.key for e in his.list_cache_keys() if e.region == LOCAL] == [mine.cache_key]
        assert his.end().existed

        # Alice's session is still there with her entry, untouched by bob.
        (entry,) = [e for e in hers.list_cache_keys() if e.region == LOCAL]
        assert entry.key == stored.cache_key
        assert entry.hits == 0
        assert hers.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_HIT
        assert hers.end().existed


def test_an_admin_token_authenticates(auth_server: ServerThread) -> None:
    with Client(auth_server.target, timeout=10, token="tok-admin") as root:
        response = root.session("root-session").query_persons(name="person 02")
        assert [p.name for p in response.persons] == ["person 02"]
        assert root.session("root-session").end().existed


def test_health_and_reflection_need_no_token(auth_server: ServerThread) -> None:
    with Client(auth_server.target, timeout=10) as anonymous:
        assert anonymous.health() == "SERVING"
        assert anonymous.health("sesscache.v1.SessionCache") == "SERVING"
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        services = {s.name for s in answer.list_services_response.service}
        assert {"sesscache.v1.SessionCache", "grpc.health.v1.Health"} <= services


# -- what the log shows -------------------------------------------------------------------


def _calls_for_the_log(target: str, session_id: str) -> None:
    with Client(target, timeout=10, token="tok-a") as alice:
        session = alice.session(session_id)
        session.query_persons(name="person 03")
        session.list_cache_keys()
        session.end()
    for token in ("tok-wrong-secret", None):
        with Client(target, timeout=10, token=token) as stranger, pytest.raises(Unauthenticated):
            stranger.session(session_id).query_persons(name="person 03")


def test_tokens_never_logged_and_session_ids_hashed_with_auth_on(sqlite_url: str) -> None:
    session_id = "alice-private-session-4711"
    secret = "a-test-secret"
    process = Child(
        process_args(sqlite_url), env={"SESSCACHE_AUTH_TOKENS": TOKENS, "SESSCACHE_SECRET": secret}
    ).start()
    try:
        _calls_for_the_log(process.target, session_id)
    finally:
        assert process.stop() == 0
    log = process.log_text()
    for token in ("tok-a", "tok-b", "tok-admin", "tok-wrong-secret", "Bearer"):
        assert token not in log
    assert session_id not in log
    label = ServerKeys(secret).session_label(("alice", session_id))
    assert label.startswith("h:")
    assert label != ServerKeys("another-secret").session_label(("alice", session_id))
    assert label != ServerKeys(secret).session_label(("bob", session_id))
    assert f"QueryPersons session={label} status=OK" in log
    # Refused calls are logged too, before their session is looked at.
    assert "QueryPersons session=- status=UNAUTHENTICATED" in log


def test_session_ids_logged_in_full_with_auth_off(sqlite_url: str) -> None:
    process = Child(process_args(sqlite_url)).start()
    try:
        with Client(process.target, timeout=10) as client:
            client.session("open-session-0815").query_persons(name="person 03")
    finally:
        assert process.stop() == 0
    assert "QueryPersons session=open-session-0815 status=OK" in process.log_text()
    assert "session=h:" not in process.log_text()


def test_session_ids_not_logged_in_full_at_debug_level_with_auth_on(sqlite_url: str) -> None:
    process = Child(
        process_args(sqlite_url, "--log-level=debug", "--max-sessions=1"),
        env={"SESSCACHE_AUTH_TOKENS": TOKENS},
    ).start()
    try:
        with Client(process.target, timeout=10, token="tok-a") as alice:
            alice.session("alice-first-session").query_persons(name="person 01")
            alice.session("alice-second-session").query_persons(name="person 02")  # evicts
    finally:
        assert process.stop() == 0
    log = process.log_text()
    assert "evicted to make room" in log
    assert "alice-first-session" not in log


# -- tokens file --------------------------------------------------------------------------


def test_a_tokens_file_works(sqlite_url: str, make_server: MakeServer, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may call\nfile-tok-c=carol\n\nfile-tok-d=dave:admin  # ops\n")
    server = make_server(sqlite_url, auth_tokens_file=str(tokens))
    for token in ("file-tok-c", "file-tok-d"):
        with Client(server.target, timeout=10, token=token) as client:
            response = client.session("file-session").query_persons(name="person 04")
            assert [p.name for p in response.persons] == ["person 04"]
    with Client(server.target, timeout=10, token="tok-a") as client, pytest.raises(Unauthenticated):
        client.session("file-session").query_persons(name="person 04")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("good-tok=carol\nsecret-without-principal\n", "entry 2 is not TOKEN=PRINCIPAL"),
        ("secret-tok=carol:superuser\n", "entry 1 is not TOKEN=PRINCIPAL"),
        ("secret-tok=\n", "entry 1 is not TOKEN=PRINCIPAL"),
        (None, "No such file"),
    ],
)
def test_a_bad_tokens_file_stops_the_server_with_a_clear_error(
    sqlite_url: str, tmp_path: Path, content: str | None, problem: str
) -> None:
    tokens = tmp_path / "tokens"
    if content is not None:
        tokens.write_text(content)
    process = Child(process_args(sqlite_url, f"--auth-tokens-file={tokens}"))
    process.start(wait=False)
    code = process.wait(60)
    log = process.log_text()
    assert code != 0, log
    assert problem in log
    assert str(tokens) in log
    assert "Traceback" not in log
    assert "serving on" not in log
    assert "secret" not in log  # the file's content is not echoed


# -- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    key: bytes
    cert: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Pem]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signing_key, issuer_name = (
        (key, _name(subject)) if issuer is None else (issuer[0], issuer[1].subject)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    pem = Pem(
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert=cert.public_bytes(serialization.Encoding.PEM),
    )
    return key, cert, pem


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    wrong_ca: Pem
    wrong_client: Pem
    files: dict[str, str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca = _issue("sesscache test CA", None, ca=True)
    _, _, server = _issue("127.0.0.1", (ca_key, ca_cert), server=True)
    _, _, client = _issue("alice", (ca_key, ca_cert))
    wrong_key, wrong_cert, wrong_ca = _issue("some other CA", None, ca=True)
    _, _, wrong_client = _issue("mallory", (wrong_key, wrong_cert))
    files = {}
    for name, data in (
        ("ca.pem", ca.cert),
        ("server.pem", server.cert),
        ("server.key", server.key),
    ):
        path = directory / name
        path.write_bytes(data)
        files[name] = str(path)
    return Pki(ca, server, client, wrong_ca, wrong_client, files)


def test_tls_refuses_plaintext_and_the_wrong_ca_and_serves_the_right_one(
    sqlite_url: str, make_server: MakeServer, pki: Pki
) -> None:
    server = make_server(
        sqlite_url, tls_cert=pki.files["server.pem"], tls_key=pki.files["server.key"]
    )
    with Client(server.target, timeout=5) as plaintext, pytest.raises(Unavailable):
        plaintext.health()
    with (
        Client(server.target, timeout=5, root_certificates=pki.wrong_ca.cert) as fooled,
        pytest.raises(Unavailable),
    ):
        fooled.session("tls-wrong-ca").query_persons(name="person 10")
    with Client(server.target, timeout=10, root_certificates=pki.ca.cert) as trusted:
        assert trusted.health() == "SERVING"
        walk_through(trusted, "tls-walkthrough", "person 10")
    with Client(
        f"localhost:{server.target.rsplit(':', 1)[1]}", timeout=10, root_certificates=pki.ca.cert
    ) as by_name:
        assert by_name.health() == "SERVING"


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    sqlite_url: str, make_server: MakeServer, pki: Pki
) -> None:
    server = make_server(
        sqlite_url,
        tls_cert=pki.files["server.pem"],
        tls_key=pki.files["server.key"],
        tls_client_ca=pki.files["ca.pem"],
    )
    with (
        Client(server.target, timeout=5, root_certificates=pki.ca.cert) as anonymous,
        pytest.raises(Unavailable),
    ):
        anonymous.session("mtls-anonymous").query_persons(name="person 10")
    with (
        Client(
            server.target,
            timeout=5,
            root_certificates=pki.ca.cert,
            private_key=pki.wrong_client.key,
            certificate_chain=pki.wrong_client.cert,
        ) as stranger,
        pytest.raises(Unavailable),
    ):
        stranger.session("mtls-stranger").query_persons(name="person 10")
    assert server.running is not None
    assert server.running.registry.get("mtls-anonymous") is None
    assert server.running.registry.get("mtls-stranger") is None
    with Client(
        server.target,
        timeout=10,
        root_certificates=pki.ca.cert,
        private_key=pki.client.key,
        certificate_chain=pki.client.cert,
    ) as member:
        assert member.health() == "SERVING"
        walk_through(member, "mtls-walkthrough", "person 10")
