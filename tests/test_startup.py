"""Start-up and database failures a server must report plainly, as server children.

- A second server on a port already in use exits non-zero at once, naming
  the address, and the first keeps serving (gRPC's SO_REUSEPORT is off: two
  servers never share a port).
- A corrupt SQLite file: at start-up the server gives up with exit status 1
  and a log line naming the file; while serving, a miss gets
  FAILED_PRECONDITION (or UNAVAILABLE) naming the file, never INTERNAL, and
  no traceback reaches the log.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from harness.child import Child
from sesscache_client import Client
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc

GARBAGE = bytes(range(256)) * 64  # 16 KiB that no SQLite header starts with


def _args(database: Path, listen: str = "127.0.0.1:0") -> list[str]:
    return [
        "--listen",
        listen,
        "--database-url",
        f"sqlite:///{database}",
        "--db-startup-attempts",
        "2",
        "--db-startup-max-backoff",
        "0.2",
        "--grace",
        "1",
    ]


def test_a_second_server_on_a_taken_port_exits_at_once(tmp_path: Path) -> None:
    with Child(_args(tmp_path / "first.db")) as first:
        address = first.target
        second = Child(_args(tmp_path / "second.db", listen=address))
        started = time.monotonic()
        second.start(wait=False)
        try:
            code = second.wait(timeout=30)
        finally:
            second.stop()
        assert code != 0, second.log_text()
        assert time.monotonic() - started < 20
        assert f"{address} is already in use" in second.log_text()
        assert "sesscache serving on" not in second.log_text()
        assert "Traceback" not in second.log_text()
        with Client(address, timeout=10) as client:
            assert client.health() == "SERVING"
            assert client.session().query_persons(name="person 10").persons
        assert first.process.poll() is None


def test_a_corrupt_sqlite_file_at_start_up_is_named(tmp_path: Path) -> None:
    database = tmp_path / "corrupt.db"
    database.write_bytes(GARBAGE)
    server = Child(_args(database))
    server.start(wait=False)
    code = server.wait(timeout=60)
    log = server.log_text()
    assert code == 1, log
    assert f"giving up: the SQLite database file {database} is corrupt" in log
    assert "Traceback" not in log


def test_a_sqlite_file_corrupted_while_serving_is_named(tmp_path: Path) -> None:
    database = tmp_path / "live.db"
    with Child(_args(database)) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.SessionCacheStub(channel)
        try:
            stub.QueryPersons(
                pb.QueryPersonsRequest(name="person 1"),
                metadata=(("session-id", "before"),),
                timeout=10,
            )
            # The same files, their bytes overwritten: the database and, in WAL
            # mode, its log and index (where the seeded rows still are).
            for part in ("", "-wal", "-shm"):
                path = database.with_name(database.name + part)
                if path.exists():
                    size = path.stat().st_size
                    with path.open("r+b") as handle:
                        handle.write((GARBAGE * (size // len(GARBAGE) + 1))[:size])
            failures = []
            for attempt in range(3):
                with pytest.raises(grpc.RpcError) as failed:
                    stub.QueryPersons(
                        pb.QueryPersonsRequest(name=f"person {attempt + 2}"),
                        metadata=(("session-id", f"after-{attempt}"),),
                        timeout=10,
                    )
                error = failed.value
                code = error.code()
                assert code in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.UNAVAILABLE,
                ), (code, (error.details() or ""))
                failures.append(code)
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    assert str(database) in (error.details() or "")
            assert grpc.StatusCode.FAILED_PRECONDITION in failures
        finally:
            channel.close()
        assert server.stop() == 0
    log = server.log_text()
    assert "Traceback" not in log
    assert "unexpected error" not in log
