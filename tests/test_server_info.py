"""What a server says about itself: GetServerInfo, ``--version``, reflection v1.

GetServerInfo gives the version, uptime, Python and library versions, the
database (password masked), the effective settings (secrets masked; admins
only) and the replica; ``python -m sesscache_server --version`` prints the version;
reflection answers under ``grpc.reflection.v1`` as well as ``v1alpha``, and
resolves the error-detail types statuses carry (``google.rpc.BadRequest``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

import sesscache
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.config import mask_url
from sesscache_server.reflection import V1_SERVICE_NAME
from tests.support.cli import run_cli
from tests.support.servers import ROOT, ServerThread

TOKENS = "tok-a=alice,tok-root=root:admin"


def info_of(target: str, token: str = "") -> pb.ServerInfo:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)
        return stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata, timeout=10)


@pytest.fixture
def auth_server(make_server: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    return make_server(f"sqlite:///{tmp_path}/info.db", auth_tokens=TOKENS, secret="s3cret-value")


def test_server_info_tells_version_uptime_database_and_masked_settings(
    auth_server: ServerThread,
) -> None:
    info = info_of(auth_server.target, "tok-root")
    assert info.version == sesscache.__version__
    assert info.uptime.ToNanoseconds() >= 0
    assert info.started.seconds > 0
    assert info.python_version.startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert info.library_versions["grpcio"] == grpc.__version__
    assert info.library_versions["SQLAlchemy"]
    assert info.database_kind == "sqlite"
    assert info.database_url.startswith("sqlite:///")
    assert ":" in info.replica
    assert info.settings["auth_tokens"] == "***"
    assert info.settings["secret"] == "***"
    assert "s3cret-value" not in str(info)
    assert "tok-a" not in str(info)
    assert info.settings["max_sessions"] == "10000"
    assert info.settings["listen"] == "127.0.0.1:0"


def test_non_admins_get_no_settings(auth_server: ServerThread) -> None:
    info = info_of(auth_server.target, "tok-a")
    assert info.version == sesscache.__version__
    assert not info.settings


def test_passwords_in_urls_are_masked() -> None:
    assert (
        mask_url("postgresql+psycopg://user:pw@host/db") == "postgresql+psycopg://user:***@host/db"
    )
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("sqlite:///data/x.db") == "sqlite:///data/x.db"
    assert mask_url("redis://host:6379") == "redis://host:6379"


def test_version_flag_prints_the_version() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sesscache_server", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"sesscache {sesscache.__version__}"


def _reflect(target: str, service: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(iter(call(iter([request]), timeout=10)))


@pytest.mark.parametrize("service", ["grpc.reflection.v1alpha.ServerReflection", V1_SERVICE_NAME])
def test_reflection_v1_and_v1alpha_list_services_and_resolve_bad_request(
    server: ServerThread, service: str
) -> None:
    listed = _reflect(
        server.target, service, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {entry.name for entry in listed.list_services_response.service}
    assert {"sesscache.v1.SessionCache", V1_SERVICE_NAME} <= names
    found = _reflect(
        server.target,
        service,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.BadRequest"),
    )
    assert found.WhichOneof("message_response") == "file_descriptor_response"
    assert found.file_descriptor_response.file_descriptor_proto


def test_cli_info_prints_the_server_info(
    auth_server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, auth_server, "--token", "tok-root", "info")
    assert status == 0, err
    pairs = [line.split(None, 1) for line in out.splitlines() if line and line[0] != " "]
    lines = dict(pair for pair in pairs if len(pair) == 2)
    assert lines["version"].strip() == sesscache.__version__
    assert lines["database"].startswith("sqlite")
    assert lines["uptime"].startswith("0:00:")
    assert "  auth_tokens" in out
    assert "s3cret-value" not in out
