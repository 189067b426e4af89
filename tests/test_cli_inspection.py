"""The inspection commands of ``python -m client`` against a real server.

``stats``, ``sessions``, ``invalidate``, ``watch`` and the filters of ``keys``,
run in-process through :func:`client.cli.main` (output read with capsys)
against a real in-process server on SQLite: what each prints, and that bad
command lines are usage errors (exit 2) and refused calls one-line errors
(exit 1).
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from client import Client
from client.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from sesscache.fixtures import person_name
from tests.conftest import settings_for
from tests.support.cli import run_cli as cli
from tests.support.servers import ServerThread

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
    assert re.fullmatch(r"since\s+\d{4}-.*Z\s+\d{4}-.*Z", out.splitlines()[-1])

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
    assert status == EXIT_ERROR
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
    assert (status, out) == (EXIT_ERROR, "")
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
    assert cli(capsys, server, *base, "--key", digest)[1] == "nothing removed\n"

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
    assert status == EXIT_ERROR
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
    assert (status, out) == (EXIT_USAGE, "")
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
