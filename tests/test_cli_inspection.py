"""The inspection commands of ``python -m sesscache_client`` against a real server.

``stats``, ``sessions``, ``invalidate``, ``watch`` and the filters of ``keys``,
run in-process through :func:`sesscache_client.cli.main` (output read with capsys)
against a real in-process server on SQLite: what each prints, and that bad
command lines are usage errors (exit 2) and refused calls one-line errors
with the exit status of their kind (``EXIT_CODES``); ``--json`` output of
every command; ``stats --interval`` / ``top``.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sesscache_client.cli
from sesscache.fixtures import person_name
from sesscache_client import Client, cache_digest, enum_name, with_default_port
from sesscache_client.cli import (
    EXIT_CODES,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_INVALID_ARGUMENT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_RESOURCE_EXHAUSTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)
from sesscache_client.v1 import sesscache_pb2
from tests.conftest import settings_for
from tests.support.cli import run_cli as cli
from tests.support.servers import ROOT, ServerThread

MakeServer = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('cli-inspection') / 'sesscache.db'}"


@pytest.fixture(scope="module")
def server(sqlite_url: str) -> Iterator[ServerThread]:
    """The module's server (SQLite: the commands do not depend on the database)."""
    with ServerThread(settings_for(sqlite_url)) as running:
        yield running


def table(out: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell (the header row too)."""
    return {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line}


def test_stats(capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str) -> None:
    with Client(server.target) as client:
        session = client.session(session_id)
        session.query_persons(name=person_name(1), view="basic")
        session.query_persons(name=person_name(1), view="basic")

    status, out, err = cli(capsys, server, "stats", "--session", session_id)
    assert (status, err) == (EXIT_OK, "")
    rows = table(out)
    assert rows["STATISTIC"] == ["STATISTIC", "SESSION", "SERVER"]
    assert rows["hits"][:2] == ["hits", "1"]
    assert rows["misses"][:2] == ["misses", "1"]
    assert rows["hit ratio"][2] == "50.0%"
    assert rows["sql saved by hits"][4] == "1"
    assert rows["entries"][1] == "1"
    assert rows["sessions"][1] == "-", "no session count for one session"
    since = next(line for line in out.splitlines() if line.startswith("since"))
    assert re.fullmatch(r"since\s+\d{4}-.*Z\s+\d{4}-.*Z", since)
    assert "change feed: connected" in out, "the feed's figures follow the table"

    status, out, _ = cli(capsys, server, "stats")
    assert status == EXIT_OK
    assert table(out)["STATISTIC"] == ["STATISTIC", "SERVER"]
    assert int(table(out)["sessions"][1]) >= 1

    status, out, _ = cli(capsys, server, "stats", "--session", session_id, "--reset")
    assert status == EXIT_OK
    assert table(out)["STATISTIC"] == ["STATISTIC", "SESSION", "(BEFORE", "RESET)"]
    assert table(out)["hits"] == ["hits", "1"]
    assert "entries" not in table(out), "a reset's 'before' holds counters only"
    assert out.endswith(f"session {session_id}: statistics reset\n")
    _, out, _ = cli(capsys, server, "stats", "--session", session_id)
    assert table(out)["hits"][1] == "0"

    status, out, err = cli(capsys, server, "stats", "--reset")
    assert (status, out) == (EXIT_USAGE, "")
    assert err == "error: --reset needs --session ID or --server\n"
    status, _, err = cli(capsys, server, "stats", "--session", f"{session_id}-none")
    assert status == EXIT_NOT_FOUND
    assert err.startswith("error: NOT_FOUND: ")
    assert err.count("\n") == 1


def test_sessions_and_ending_idle_ones(
    capsys: pytest.CaptureFixture[str], make_server: MakeServer, sqlite_url: str
) -> None:
    own = make_server(sqlite_url)
    with Client(own.target) as client:
        for name, number in (("cli-a", 1), ("cli-b", 2)):
            client.session(name).query_persons(name=person_name(number))
        client.session("cli-a").query_persons(name=person_name(1))

    status, out, err = cli(capsys, own, "sessions")
    assert (status, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "HANDLE", "PEER", "CREATED", "LAST", "ACTIVE", "ENTRIES", "SIZE", "HITS", "MISSES",
        "CALLS",
    ]  # fmt: skip
    (a,) = [line.split() for line in lines[2:4] if line.startswith("cli-a ")]
    assert {line.split()[0] for line in lines[2:4]} == {"cli-a", "cli-b"}
    assert a[2].startswith("ipv4:127.0.0.1:")
    assert re.fullmatch(r"\d+\.\ds", a[5])
    assert a[6] == "ago"
    assert (a[7], a[10], a[11], a[12]) == ("1", "1", "1", "0"), "entries, hits, misses, calls"
    assert lines[-1] == "sessions: 2"

    time.sleep(0.3)
    status, out, _ = cli(capsys, own, "sessions", "--end-idle", "0.25")
    assert status == EXIT_OK
    assert out == (
        "ended 2 session(s) idle for at least 0.25s (2 cache keys dropped)\nno sessions\n"
    )
    status, _, err = cli(capsys, own, "sessions", "--end-idle", "0")
    assert status == EXIT_USAGE
    assert "must be positive" in err

    guarded = make_server(sqlite_url, auth_tokens="u=user,root=root:admin")
    status, out, err = cli(capsys, guarded, "--token", "u", "sessions")
    assert (status, out) == (EXIT_DENIED, "")
    assert err == "error: PERMISSION_DENIED: listing sessions needs the admin role\n"
    status, out, _ = cli(capsys, guarded, "--token", "root", "sessions")
    assert (status, out) == (EXIT_OK, "no sessions\n")


def test_invalidate(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    with Client(server.target) as client:
        session = client.session(session_id)
        by_key = session.query_persons(name=person_name(3), view="basic")
        session.query_persons(name=person_name(4), view="basic")
        session.query_persons(name=person_name(5), view="basic")
        session.query_persons(name=person_name(6))
        entries = {entry.key: entry for entry in session.list_cache_keys()}
    digest = entries[by_key.cache_key].digest
    base = ("invalidate", "--session", session_id)

    status, out, err = cli(capsys, server, *base, "--key", digest)
    assert (status, err) == (EXIT_OK, "")
    header, _, row, total = out.splitlines()
    assert header.split() == ["DIGEST", "REGION", "ROWS", "STORED", "AT", "HITS", "SIZE"]
    assert row.split()[:3] == [digest, "local_session", "1"]
    assert total == "removed: 1"
    assert cli(capsys, server, *base, "--key", digest) == (EXIT_NOT_FOUND, "nothing removed\n", "")

    status, out, _ = cli(capsys, server, *base, "--name", person_name(4), "--basic")
    assert status == EXIT_OK
    assert out.endswith("removed: 1\n")

    status, out, _ = cli(capsys, server, *base, "--all", "--full-keys")
    assert status == EXIT_OK
    assert "'person 05'" in out
    assert out.endswith("removed: 2\n")

    status, out, _ = cli(capsys, server, "invalidate", "--shared")
    assert status == EXIT_OK
    assert " default " in out
    assert re.search(r"^removed: [1-9]\d*$", out, re.M)

    for bad in (
        base,
        (*base, "--all", "--key", digest),
        (*base, "--shared"),
        ("invalidate", "--all"),
    ):
        status, out, err = cli(capsys, server, *bad)
        assert (status, out) == (EXIT_USAGE, ""), bad
        assert err.startswith("error: ")
    status, _, err = cli(capsys, server, "invalidate", "--session", "never-used", "--all")
    assert status == EXIT_NOT_FOUND
    assert err.startswith("error: NOT_FOUND: ")


def test_watch_prints_events_as_they_come(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    capsys.readouterr()
    result: list[int] = []
    argv = ["--target", server.target, "watch", "--session", session_id, "--count", "4"]
    watcher = threading.Thread(target=lambda: result.append(main(argv)))
    watcher.start()
    printed = ""
    deadline = time.monotonic() + 10
    while "watching" not in printed:  # printed once the server has subscribed
        assert time.monotonic() < deadline, printed
        time.sleep(0.01)
        printed += capsys.readouterr().out
    with Client(server.target) as client:
        session = client.session(session_id)
        miss = session.query_persons(name=person_name(7), view="basic")
        session.query_persons(name=person_name(7), view="basic")
        session.invalidate_key(miss.cache_key)
    watcher.join(10)
    assert result == [EXIT_OK]
    out, err = capsys.readouterr()
    assert err == ""
    lines = (printed + out).splitlines()
    assert lines[0] == f"watching session {session_id}"
    assert lines[1].split() == ["TIME", "TYPE", "SESSION", "REGION", "DIGEST", "ROWS", "LOST"]
    events = [line.split() for line in lines[2:6]]
    assert [event[1] for event in events] == ["miss", "store", "hit", "invalidate"]
    for event in events:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}Z", event[0])
        assert event[2:] == [session_id, "local_session", event[4], "1"]
        assert len(event[4]) == 12
    assert lines[6:] == ["events: 4  lost: 0  (hit 1, invalidate 1, miss 1, store 1)"]


def test_watch_stops_after_its_duration(
    capsys: pytest.CaptureFixture[str], server: ServerThread
) -> None:
    started = time.monotonic()
    status, out, err = cli(
        capsys, server, "watch", "--all", "--type", "expire", "--duration", "0.3"
    )
    assert (status, err) == (EXIT_OK, "")
    assert time.monotonic() - started >= 0.25
    assert out.splitlines()[0] == "watching every session for 0.3s"
    assert out.splitlines()[-1] == "events: 0  lost: 0"

    for bad in (("--type", "nope"), ("--count", "0"), ("--duration", "-1")):
        status, out, err = cli(capsys, server, "watch", "--all", *bad)
        assert (status, out) == (EXIT_USAGE, "")
    status, _, err = cli(capsys, server, "watch", "--count", "1")
    assert status == EXIT_USAGE
    assert "one of the arguments --session --all is required" in err


def test_keys_filters_orders_and_long_view(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    with Client(server.target) as client:
        session = client.session(session_id)
        session.query_persons(name=person_name(8), view="basic")
        popular = session.query_persons(name=person_name(9))
        session.query_persons(name=person_name(9))
        entries = {entry.key: entry for entry in session.list_cache_keys()}
        (handle,) = [info.handle for info in client.list_sessions() if info.id == session_id]
    base = ("keys", "--session", session_id)

    status, out, _ = cli(capsys, server, *base, "--order", "hits")
    assert status == EXIT_OK
    assert out.splitlines()[2].split()[0] == entries[popular.cache_key].digest

    status, out, _ = cli(capsys, server, *base, "--region", "*", "--entity", "City", "--long")
    assert status == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == [
        "DIGEST", "REGION", "ROWS", "STORED", "AT", "HITS", "SIZE", "ENTITY", "EXPIRES", "IN",
        "LAST", "ACCESS", "LIVE", "SQL",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:-1]]
    assert rows
    assert all(row[1] == "default" and row[8] == "City" for row in rows)
    assert all(re.fullmatch(r"\d+m", row[9]) for row in rows), "expires in, e.g. '59m 58s'"

    status, out, _ = cli(capsys, server, *base, "-l")
    person_rows = [line.split() for line in out.splitlines()[2:-1]]
    assert [row[8] for row in person_rows] == ["Person", "Person"]
    assert [row[9] for row in person_rows] == ["never", "never"]
    assert [row[-2] for row in person_rows] == ["1", "1"], "live objects"

    status, out, _ = cli(capsys, server, "keys", "--handle", handle, "--order", "size")
    assert status == EXIT_OK
    assert out.endswith("entries: 2\n")

    status, out, err = cli(capsys, server, *base, "--region", "nope")
    assert (status, out) == (EXIT_INVALID_ARGUMENT, "")
    assert err.startswith("error: INVALID_ARGUMENT: region: ")
    status, _, err = cli(capsys, server, *base, "--order", "newest")
    assert status == EXIT_USAGE
    status, _, err = cli(capsys, server, "keys", "--session", session_id, "--handle", handle)
    assert status == EXIT_USAGE


class _Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_keeps_a_running_summary(
    monkeypatch: pytest.MonkeyPatch, server: ServerThread, session_id: str
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    result: list[int] = []
    argv = ["--target", server.target, "watch", "--session", session_id, "--count", "2"]
    watcher = threading.Thread(target=lambda: result.append(main(argv)))
    watcher.start()
    deadline = time.monotonic() + 10
    while "watching" not in terminal.getvalue():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with Client(server.target) as client:
        client.session(session_id).query_persons(name=person_name(11), view="basic")
    watcher.join(10)
    assert result == [EXIT_OK]
    screen = terminal.getvalue()
    # Each event line is written over the summary line, which is then written again.
    assert screen.count("\r\033[K") == 3
    assert "events: 1  lost: 0  (miss 1)\r\033[K" in screen
    assert screen.endswith("\r\033[Kevents: 2  lost: 0  (miss 1, store 1)\n")


def _json(out: str) -> Any:
    """The one JSON object ``out`` holds (one line)."""
    assert out.count("\n") == 1, out
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def _error(err: str) -> Any:
    error = _json(err)["error"]
    assert isinstance(error, dict)
    assert set(error) == {"code", "message", "field_violations"}
    return error


def test_json_output_of_every_command(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    query = ("query", "--session", session_id, "--name", person_name(12))
    status, out, err = cli(capsys, server, "--json", *query)
    assert (status, err) == (EXIT_OK, "")
    miss = _json(out)
    assert miss["cache_status"] == "CACHE_STATUS_MISS", "enum values by name"
    assert miss["persons"][0]["name"] == person_name(12)
    assert miss["next_page_token"] == "", "every field of the proto, zeros too"
    status, out, _ = cli(capsys, server, *query, "--json")  # after the command too
    hit = _json(out)
    assert (hit["cache_status"], hit["sql_statements"]) == ("CACHE_STATUS_HIT", 0)

    _, out, _ = cli(capsys, server, "--json", "keys", "--session", session_id)
    (entry,) = _json(out)["entries"]
    assert entry["digest"] == cache_digest(str(miss["cache_key"]))
    assert (entry["region"], entry["rows"], entry["hits"]) == ("local_session", 1, 1)

    _, out, _ = cli(capsys, server, "--json", "stats", "--session", session_id)
    stats = _json(out)
    assert stats["session"]["hits"] == 1
    assert stats["server"]["sessions"] >= 1
    _, out, _ = cli(capsys, server, "--json", "stats")
    assert set(_json(out)) == {"server", "feed"}
    _, out, _ = cli(capsys, server, "--json", "stats", "--session", session_id, "--reset")
    assert _json(out)["before"]["hits"] == 1

    _, out, _ = cli(capsys, server, "--json", "sessions")
    sessions = _json(out)["sessions"]
    assert session_id in [info["id"] for info in sessions]

    status, out, _ = cli(capsys, server, "--json", "invalidate", "--session", session_id, "--all")
    assert status == EXIT_OK
    removed = _json(out)
    assert removed["removed_count"] == 1
    assert removed["removed"][0]["digest"] == entry["digest"]

    assert _json(cli(capsys, server, "--json", "health")[1]) == {"status": "SERVING"}
    info = _json(cli(capsys, server, "info", "--json")[1])
    assert info["version"]
    assert info["database_kind"] == "sqlite"

    _, out, _ = cli(capsys, server, "--json", "end", "--session", session_id)
    assert _json(out) == {"existed": True, "keys_dropped": 0}


def test_watch_json_prints_one_object_per_event(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    capsys.readouterr()
    result: list[int] = []
    argv = ["--target", server.target, "--json", "watch", "--session", session_id]
    argv += ["--type", "miss", "--count", "2"]
    watcher = threading.Thread(target=lambda: result.append(main(argv)))
    watcher.start()
    with Client(server.target) as client:
        session = client.session(session_id)
        deadline = time.monotonic() + 10
        # Nothing is printed before the first event: miss until the watcher has two.
        while watcher.is_alive():
            assert time.monotonic() < deadline
            miss = session.query_persons(name=person_name(13), view="basic")
            session.invalidate_key(miss.cache_key)
            time.sleep(0.02)
        session.end()
    watcher.join(10)
    assert result == [EXIT_OK]
    out, err = capsys.readouterr()
    assert err == ""
    events = [json.loads(line) for line in out.splitlines()]
    assert [event["type"] for event in events] == ["CACHE_EVENT_TYPE_MISS"] * 2
    assert all(event["session"] == session_id for event in events)


def test_json_errors_go_to_stderr(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    status, out, err = cli(capsys, server, "--json", "keys", "--session", f"{session_id}-none")
    assert (status, out) == (EXIT_NOT_FOUND, "")
    error = _error(err)
    assert (error["code"], error["field_violations"]) == ("NOT_FOUND", [])
    assert "no session" in str(error["message"])

    status, out, err = cli(
        capsys, server, "query", "--session", session_id, "--page-size", "-3", "--json"
    )
    assert (status, out) == (EXIT_INVALID_ARGUMENT, "")
    error = _error(err)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field_violations"] == [
        {"field": "page_size", "description": "must not be negative (got -3)"}
    ]

    status, out, err = cli(capsys, server, "--json", "watch", "--count", "1")
    assert (status, out) == (EXIT_USAGE, "")
    assert _error(err)["code"] == "USAGE"
    status, out, err = cli(capsys, server, "--json", "stats", "--reset")
    assert (status, _error(err)["code"]) == (EXIT_USAGE, "USAGE")

    status, out, err = _unreachable(capsys, "--json", "health")
    assert (status, out) == (EXIT_UNAVAILABLE, "")
    error = _error(err)
    assert error["code"] == "UNAVAILABLE"
    assert str(error["message"]).startswith("cannot reach the server at 127.0.0.1:")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _unreachable(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--target", f"127.0.0.1:{_free_port()}", "--timeout", "5", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_each_exit_status_has_a_real_case(
    capsys: pytest.CaptureFixture[str],
    server: ServerThread,
    make_server: MakeServer,
    sqlite_url: str,
    session_id: str,
) -> None:
    assert cli(capsys, server, "health")[0] == EXIT_OK
    assert cli(capsys, server, "health", "--service", "no.such.Service")[0] == EXIT_ERROR
    status, out, err = cli(capsys, server, "query")  # no --session
    assert (status, out) == (EXIT_USAGE, "")
    assert "the following arguments are required: --session" in err
    assert cli(capsys, server, "keys", "--session", f"{session_id}-no")[0] == EXIT_NOT_FOUND
    assert cli(capsys, server, "end", "--session", session_id)[0] == EXIT_OK
    assert cli(capsys, server, "invalidate", "--session", session_id, "--key", "nosuch")[0] == (
        EXIT_NOT_FOUND
    ), "a session that removed nothing"
    assert _unreachable(capsys, "health")[0] == EXIT_UNAVAILABLE
    status, _, err = cli(capsys, server, "--timeout", "0.0001", "query", "--session", session_id)
    assert status == EXIT_UNAVAILABLE, "a deadline that passed"
    assert err.startswith("error: DEADLINE_EXCEEDED: no answer from 127.0.0.1:")
    assert err.endswith(" within 0.0001s (see --timeout)\n")
    status, _, err = cli(capsys, server, "query", "--session", session_id, "--page-size", "-1")
    assert status == EXIT_INVALID_ARGUMENT

    guarded = make_server(sqlite_url, auth_tokens="u=user", max_watchers_per_principal=1)
    status, _, err = cli(capsys, guarded, "health")  # health needs no token
    assert status == EXIT_OK
    status, _, err = cli(capsys, guarded, "stats")
    assert (status, err.split(":")[:2]) == (EXIT_DENIED, ["error", " UNAUTHENTICATED"])
    status, _, err = cli(capsys, guarded, "--token", "u", "sessions")
    assert (status, err.split(":")[:2]) == (EXIT_DENIED, ["error", " PERMISSION_DENIED"])
    with Client(guarded.target, token="u") as client, client.session(session_id).watch():
        status, _, err = cli(capsys, guarded, "--token", "u", "watch", "--session", session_id)
    assert status == EXIT_RESOURCE_EXHAUSTED
    assert err.startswith("error: RESOURCE_EXHAUSTED: ")


def test_help_prints_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit status:" in out
    for code, meaning in EXIT_CODES:
        assert f"  {code}  {meaning}\n" in out
    assert [code for code, _ in EXIT_CODES] == list(range(8))
    readme = (ROOT / "README.md").read_text().replace("`", "")
    for code, meaning in EXIT_CODES:
        assert f"\n| {code} | {meaning} |\n" in readme, "the README's table is EXIT_CODES"


def test_a_refused_connection_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _unreachable(capsys, "keys", "--session", "s1")
    assert (status, out) == (EXIT_UNAVAILABLE, "")
    assert re.fullmatch(
        r"error: cannot reach the server at 127\.0\.0\.1:\d+ \(is it running\? see --target\)\n",
        err,
    )


def test_a_target_without_a_port_means_the_default_port(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: ServerThread
) -> None:
    port = int(server.target.rsplit(":", 1)[1])
    monkeypatch.setattr(sesscache_client.cli, "DEFAULT_PORT", port)  # stands in for 50051
    for target in ("127.0.0.1", "localhost"):
        assert main(["--target", target, "--timeout", "20", "health"]) == EXIT_OK, target
        assert capsys.readouterr().out == "SERVING\n"
    free = _free_port()
    monkeypatch.setattr(sesscache_client.cli, "DEFAULT_PORT", free)
    assert main(["--target", "[::1]", "--timeout", "5", "health"]) == EXIT_UNAVAILABLE
    assert f"cannot reach the server at [::1]:{free} " in capsys.readouterr().err

    assert with_default_port("127.0.0.1") == "127.0.0.1:50051"
    assert with_default_port("localhost") == "localhost:50051"
    assert with_default_port("[::1]") == "[::1]:50051"
    assert with_default_port("::1") == "[::1]:50051"
    for untouched in (
        "127.0.0.1:6000",
        "[::1]:6000",
        "unix:sesscache.sock",
        "dns:///h:7",
        "dns:///h",
    ):
        assert with_default_port(untouched) == untouched


def test_enum_values_read_as_names() -> None:
    response = sesscache_pb2.QueryPersonsResponse(cache_status=sesscache_pb2.CACHE_STATUS_HIT)
    assert type(response.cache_status) is int, "protobuf's Python API: a number"
    assert enum_name(response, "cache_status") == "CACHE_STATUS_HIT"
    assert "CACHE_STATUS_HIT" in repr(response)
    event = sesscache_pb2.CacheEvent(type=sesscache_pb2.CACHE_EVENT_TYPE_MISS)
    assert enum_name(event, "type") == "CACHE_EVENT_TYPE_MISS"
    with pytest.raises(TypeError):
        enum_name(response, "cache_key")


_TOP_ROW = re.compile(
    r"\s*\d\d:\d\d:\d\d\s+\d+\s+\d+\.\d\s+\d+\.\d\s+(\d+\.\d%|-)\s+\d+\.\d"
    r"\s+\d+\s+\d+(\.\d)? [KMG]?i?B\s+\d+\.\d"
)


def test_stats_interval_prints_a_line_of_rates_per_update(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    with Client(server.target) as client:
        session = client.session(session_id)
        session.query_persons(name=person_name(14), view="basic")
        stop = threading.Event()

        def hits() -> None:
            while not stop.is_set():
                session.query_persons(name=person_name(14), view="basic")
                time.sleep(0.01)

        hitter = threading.Thread(target=hits)
        hitter.start()
        try:
            status, out, err = cli(capsys, server, "stats", "--interval", "0.2", "--count", "2")
            assert (status, err) == (EXIT_OK, "")
            status, top_out, _ = cli(
                capsys, server, "--json", "top", "--session", session_id, "--interval", "0.2",
                "--count", "1",
            )  # fmt: skip
        finally:
            stop.set()
            hitter.join()
    header, columns, *rows = out.splitlines()
    assert header == "statistics of the server, every 0.2s"
    assert columns.split() == [
        "TIME", "SESSIONS", "HITS/S", "MISSES/S", "HIT", "RATIO", "SQL", "SAVED/S", "ENTRIES",
        "BYTES", "EVICTIONS/S",
    ]  # fmt: skip
    assert len(rows) == 2
    assert all(_TOP_ROW.fullmatch(row) for row in rows), rows
    assert any(float(row.split()[2]) > 0 for row in rows), "hits/s from successive snapshots"

    update = _json(top_out)
    assert update["scope"] == f"session {session_id}"
    assert float(update["hits_per_second"]) > 0
    assert update["hit_ratio"] == 1.0

    status, _, err = cli(capsys, server, "stats", "--count", "2")
    assert (status, err) == (EXIT_USAGE, "error: --count needs --interval (or the top command)\n")


def test_top_on_a_terminal_is_a_live_table(
    monkeypatch: pytest.MonkeyPatch, server: ServerThread
) -> None:
    pytest.importorskip("rich")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    argv = ["--target", server.target, "top", "--interval", "0.1", "--count", "2"]
    assert main(argv) == EXIT_OK
    screen = terminal.getvalue()
    assert "sesscache: server" in screen
    for label in ("LAST INTERVAL", "AVERAGE", "hits/s", "misses/s", "hit ratio", "sql saved/s"):
        assert label in screen
    assert "\033[" in screen, "drawn in place, with terminal control sequences"


def test_top_without_rich_prints_plain_lines_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, server: ServerThread
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sesscache_client.cli, "_rich_available", lambda: False)
    argv = ["--target", server.target, "top", "--interval", "0.1", "--count", "1"]
    assert main(argv) == EXIT_OK
    lines = terminal.getvalue().splitlines()
    assert lines[0] == "statistics of the server, every 0.1s"
    assert _TOP_ROW.fullmatch(lines[2]), lines


def test_the_client_imports_no_rich() -> None:
    code = "import sys, sesscache_client.cli; assert 'rich' not in sys.modules, 'rich imported'"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_top_of_a_non_admin_shows_its_principal(
    capsys: pytest.CaptureFixture[str], make_server: MakeServer, sqlite_url: str
) -> None:
    guarded = make_server(sqlite_url, auth_tokens="u=user,root=root:admin")
    top = ("top", "--interval", "0.1", "--count", "1")
    status, out, err = cli(capsys, guarded, "--json", "--token", "u", *top)
    assert (status, err) == (EXIT_OK, "")
    assert _json(out)["scope"] == "principal"
    status, out, _ = cli(capsys, guarded, "--json", "--token", "root", *top)
    assert _json(out)["scope"] == "server"


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone (``python -m sesscache_client ... | head -1``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, server: ServerThread
) -> None:
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["--target", server.target, "--json", "health"]) == EXIT_OK
    assert capsys.readouterr().err == ""
