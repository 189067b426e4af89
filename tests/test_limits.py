"""Bounded state, through real servers with small limits, on SQLite and PostgreSQL.

Shows that a server's memory is bounded by its settings and that every bound
is enforced the way the README says:

- live sessions (``max_sessions``): when full, the least recently used *idle*
  session is ended to make room; RESOURCE_EXHAUSTED only when every session
  is busy (on PostgreSQL, sessions are held busy by a table lock the test
  takes, so their misses wait in the database);
- idle time (``session_idle_timeout``): the background reaper ends sessions
  nobody calls, never one in use;
- entries per session (``max_entries_per_session``) and bytes per session
  (``max_bytes_per_session``): least recently used entries are evicted;
- expiry: expired entries of the session caches (``local_expiration``) and
  of the shared region (``shared_region_expiration``) are dropped by the
  server's upkeep without any query, not kept forever.

Every eviction and expiry is counted (registry ``sessions_evicted`` /
``sessions_expired``, store ``evictions`` / ``expirations``) and logged at
debug level on ``sesscache.registry`` / ``sesscache.backend``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from dogpile.cache import register_backend

from sesscache.backend import SharedMemoryBackend
from sesscache.registry import SessionRegistry
from sesscache.store import SessionStore, digest_of
from sesscache_client import Client, ResourceExhausted, Session, SessionNotFound
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support.polling import wait_until
from tests.support.postgres import table_locked, waiting_on_lock
from tests.support.servers import ServerThread

LOCAL = "local_session"
MakeServer = Callable[..., ServerThread]


def local_keys(session: Session) -> list[str]:
    """The keys of the session's own cache, oldest first."""
    return [entry.key for entry in session.list_cache_keys() if entry.region == LOCAL]


def registry_of(server: ServerThread) -> SessionRegistry:
    assert server.running is not None
    return server.running.registry


def store_of(server: ServerThread, session_id: str) -> SessionStore:
    registry = registry_of(server)
    state = registry.get(session_id)
    assert state is not None, f"no session {session_id}"
    store = registry.store_of(state)
    assert store is not None
    return store


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="sesscache.registry")
    caplog.set_level(logging.DEBUG, logger="sesscache.store")
    return caplog


def query(session: Session, number: int) -> pb.QueryPersonsResponse:
    """Query ``person NN`` and check the answer."""
    name = f"person {number:02d}"
    response = session.query_persons(name=name)
    assert [p.name for p in response.persons] == [name]
    return response


# -- live sessions ----------------------------------------------------------------------


def test_full_server_ends_the_least_recently_used_idle_session(
    database_url: str, make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = make_server(database_url, max_sessions=3)
    registry = registry_of(server)
    with Client(server.target, timeout=30) as client:
        a, b, c, d = (client.session(f"lru-{name}") for name in "abcd")
        for number, session in enumerate((a, b, c), start=1):
            query(session, number)
        assert query(a, 1).cache_status == pb.CACHE_STATUS_HIT  # a is used again: b is LRU
        assert registry.sessions_evicted == 0

        assert query(d, 4).cache_status == pb.CACHE_STATUS_MISS  # full: b makes room
        assert registry.sessions_evicted == 1
        assert len(registry) == 3
        with pytest.raises(SessionNotFound):
            b.list_cache_keys()
        for session in (a, c, d):
            assert len(local_keys(session)) == 1
        assert "session lru-b evicted to make room (1 keys dropped)" in messages(
            debug_logs, "sesscache.registry"
        )


def test_any_call_counts_as_use_for_the_lru_order(
    database_url: str, make_server: MakeServer
) -> None:
    """Listing a session's keys is a use too: the session listed is not the LRU one."""
    server = make_server(database_url, max_sessions=2)
    with Client(server.target, timeout=30) as client:
        a, b, c = (client.session(f"use-{name}") for name in "abc")
        query(a, 1)
        query(b, 2)
        assert len(local_keys(a)) == 1  # a is now the most recently used
        query(c, 3)  # full: the least recently used idle session, b, makes room
        assert len(local_keys(a)) == 1
        with pytest.raises(SessionNotFound):
            b.list_cache_keys()


@pytest.mark.postgres
def test_resource_exhausted_only_when_every_session_is_busy(
    pg_database: tuple[str, str], make_server: MakeServer
) -> None:
    url, conninfo = pg_database
    server = make_server(url, max_sessions=3)
    registry = registry_of(server)
    with Client(server.target, timeout=60) as client:
        idle = client.session("busy-idle")
        query(idle, 1)
        results: dict[str, pb.QueryPersonsResponse | BaseException] = {}

        def miss(session: Session, number: int) -> None:
            try:
                results[session.id] = query(session, number)
            except BaseException as error:  # reported below
                results[session.id] = error

        busy = [client.session(f"busy-{n}") for n in range(3)]
        threads = [
            threading.Thread(target=miss, args=(session, 10 + n)) for n, session in enumerate(busy)
        ]
        with table_locked(conninfo):
            # Two sessions busy, one idle: a third new session evicts the idle one.
            for thread in threads[:2]:
                thread.start()
            wait_until(lambda: waiting_on_lock(conninfo) == 2, what="2 misses waiting")
            threads[2].start()
            wait_until(lambda: waiting_on_lock(conninfo) == 3, what="3 misses waiting")
            assert registry.sessions_evicted == 1
            with pytest.raises(SessionNotFound):
                idle.list_cache_keys()

            # Every session busy: a new session is refused, at once, with a clear message.
            started = time.monotonic()
            with pytest.raises(ResourceExhausted) as refused:
                query(client.session("busy-refused"), 20)
            assert time.monotonic() - started < 5
            assert "maximum of 3 sessions (max_sessions), all busy" in refused.value.message
            assert registry.get("busy-refused") is None
            assert len(registry) == 3
        for thread in threads:
            thread.join(30)
        for session in busy:
            outcome = results[session.id]
            assert isinstance(outcome, pb.QueryPersonsResponse), outcome
            assert outcome.cache_status == pb.CACHE_STATUS_MISS
        # Idle again: the refused session now gets a place.
        assert query(client.session("busy-refused"), 20).cache_status == pb.CACHE_STATUS_MISS
        assert registry.sessions_evicted == 2


# -- idle time --------------------------------------------------------------------------


def test_idle_sessions_are_reaped_active_ones_stay(
    database_url: str, make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = make_server(database_url, session_idle_timeout=0.3)
    registry = registry_of(server)
    with Client(server.target, timeout=30) as client:
        idle, active = client.session("reap-idle"), client.session("reap-active")
        query(idle, 1)
        query(active, 2)
        started = time.monotonic()
        while registry.sessions_expired == 0:  # keep `active` busy meanwhile
            assert query(active, 2).cache_status == pb.CACHE_STATUS_HIT
            assert time.monotonic() - started < 10, "the idle session was not reaped"
            time.sleep(0.05)
        assert registry.sessions_expired == 1
        with pytest.raises(SessionNotFound):
            idle.list_cache_keys()
        entries = [e for e in active.list_cache_keys() if e.region == LOCAL]
        assert len(entries) == 1
        assert entries[0].hits >= 1
        assert "session reap-idle expired after idling (1 keys dropped)" in messages(
            debug_logs, "sesscache.registry"
        )
        # Left alone, the active session goes too.
        wait_until(lambda: registry.get("reap-active") is None, what="reap-active reaped")
        assert registry.sessions_expired == 2
        assert len(registry) == 0


# -- entries and bytes per session ---------------------------------------------------------


def test_entries_beyond_the_limit_are_evicted_least_recently_used_first(
    database_url: str, make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    server = make_server(database_url, max_entries_per_session=2)
    with Client(server.target, timeout=30) as client:
        session = client.session("entries")
        k1, k2 = query(session, 1).cache_key, query(session, 2).cache_key
        assert local_keys(session) == [k1, k2]
        assert query(session, 1).cache_status == pb.CACHE_STATUS_HIT  # k2 is now LRU
        k3 = query(session, 3).cache_key
        assert local_keys(session) == [k1, k3]
        store = store_of(server, session.id)
        assert (store.evictions, len(store)) == (1, 2)

        assert query(session, 2).cache_status == pb.CACHE_STATUS_MISS  # evicted: runs again
        assert local_keys(session) == [k3, k2]
        assert store.evictions == 2
        evicted = [
            m for m in messages(debug_logs, "sesscache.store") if m.endswith(f"region {LOCAL})")
        ]
        assert evicted == [
            f"cache entry {digest_of(k2)} evicted (region {LOCAL})",
            f"cache entry {digest_of(k1)} evicted (region {LOCAL})",
        ]


def test_bytes_beyond_the_budget_are_evicted_least_recently_used_first(
    database_url: str, make_server: MakeServer
) -> None:
    budget = 10_000  # one person, its key, SQL and rendering: ~4.3 KB
    server = make_server(database_url, max_bytes_per_session=budget)
    with Client(server.target, timeout=30) as client:
        session = client.session("bytes")
        keys = [query(session, number).cache_key for number in range(1, 6)]
        entries = [e for e in session.list_cache_keys() if e.region == LOCAL]
        kept = [e.key for e in entries]
        assert 1 <= len(kept) < 5
        assert kept == keys[-len(kept) :], "the oldest entries go first"
        assert sum(e.size_bytes for e in entries) <= budget
        store = store_of(server, session.id)
        assert store.evictions == 5 - len(kept)
        assert store.bytes == sum(e.size_bytes for e in entries)

        # One entry larger than the whole budget evicts the others but is kept itself.
        big = session.query_persons(name_first="person 01", name_last="person 20", page_size=20)
        assert len(big.persons) == 20
        (entry,) = [e for e in session.list_cache_keys() if e.region == LOCAL]
        assert entry.key == big.cache_key
        assert entry.size_bytes > budget
        again = session.query_persons(name_first="person 01", name_last="person 20", page_size=20)
        assert again.cache_status == pb.CACHE_STATUS_HIT
        assert store.evictions == 5


# -- expiry -------------------------------------------------------------------------------


def test_expired_session_entries_are_dropped_without_a_query(
    database_url: str, make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    # The upkeep runs every idle_timeout / 4 = 0.5 s; listing keeps the session alive.
    server = make_server(database_url, local_expiration=0.2, session_idle_timeout=2.0)
    with Client(server.target, timeout=30) as client:
        session = client.session("expiry")
        key = query(session, 1).cache_key
        (entry,) = [e for e in session.list_cache_keys() if e.region == LOCAL]
        assert entry.key == key
        assert not entry.no_expiry
        assert entry.expires_in.ToNanoseconds() <= 200_000_000
        store = store_of(server, session.id)
        wait_until(lambda: not local_keys(session), what="the expired entry dropped")
        assert (store.expirations, len(store), store.bytes) == (1, 0, 0)
        assert f"cache entry {digest_of(key)} expired (region {LOCAL})" in messages(
            debug_logs, "sesscache.store"
        )
        assert query(session, 1).cache_status == pb.CACHE_STATUS_MISS


class RecordingSharedBackend(SharedMemoryBackend):
    """The real shared memory backend; remembers its instances so the test can look."""

    instances: ClassVar[list[RecordingSharedBackend]] = []

    def __init__(self, arguments: Any) -> None:
        super().__init__(arguments)
        RecordingSharedBackend.instances.append(self)


register_backend("tests.recording_memory", __name__, "RecordingSharedBackend")  # type: ignore[no-untyped-call]


def test_expired_shared_region_entries_are_swept(
    database_url: str, make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    RecordingSharedBackend.instances.clear()
    server = make_server(
        database_url,
        shared_region_backend="tests.recording_memory",
        shared_region_expiration=0.2,
        session_idle_timeout=0.4,  # upkeep every 0.1 s
    )
    (shared,) = RecordingSharedBackend.instances
    with Client(server.target, timeout=30) as client:
        response = query(client.session("shared-expiry"), 1)
        assert response.persons[0].addresses
    stored = shared.entries()
    # The postal code, city and country of the person's addresses.
    assert len(stored) >= 3
    assert all(entry.expires_at is not None for entry in stored)
    wait_until(lambda: not shared.entries(), what="the shared region swept")
    assert shared.store.expirations == len(stored)
    assert shared.store.bytes == 0
    swept = [m for m in messages(debug_logs, "sesscache.store") if "(region default)" in m]
    assert sorted(swept) == sorted(
        f"cache entry {e.digest} expired (region default)" for e in stored
    )
