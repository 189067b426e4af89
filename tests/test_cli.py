"""The command line tool (``python -m sesscache_client``) against a real server, both backends.

Most tests call :func:`client.cli.main` in-process and read what it printed
(capsys); a few run ``python -m sesscache_client`` as a real child process, to check
the entry point, the exit status and that errors are one line, never a
traceback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from sesscache_client import SERVICE_NAME, Client
from sesscache_client.cli import (
    EXIT_ERROR,
    EXIT_INVALID_ARGUMENT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    main,
)
from tests.support.cli import run_cli as _cli
from tests.support.servers import ROOT, ServerThread


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sesscache_client ARGS`` as a child process."""
    return subprocess.run(
        [sys.executable, "-m", "sesscache_client", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _status_line(out: str) -> re.Match[str]:
    match = re.search(
        r"^cache: (?P<status>\w+)  sql statements: (?P<sql>\d+)  "
        r"digest: (?P<digest>[0-9a-f]{12}|-)  key: (?P<key>.+)$",
        out,
        re.M,
    )
    assert match, out
    return match


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_walk_through(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    query = ("query", "--session", session_id, "--name", "person 10")

    status, out, err = _cli(capsys, server, *query)
    assert (status, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STREET", "POSTAL", "CODE", "CITY", "COUNTRY"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert re.match(r"^\d+  person 10  street 10  ", lines[2]), lines[2]
    miss = _status_line(out)
    assert miss["status"] == "MISS"
    assert int(miss["sql"]) >= 1
    assert miss["key"].startswith("SELECT ")
    assert miss["key"].endswith("..."), "a shortened key on the status line"
    assert len(miss["key"]) == 63
    assert out.endswith(miss[0] + "\n"), "the status line is the last line"

    status, out, err = _cli(capsys, server, *query)
    assert (status, err) == (EXIT_OK, "")
    assert out.splitlines()[2] == lines[2], "the same row from the cache"
    hit = _status_line(out)
    assert (hit["status"], hit["sql"], hit["key"]) == ("HIT", "0", miss["key"])
    assert hit["digest"] == miss["digest"]

    status, out, _ = _cli(capsys, server, *query, "--long")
    assert status == EXIT_OK
    whole = _status_line(out)["key"]
    assert whole.endswith("('person 10', 51)"), "--long: the whole key"
    assert whole.startswith(miss["key"].removesuffix("..."))

    with Client(server.target) as client:
        (entry,) = client.session(session_id).list_cache_keys()
    assert whole == entry.key.replace("\n", " ")
    assert miss["digest"] == entry.digest, "query shows the digest keys lists"
    status, out, err = _cli(capsys, server, "keys", "--session", session_id)
    assert (status, err) == (EXIT_OK, "")
    header, rule, row, total = out.splitlines()
    assert header.split() == ["DIGEST", "REGION", "ROWS", "STORED", "AT", "HITS", "SIZE"]
    assert set(rule.replace(" ", "")) == {"-"}
    fields = row.split()
    assert fields[:3] == [entry.digest, "local_session", "1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", " ".join(fields[3:5]))
    assert fields[5] == "2", "hits"
    assert total == "entries: 1"

    status, out, _ = _cli(capsys, server, "keys", "--session", session_id, "--full-keys")
    assert status == EXIT_OK
    assert "('person 10', 51)" in out
    assert "\n" not in out.splitlines()[2]

    status, out, err = _cli(capsys, server, "end", "--session", session_id)
    assert (status, err) == (EXIT_OK, "")
    assert out == f"session: {session_id}  existed: yes  keys dropped: 1\n"

    status, out, _ = _cli(capsys, server, *query)
    assert status == EXIT_OK
    assert _status_line(out)["status"] == "MISS"

    status, out, _ = _cli(capsys, server, "end", "--session", session_id)
    assert out == f"session: {session_id}  existed: yes  keys dropped: 1\n"
    status, out, _ = _cli(capsys, server, "end", "--session", session_id)
    assert (status, out) == (EXIT_OK, f"session: {session_id}  existed: no  keys dropped: 0\n")


def test_query_options(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    base = ("query", "--session", session_id, "--basic")
    status, out, _ = _cli(capsys, server, *base, "--first", "person 10", "--page-size", "4")
    assert status == EXIT_OK
    assert out.splitlines()[0].split() == ["ID", "NAME"]
    assert [line.split()[1:] for line in out.splitlines()[2:6]] == [
        ["person", f"{n}"] for n in range(10, 14)
    ]
    token = re.search(r"^next page token: (\S+)$", out, re.M)
    assert token, out

    status, out, _ = _cli(
        capsys, server, *base, "--first", "person 10", "--page-size", "40", "--page-token", token[1]
    )
    assert status == EXIT_OK
    assert "person 14" in out
    assert "person 50" in out
    assert "next page token" not in out

    status, out, _ = _cli(capsys, server, *base, "--id", "3", "--id", "5", "7", "--bypass-cache")
    assert status == EXIT_OK
    assert [line.split()[-1] for line in out.splitlines()[2:5]] == ["03", "05", "07"]
    assert re.search(r"^cache: BYPASS  sql statements: [1-9]\d*  digest: -  key: -$", out, re.M)

    status, out, _ = _cli(capsys, server, *base, "--name", "nobody")
    assert status == EXIT_OK
    assert out.startswith("no persons\n")
    _cli(capsys, server, "end", "--session", session_id)


def test_health(capsys: pytest.CaptureFixture[str], server: ServerThread) -> None:
    assert _cli(capsys, server, "health") == (EXIT_OK, "SERVING\n", "")
    assert _cli(capsys, server, "health", "--service", SERVICE_NAME) == (EXIT_OK, "SERVING\n", "")
    assert _cli(capsys, server, "health", "--service", "no.such.Service") == (
        EXIT_ERROR,
        "SERVICE_UNKNOWN\n",
        "",
    )


def test_keys_of_unknown_session_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    status, out, err = _cli(capsys, server, "keys", "--session", session_id)
    assert status == EXIT_NOT_FOUND
    assert out == ""
    assert err.startswith("error: NOT_FOUND: no session ")
    assert err.count(session_id) == 1, "the session is named once"
    assert err.count("server memory") + err.count("memory of one server") == 1, "explained once"
    assert err.count("\n") == 1


@pytest.mark.parametrize("session_id", ["a b", "ü", "x" * 129, "a/b"])
def test_bad_session_id_is_an_invalid_argument(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    for command in ("query", "keys", "end"):
        status, out, err = _cli(capsys, server, command, "--session", session_id)
        assert status == EXIT_INVALID_ARGUMENT
        assert out == ""
        assert err.startswith("error: INVALID_ARGUMENT: session-id: ")
        assert err.count("\n") == 1


def test_server_side_invalid_argument_exits_5(
    capsys: pytest.CaptureFixture[str], server: ServerThread, session_id: str
) -> None:
    status, out, err = _cli(capsys, server, "query", "--session", session_id, "--page-size", "-3")
    assert (status, out) == (EXIT_INVALID_ARGUMENT, "")
    assert err == "error: INVALID_ARGUMENT: page_size: must not be negative (got -3)\n"
    status, _, err = _cli(capsys, server, "query", "--session", session_id, "--id", "0")
    assert status == EXIT_INVALID_ARGUMENT
    assert err.startswith("error: INVALID_ARGUMENT: ids[0]: ")


def test_unreachable_target_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_free_port()}"
    capsys.readouterr()
    status = main(["--target", target, "--timeout", "5", "query", "--session", "s1"])
    out, err = capsys.readouterr()
    assert (status, out) == (EXIT_UNAVAILABLE, "")
    assert err == f"error: cannot reach the server at {target} (is it running? see --target)\n"


def test_subprocess_query_and_health(server: ServerThread, session_id: str) -> None:
    result = _run(
        "--target", server.target, "query", "--session", session_id, "--name", "person 07"
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    assert "person 07" in result.stdout
    assert _status_line(result.stdout)["status"] == "MISS"

    env_target = subprocess.run(
        [sys.executable, "-m", "sesscache_client", "health"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SESSCACHE_TARGET": server.target},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (env_target.returncode, env_target.stdout) == (EXIT_OK, "SERVING\n")
    with Client(server.target) as client:
        assert client.session(session_id).end().keys_dropped == 1


def test_subprocess_errors_are_one_line_without_traceback() -> None:
    unreachable = _run("--target", f"127.0.0.1:{_free_port()}", "--timeout", "5", "health")
    assert unreachable.returncode == EXIT_UNAVAILABLE
    assert unreachable.stdout == ""
    assert unreachable.stderr.startswith("error: cannot reach the server at 127.0.0.1:")
    assert unreachable.stderr.count("\n") == 1

    bad_session = _run("--target", "127.0.0.1:1", "keys", "--session", "a b")
    assert bad_session.returncode == EXIT_INVALID_ARGUMENT
    assert bad_session.stderr.startswith("error: INVALID_ARGUMENT: session-id: ")
    assert bad_session.stderr.count("\n") == 1
    assert "Traceback" not in unreachable.stderr + bad_session.stderr
