"""Cache inspection end to end: real servers, the real client, both backends.

Every capability of the inspection RPCs, through gRPC over loopback: the
fields of a ``CacheEntry`` and the listing's filters and orders (listing is
never an access); ``GetStats`` / ``ResetStats`` per session and server-wide;
``Invalidate`` by key, digest, query, session cache and shared region (each
returning what it removed); ``ListSessions`` and ``EndSessions`` (admin with
authentication on, session ids hashed); ``WatchCacheEvents`` (order, type
filter, every session, a slow subscriber losing events with a count); and the
relationship cache on the shared ``default`` region.

Tests that need a server of their own (settings, server-wide counters, the
sessions list) start one with ``make_server``; the others share the module's
server and keep apart by their own session ids. Tests whose outcome does not
depend on the database run on SQLite only.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sesscache.fixtures import person_name
from sesscache.store import REMOVAL_SIZE
from sesscache_client import (
    ALL_REGIONS,
    LOCAL_REGION,
    SHARED_REGION,
    Client,
    EventStream,
    InvalidArgument,
    PermissionDenied,
    Session,
    SessionNotFound,
)
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.servicer import SessionCacheServicer
from tests.support.servers import ServerThread

MakeServer = Callable[..., ServerThread]
AUTH_TOKENS = "a=alice,b=bob,root=root:admin"

HIT = pb.CACHE_EVENT_TYPE_HIT
MISS = pb.CACHE_EVENT_TYPE_MISS
STORE = pb.CACHE_EVENT_TYPE_STORE
INVALIDATE = pb.CACHE_EVENT_TYPE_INVALIDATE
EVICT = pb.CACHE_EVENT_TYPE_EVICT
EXPIRE = pb.CACHE_EVENT_TYPE_EXPIRE
SESSION_END = pb.CACHE_EVENT_TYPE_SESSION_END


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database for the tests whose outcome does not depend on the backend."""
    return f"sqlite:///{tmp_path_factory.mktemp('inspection') / 'sesscache.db'}"


def basic(session: Session, number: int) -> pb.QueryPersonsResponse:
    """Query one person by name, without addresses: exactly one SQL statement on a miss."""
    return session.query_persons(name=person_name(number), view="basic")


def seconds(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def collect(stream: EventStream, count: int, timeout: float = 5.0) -> list[pb.CacheEvent]:
    """The next ``count`` events of ``stream``; fails if they do not come in time."""
    timer = threading.Timer(timeout, stream.cancel)
    timer.start()
    try:
        events = [event for _, event in zip(range(count), stream, strict=False)]
    finally:
        timer.cancel()
    assert len(events) == count, f"got {len(events)} of {count} events in {timeout}s"
    return events


# -- entries ------------------------------------------------------------------------


def test_entry_fields(client: Client, session_id: str) -> None:
    before = time.time()
    session = client.session(session_id)
    miss = session.query_persons(name=person_name(10))
    hit = session.query_persons(name=person_name(10))
    assert (miss.cache_status, hit.cache_status) == (pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_HIT)

    (entry,) = session.list_cache_keys()
    assert entry.key == miss.cache_key
    assert len(entry.digest) == 12
    assert int(entry.digest, 16) >= 0
    assert entry.region == LOCAL_REGION
    assert "FROM" in entry.statement
    assert "'person 10'" in entry.parameters.values()
    assert entry.entity == "Person"
    assert entry.rows == 1
    assert before - 1 <= seconds(entry.stored_at) <= seconds(entry.last_access) <= time.time()
    assert entry.hits == 1
    assert entry.size_bytes > 0
    assert entry.no_expiry
    assert not entry.HasField("expires_in")
    assert entry.live_objects >= 1
    assert entry.sql_statements == miss.sql_statements, "what storing it took, lazy loads too"


def test_entry_expiry(make_server: MakeServer, database_url: str, session_id: str) -> None:
    server = make_server(database_url, local_expiration=60)
    with Client(server.target) as client:
        session = client.session(session_id)
        basic(session, 11)
        (entry,) = session.list_cache_keys()
    assert not entry.no_expiry
    assert 50 < entry.expires_in.ToNanoseconds() / 1e9 <= 60


def test_listing_is_not_an_access(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    basic(session, 12)
    basic(session, 12)
    first = session.list_cache_keys(region=ALL_REGIONS)
    time.sleep(0.01)
    second = session.list_cache_keys(region=ALL_REGIONS)
    for entry in (*first, *second):
        entry.ClearField("expires_in")  # the only field that moves with time
    assert first == second
    local = [entry for entry in second if entry.region == LOCAL_REGION]
    assert [entry.hits for entry in local] == [1]
    assert basic(session, 12).cache_status == pb.CACHE_STATUS_HIT
    (entry,) = session.list_cache_keys()
    assert entry.hits == 2
    assert seconds(entry.last_access) > seconds(local[0].last_access)


def test_listing_filters_by_region_and_entity(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    session.query_persons(name=person_name(13))  # addresses: their bits go to the shared region

    local = session.list_cache_keys()
    assert local == session.list_cache_keys(region=LOCAL_REGION)
    assert [(e.region, e.entity) for e in local] == [(LOCAL_REGION, "Person")]

    shared = session.list_cache_keys(region=SHARED_REGION)
    assert {entry.region for entry in shared} == {SHARED_REGION}
    assert {"PostalCode", "City", "Country"} <= {entry.entity for entry in shared}
    assert all(entry.live_objects == 0 for entry in shared), "shared entries are copies"

    both = session.list_cache_keys(region=ALL_REGIONS)
    assert [e.key for e in both] == [e.key for e in local] + [e.key for e in shared]

    cities = session.list_cache_keys(region=ALL_REGIONS, entity="City")
    assert cities
    assert {entry.entity for entry in cities} == {"City"}
    assert session.list_cache_keys(entity="City") == []
    assert session.list_cache_keys(region=ALL_REGIONS, entity="Person") == local

    with pytest.raises(InvalidArgument) as bad_region:
        session.list_cache_keys(region="nope")
    assert bad_region.value.field_violations[0][0] == "region"
    with pytest.raises(InvalidArgument) as bad_order:
        session.list_cache_keys(order_by=99)  # type: ignore[arg-type]
    assert bad_order.value.field_violations[0][0] == "order_by"
    with pytest.raises(InvalidArgument):
        session.list_cache_keys(order_by="newest")  # type: ignore[arg-type]


def test_listing_orders_and_pages(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    small = basic(session, 14).cache_key
    large = session.query_persons(name_first=person_name(20), name_last=person_name(29)).cache_key
    popular = basic(session, 15).cache_key
    for _ in range(3):
        basic(session, 15)
    basic(session, 14)

    def keys(**options: object) -> list[str]:
        return [entry.key for entry in session.list_cache_keys(**options)]  # type: ignore[arg-type]

    assert keys() == [small, large, popular]
    assert keys(order_by="stored") == [small, large, popular]
    assert keys(order_by="hits") == [popular, small, large]
    assert keys(order_by=pb.CACHE_ENTRY_ORDER_HITS) == [popular, small, large]
    assert keys(order_by="size")[0] == large
    sizes = [entry.size_bytes for entry in session.list_cache_keys(order_by="size")]
    assert sizes == sorted(sizes, reverse=True)
    assert keys(order_by="hits", page_size=1) == [popular, small, large], "paging keeps order"


# -- statistics ---------------------------------------------------------------------


def test_session_stats(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    with pytest.raises(SessionNotFound):
        session.get_stats()
    miss = basic(session, 16)
    basic(session, 16)
    basic(session, 16)
    session.query_persons(name=person_name(17), view="basic", bypass_cache=True)

    stats = session.get_stats()
    own = stats.session
    assert (own.hits, own.misses, own.stores) == (2, 1, 1)
    assert own.sql_statements == miss.sql_statements + 1, "the miss and the bypass"
    assert own.sql_statements_saved == 2 * miss.sql_statements, "each hit saved the miss's SQL"
    assert own.hit_ratio == pytest.approx(2 / 3)
    (entry,) = session.list_cache_keys()
    assert (own.entries, own.size_bytes) == (1, entry.size_bytes)
    assert (own.evictions, own.expirations, own.invalidations) == (0, 0, 0)
    assert stats.HasField("server")
    assert stats.server.hits >= own.hits

    full = session.query_persons(name=person_name(18))
    assert session.query_persons(name=person_name(18)).cache_status == pb.CACHE_STATUS_HIT
    (_, entry) = session.list_cache_keys()
    own = session.get_stats().session
    assert own.sql_statements == 2 * miss.sql_statements + full.sql_statements
    assert entry.sql_statements == full.sql_statements
    assert own.sql_statements_saved == 2 * miss.sql_statements + full.sql_statements

    before = session.reset_stats()
    assert (before.hits, before.misses) == (3, 2)
    after = session.get_stats().session
    assert (after.hits, after.misses, after.sql_statements) == (0, 0, 0)
    assert seconds(after.since) > seconds(before.since)
    assert after.entries == 2, "a reset keeps the cache"


def test_server_stats_and_reset(make_server: MakeServer, database_url: str) -> None:
    server = make_server(database_url)
    with Client(server.target) as client:
        first, second = client.session("first"), client.session("second")
        miss = basic(first, 1)
        basic(first, 1)
        basic(second, 2)
        basic(second, 2)
        basic(second, 2)
        first.invalidate_key(miss.cache_key)
        second.end()

        stats = client.server_stats()
        assert (stats.hits, stats.misses, stats.stores, stats.invalidations) == (3, 2, 2, 1)
        assert stats.sql_statements == 2 * miss.sql_statements
        assert stats.sql_statements_saved == 3 * miss.sql_statements
        assert stats.hit_ratio == pytest.approx(3 / 5)
        # Invalidated and ended: what is left is the record of the invalidation
        # in the first session (it explains a later miss of that key).
        assert (stats.entries, stats.size_bytes) == (0, REMOVAL_SIZE)
        assert (stats.sessions, stats.sessions_ended) == (1, 1)
        assert first.get_stats().server == stats

        third = client.session("third")
        basic(third, 3)
        (entry,) = third.list_cache_keys()
        stats = client.server_stats()
        assert (stats.entries, stats.size_bytes) == (1, entry.size_bytes + REMOVAL_SIZE)

        before = client.reset_server_stats()
        assert (before.hits, before.misses) == (3, 3)
        after = client.server_stats()
        assert (after.hits, after.misses, after.sql_statements) == (0, 0, 0)
        assert after.entries == 1, "a reset keeps the caches"
        assert third.get_stats().session.misses == 1, "session counters are their own"


def test_server_stats_count_sessions_evicted_and_expired(
    make_server: MakeServer, database_url: str
) -> None:
    server = make_server(database_url, max_sessions=1, session_idle_timeout=1.0)
    with Client(server.target) as client:
        basic(client.session("first"), 1)
        basic(client.session("second"), 1)  # evicts the idle first
        stats = client.server_stats()
        assert (stats.sessions_evicted, stats.sessions_expired, stats.sessions_ended) == (1, 0, 1)
        wait_for(lambda: client.server_stats().sessions_expired == 1, timeout=10)
        stats = client.server_stats()
        assert (stats.sessions_evicted, stats.sessions_ended, stats.sessions) == (1, 2, 0)


def test_evictions_and_expirations(make_server: MakeServer, database_url: str) -> None:
    server = make_server(
        database_url,
        max_entries_per_session=1,
        local_expiration=0.2,
        session_idle_timeout=2.0,  # the upkeep sweeps idle sessions every 0.5 s
    )
    with Client(server.target) as client:
        session = client.session("bounded")
        with session.watch(types=["evict", "expire"]) as events:
            basic(session, 1)
            basic(session, 2)
            assert session.get_stats().session.evictions == 1
            (evicted,) = collect(events, 1)
            assert evicted.type == EVICT
            assert [entry.rows for entry in session.list_cache_keys()] == [1]

            wait_for(lambda: client.server_stats().expirations == 1)
            (expired,) = collect(events, 1)
            assert expired.type == EXPIRE
        stats = session.get_stats()
        assert (stats.session.evictions, stats.session.expirations) == (1, 1)
        assert (stats.server.evictions, stats.server.entries) == (1, 0)
        assert session.list_cache_keys() == []


def test_shared_region_expiry_is_counted_and_published(
    make_server: MakeServer, sqlite_url: str
) -> None:
    server = make_server(sqlite_url, shared_region_expiration=0.2, session_idle_timeout=2.0)
    with Client(server.target) as client:
        session = client.session("expiring")
        with client.watch_all(types=["expire"]) as events:
            session.query_persons(name=person_name(1))
            shared = session.list_cache_keys(region=SHARED_REGION)
            assert shared
            wait_for(lambda: session.list_cache_keys(region=SHARED_REGION) == [])
            assert client.server_stats().expirations == len(shared)
            expired = collect(events, len(shared), timeout=2)
        assert {event.region for event in expired} == {SHARED_REGION}


# -- invalidation -------------------------------------------------------------------


def test_invalidate_by_key_and_by_digest(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    first = basic(session, 21)
    second = basic(session, 22)
    entries = {entry.key: entry for entry in session.list_cache_keys()}

    (removed,) = session.invalidate_key(first.cache_key)
    removed.live_objects = entries[first.cache_key].live_objects
    assert removed == entries[first.cache_key]
    (removed,) = session.invalidate_key(entries[second.cache_key].digest)
    assert removed.key == second.cache_key
    assert session.list_cache_keys() == []
    assert session.invalidate_key(first.cache_key) == [], "nothing left to remove"
    assert basic(session, 21).cache_status == pb.CACHE_STATUS_MISS
    assert session.get_stats().session.invalidations == 2

    with pytest.raises(InvalidArgument):
        session.invalidate_key("")
    with pytest.raises(SessionNotFound):
        client.session(f"{session_id}-new").invalidate_key(first.cache_key)


def test_invalidate_a_shared_entry_by_digest(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    session.query_persons(name=person_name(23))
    country = session.list_cache_keys(region=SHARED_REGION, entity="Country")[0]
    (removed,) = session.invalidate_key(country.digest)
    assert (removed.key, removed.region) == (country.key, SHARED_REGION)
    shared = session.list_cache_keys(region=SHARED_REGION)
    assert country.key not in {entry.key for entry in shared}


def test_invalidate_query(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    target = session.query_persons(name_first=person_name(30), name_last=person_name(33))
    other = basic(session, 30)

    (removed,) = session.invalidate_query(name_first=person_name(30), name_last=person_name(33))
    assert (removed.key, removed.rows) == (target.cache_key, 4)
    assert session.invalidate_query(name=person_name(31)) == [], "not cached"
    again = session.query_persons(name_first=person_name(30), name_last=person_name(33))
    assert again.cache_status == pb.CACHE_STATUS_MISS
    assert again.cache_key == target.cache_key
    still = basic(session, 30)
    assert (still.cache_status, still.cache_key) == (pb.CACHE_STATUS_HIT, other.cache_key)

    with pytest.raises(InvalidArgument) as bad:
        session.invalidate_query(ids=[0])
    assert bad.value.field_violations[0][0].endswith("ids[0]")


def test_clear_the_session_cache_keeps_the_session(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    keys = {basic(session, n).cache_key for n in (24, 25, 26)}

    removed = session.clear_cache()
    assert {entry.key for entry in removed} == keys
    assert session.list_cache_keys() == [], "empty, and no NOT_FOUND: the session stays"
    stats = session.get_stats().session
    assert (stats.entries, stats.invalidations, stats.misses) == (0, 3, 3)
    assert session.clear_cache() == []
    assert basic(session, 24).cache_status == pb.CACHE_STATUS_MISS


def test_invalidate_the_shared_region(make_server: MakeServer, database_url: str) -> None:
    server = make_server(database_url)
    with Client(server.target) as client:
        warm = client.session("warm").query_persons(name=person_name(5))
        assert warm.sql_statements > 1, "the address bits were loaded"
        assert client.session("second").query_persons(name=person_name(5)).sql_statements == 1
        shared = {e.key for e in client.session("warm").list_cache_keys(region=SHARED_REGION)}
        assert shared

        removed = client.invalidate_shared_region()
        assert {entry.key for entry in removed} == shared
        assert {entry.region for entry in removed} == {SHARED_REGION}
        assert all(entry.entity and entry.rows == 1 for entry in removed)
        assert client.session("warm").list_cache_keys(region=SHARED_REGION) == []
        assert client.server_stats().invalidations == len(shared)
        assert client.invalidate_shared_region() == []

        cold = client.session("third").query_persons(name=person_name(5))
        assert cold.sql_statements == warm.sql_statements, "the address bits are loaded again"


# -- sessions -----------------------------------------------------------------------


def test_list_sessions(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url)
    with Client(server.target) as client:
        started = time.time()
        ids = ["s-one", "s-two", "s-three"]
        for number, session_id in enumerate(ids, start=1):
            basic(client.session(session_id), number)
        (entry,) = client.session("s-one").list_cache_keys()
        basic(client.session("s-one"), 1)  # a hit: s-one is now the most recently active
        entry.hits = 1
        entry.ClearField("last_access")

        sessions = client.list_sessions()
        assert sorted(info.id for info in sessions) == sorted(ids)
        (one,) = [info for info in sessions if info.id == "s-one"]
        (two,) = [info for info in sessions if info.id == "s-two"]
        assert (one.entries, one.size_bytes, one.hits, one.misses) == (1, entry.size_bytes, 1, 1)
        assert one.peer.startswith("ipv4:127.0.0.1:")
        assert started - 1 <= seconds(one.created) <= seconds(one.last_active) <= time.time()
        assert seconds(one.last_active) > seconds(two.last_active)
        assert one.calls_in_flight == 0
        assert len({info.handle for info in sessions}) == 3

        assert [info.id for info in client.list_sessions(page_size=1)] == [
            info.id for info in sessions
        ], "following pages gives the same list"
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SessionCacheStub(channel)
            page = stub.ListSessions(pb.ListSessionsRequest(page_size=2))
            assert (len(page.sessions), page.total_size) == (2, 3)
            rest = stub.ListSessions(
                pb.ListSessionsRequest(page_size=2, page_token=page.next_page_token)
            )
            assert (len(rest.sessions), rest.next_page_token) == (1, "")
            paged = [info.id for info in (*page.sessions, *rest.sessions)]
            assert paged == [info.id for info in sessions]

        (listed,) = client.list_cache_keys_of(one.handle)
        listed.ClearField("last_access")
        assert listed == entry
        with pytest.raises(SessionNotFound):
            client.list_cache_keys_of("0123456789abcdef")
        with pytest.raises(InvalidArgument):
            client.list_sessions(page_size=-1)


def test_list_sessions_oldest_first_whatever_their_activity(
    make_server: MakeServer, sqlite_url: str
) -> None:
    server = make_server(sqlite_url)
    with Client(server.target) as client:
        for number, session_id in enumerate(["first", "second", "third"], start=1):
            basic(client.session(session_id), number)
        basic(client.session("first"), 1)  # activity does not reorder (stable paging)
        assert [info.id for info in client.list_sessions()] == ["first", "second", "third"]


def test_sessions_with_authentication(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url, auth_tokens=AUTH_TOKENS)
    with (
        Client(server.target, token="a") as alice,
        Client(server.target, token="b") as bob,
        Client(server.target, token="root") as root,
    ):
        mine = alice.session("shared-name")
        basic(mine, 1)
        basic(bob.session("shared-name"), 2)

        for call in (
            alice.list_sessions,
            lambda: alice.end_idle_sessions(60),
            alice.reset_server_stats,
            alice.invalidate_shared_region,
            lambda: alice.list_cache_keys_of("0123456789abcdef"),
            alice.watch_all,
        ):
            with pytest.raises(PermissionDenied):
                call()

        sessions = root.list_sessions()
        label = server.running.inspector.label if server.running else None
        assert label is not None
        # Keyed hashes over (principal, id): the same id of two principals differs.
        assert [info.id for info in sessions] == [
            label(("alice", "shared-name")),
            label(("bob", "shared-name")),
        ]
        assert len({info.id for info in sessions}) == 2
        assert all(info.id.startswith("h:") for info in sessions)
        assert all("shared-name" not in info.handle for info in sessions)
        # Each principal's session is its own: their handles differ, their entries too.
        entries = [root.list_cache_keys_of(info.handle) for info in sessions]
        assert [e.key for (e,) in entries] == [
            mine.list_cache_keys()[0].key,
            bob.session("shared-name").list_cache_keys()[0].key,
        ]
        assert mine.get_stats().session.misses == 1, "a user reads its own statistics"
        assert root.reset_server_stats().misses == 2


def test_end_idle_sessions(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url)
    with Client(server.target) as client:
        for number, session_id in enumerate(["idle-1", "idle-2"], start=1):
            basic(client.session(session_id), number)
            basic(client.session(session_id), number + 10)
        time.sleep(0.6)
        active = client.session("active")
        basic(active, 3)

        ended = client.end_idle_sessions(0.5)
        assert (ended.ended, ended.keys_dropped) == (2, 4)
        assert [info.id for info in client.list_sessions()] == ["active"]
        with pytest.raises(SessionNotFound):
            client.session("idle-1").list_cache_keys()
        assert client.server_stats().sessions_ended == 2
        assert client.end_idle_sessions(3600).ended == 0

        for bad in (0, -1):
            with pytest.raises(InvalidArgument) as error:
                client.end_idle_sessions(bad)
            assert error.value.field_violations[0][0] == "min_idle"
        with pytest.raises(InvalidArgument):
            client.end_idle_sessions(float("nan"))


# -- live events ----------------------------------------------------------------------


def test_watch_a_session(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    with session.watch() as events:
        miss = basic(session, 40)
        basic(session, 40)
        session.invalidate_key(miss.cache_key)
        session.end()
        received = collect(events, 5)
    assert [event.type for event in received] == [MISS, STORE, HIT, INVALIDATE, SESSION_END]
    assert {event.session for event in received} == {session_id}
    for event in received[:4]:
        assert (event.region, event.key, event.rows, event.lost) == (
            LOCAL_REGION,
            miss.cache_key,
            1,
            0,
        )
    digests = {event.digest for event in received[:4]}
    assert len(digests) == 1
    assert len(digests.pop()) == 12
    times = [seconds(event.time) for event in received]
    assert times == sorted(times)
    assert received[4].rows == 0, "no keys left to drop: the entry was invalidated"
    assert events.cancelled
    assert list(events) == []


def test_watch_filters_by_type_and_session(client: Client, session_id: str) -> None:
    session, other = client.session(session_id), client.session(f"{session_id}-other")
    with session.watch(types=["hit", pb.CACHE_EVENT_TYPE_SESSION_END]) as events:
        basic(session, 41)
        basic(other, 41)
        basic(other, 41)
        basic(session, 41)
        other.end()
        session.end()
        received = collect(events, 2)
    assert [(e.type, e.session) for e in received] == [(HIT, session_id), (SESSION_END, session_id)]

    with pytest.raises(InvalidArgument) as bad:
        session.watch(types=["nope"])  # type: ignore[list-item]
    assert bad.value.field_violations[0][0] == "types[0]"
    with pytest.raises(InvalidArgument) as unknown:
        session.watch(types=[42])  # type: ignore[list-item]
    assert unknown.value.field_violations[0][0] == "types[0]", "the server checks too"


def test_watch_ends_after_its_duration(client: Client, session_id: str) -> None:
    started = time.monotonic()
    with client.session(session_id).watch(duration=0.3) as events:
        assert list(events) == []
    assert 0.25 < time.monotonic() - started < 5


def test_watch_every_session(make_server: MakeServer, sqlite_url: str) -> None:
    server = make_server(sqlite_url, auth_tokens=AUTH_TOKENS)
    with (
        Client(server.target, token="a") as alice,
        Client(server.target, token="b") as bob,
        Client(server.target, token="root") as root,
    ):
        with root.watch_all(types=["miss"]) as every, alice.session("mine").watch() as own:
            bobs = basic(bob.session("mine"), 2)  # the same id, another principal's session
            alices = basic(alice.session("mine"), 1)
            everyone = collect(every, 2)
            (first, second) = collect(own, 2)
        assert [e.key for e in everyone] == [bobs.cache_key, alices.cache_key]
        assert server.running is not None
        label = server.running.inspector.label
        assert [e.session for e in everyone] == [label(("bob", "mine")), label(("alice", "mine"))]
        assert (first.type, second.type) == (MISS, STORE)
        assert first.key == alices.cache_key, "bob's session is not alice's"
        assert first.session == label(("alice", "mine")), "hashed for its owner too"


def test_a_slow_subscriber_loses_events_with_a_count(
    make_server: MakeServer, sqlite_url: str
) -> None:
    """A burst larger than the subscriber's buffer: the excess is lost and counted.

    Ending sessions in bulk publishes one SESSION_END per session within one
    step of the server's event loop, so the watcher cannot read in between:
    with the default buffer of 1000 events, the ring it reads keeps the last
    1000, exactly the excess (the oldest) is lost, and the first event
    delivered says how many.
    """
    buffer: int = inspect.signature(SessionCacheServicer).parameters["watch_buffer"].default
    extra = 25
    server = make_server(sqlite_url)
    with Client(server.target) as client:
        # Only a query opens a session: one cheap query each.
        for number in range(buffer + extra):
            client.session(f"burst-{number}").query_persons(ids=[1], view="basic")
        with client.watch_all(types=["session_end"]) as events:
            started = time.monotonic()
            assert client.end_idle_sessions(1e-9).ended == buffer + extra
            assert time.monotonic() - started < 5, "publishing never waits for a subscriber"
            delivered = collect(events, buffer, timeout=20)
            assert [event.lost for event in delivered] == [extra] + [0] * (buffer - 1)
            basic(client.session("after"), 1)  # a miss and a store: not of its type
            client.session("after").end()
            (after,) = collect(events, 1)
        assert after.session == "after"
        assert after.lost == 0, "the events of other types it skipped are not lost"
        assert events.lost == extra
        assert events.received == buffer + 1


def test_a_stalled_subscriber_does_not_slow_the_cache(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    basic(session, 42)

    def hits(count: int) -> float:
        started = time.monotonic()
        for _ in range(count):
            assert basic(session, 42).cache_status == pb.CACHE_STATUS_HIT
        return time.monotonic() - started

    unwatched = hits(200)
    with session.watch(types=["hit"]) as stalled:  # not read while the hits run
        watched = hits(200)
        received = collect(stalled, 200)
    assert watched < 3 * unwatched + 0.5
    assert len(received) == 200
    assert stalled.lost == 0, "within its buffer a slow reader loses nothing"


# -- relationships and the shared region -------------------------------------------------


def test_addresses_through_the_shared_region(make_server: MakeServer, database_url: str) -> None:
    server = make_server(database_url)
    with Client(server.target) as client:
        first = client.session("first").query_persons(name=person_name(7))
        (person,) = first.persons
        assert person.addresses
        assert all(a.postal_code and a.city and a.country for a in person.addresses)
        bits = {
            "PostalCode": {a.postal_code for a in person.addresses},
            "City": {a.city for a in person.addresses},
            "Country": {a.country for a in person.addresses},
        }
        lazy_loads = sum(len(values) for values in bits.values())
        assert first.sql_statements == 1 + lazy_loads, "the page, then each bit once"

        second = client.session("second").query_persons(name=person_name(7))
        assert second.cache_status == pb.CACHE_STATUS_MISS
        assert second.sql_statements == 1, "the address bits came from the shared region"
        assert second.persons == first.persons
        assert client.session("second").query_persons(name=person_name(7)).sql_statements == 0

        listing = client.session("second").list_cache_keys(region=ALL_REGIONS)
        assert [e.region for e in listing[:1]] == [LOCAL_REGION]
        shared = [entry for entry in listing if entry.region == SHARED_REGION]
        assert sorted(entry.entity for entry in shared) == sorted(
            entity for entity, values in bits.items() for _ in values
        )
        for entry in shared:
            assert entry.rows == 1
            assert "FROM" in entry.statement
            assert not entry.no_expiry
            assert entry.expires_in.ToNanoseconds() > 0
            assert entry.hits >= 1, "the second session read it"
        server_stats = client.server_stats()
        assert server_stats.entries == 2 + len(shared)
