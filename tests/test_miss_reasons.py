"""Why was this a miss: the reason on the QueryPersons response, ExplainCacheKey, the CLI.

Each way an entry leaves a session cache (evicted, expired, invalidated, a
failed call is covered in tests/test_faults.py) is caused for real through the
service, and the next miss of that key says so; a new session and a key never
stored say so too. ExplainCacheKey answers the same without counting a hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sesscache_client import Client, MissReason, SessionNotFound
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support.cli import run_cli as run
from tests.support.servers import ServerThread

MakeServer = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'sesscache.db'}"


def _reason(response: pb.QueryPersonsResponse) -> str:
    assert response.cache_status == pb.CACHE_STATUS_MISS, response
    return pb.MissReason.Name(response.miss.reason)


def test_each_miss_says_why(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url, max_entries_per_session=2, local_expiration=1.0)
    with Client(server.target, timeout=20) as client:
        session = client.session("why")
        first = session.query_persons(name="person 10")
        assert _reason(first) == "MISS_REASON_NEW_SESSION"
        assert not first.miss.HasField("removed")
        assert _reason(session.query_persons(name="person 11")) == "MISS_REASON_NEVER_STORED"
        hit = session.query_persons(name="person 11")
        assert hit.cache_status == pb.CACHE_STATUS_HIT
        assert not hit.HasField("miss")  # a hit carries no miss

        session.query_persons(name="person 12")  # the third entry evicts person 10's
        evicted = session.query_persons(name="person 10")
        assert _reason(evicted) == "MISS_REASON_EVICTED"
        assert evicted.miss.removed.ToSeconds() <= time.time() + 1

        session.invalidate_key(evicted.cache_key)
        assert _reason(session.query_persons(name="person 10")) == "MISS_REASON_INVALIDATED"

        time.sleep(1.2)  # every entry has expired
        assert _reason(session.query_persons(name="person 10")) == "MISS_REASON_EXPIRED"


def test_explain_cache_key_counts_no_hit(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url)
    with Client(server.target, timeout=20) as client:
        session = client.session("explain")
        with pytest.raises(SessionNotFound):
            session.explain_cache_key("anything")
        stored = session.query_persons(name="person 20")
        explained = session.explain_cache_key(stored.cache_key)
        assert explained.cached
        assert explained.entry.hits == 0
        digest = explained.entry.digest
        assert session.explain_cache_key(digest).entry.key == stored.cache_key
        session.invalidate_key(digest)
        for key in (stored.cache_key, digest):
            gone = session.explain_cache_key(key)
            assert not gone.cached
            assert MissReason(gone.miss.reason) is MissReason.INVALIDATED
        never = session.explain_cache_key("no such key")
        assert MissReason(never.miss.reason) is MissReason.NEVER_STORED


def test_the_cli_prints_the_miss_reason(
    capsys: pytest.CaptureFixture[str], make_server: MakeServer, sqlite_url: str
) -> None:
    server = make_server(sqlite_url)
    status, out, _ = run(capsys, server, "query", "--session", "cli-why", "--name", "person 3")
    assert status == 0
    assert "\nmiss: new session\ncache: MISS  sql statements: " in out
    status, out, _ = run(capsys, server, "query", "--session", "cli-why", "--name", "person 3")
    assert "cache: HIT  sql statements: 0" in out
    digest = out.split("digest: ")[1].split()[0]
    status, out, _ = run(capsys, server, "explain", "--session", "cli-why", digest)
    assert (status, out.split()[0]) == (0, "cached:")
    run(capsys, server, "invalidate", "--session", "cli-why", "--key", digest)
    status, out, _ = run(capsys, server, "explain", "--session", "cli-why", digest)
    assert status == 3
    assert out.startswith("not cached: invalidated at ")
