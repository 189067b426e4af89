"""Hostile clients against the hardened server: bounded statuses, isolation, quotas, paging.

Each test runs a real server (in-process, port 0) and talks to it through
the real client or raw ``sesscache.v1`` stubs, so requests the client would
refuse locally (huge fields, bad enums, unknown fields, huge metadata) reach
the server. Every test here fails if the hardening it covers is undone:

- statuses stay small whatever a client sends (a property test over every RPC);
- with authentication on, one principal never sees, lists, ends, resets,
  invalidates or watches another's sessions or entries;
- session quotas end the caller's own idle sessions, never another's;
- session caches are bounded in bytes, responses in ``max_response_bytes``;
- keyset paging neither skips nor repeats live entries while others go;
- requests are validated before any state is looked at;
- session hashes are keyed by principal and server secret;
- per-call work is O(1) in the number of live sessions.

Validation, auth and the registry do not depend on the database, so most
tests run on SQLite; paging under removal runs on both backends.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sesscache.registry import SessionRegistry
from sesscache_client import Client
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.errors import quote
from tests.conftest import settings_for
from tests.support.polling import wait_until
from tests.support.servers import ServerThread

AUTH = "a=alice,b=bob,root=root:admin"
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
#: What one failed call may carry back: trailers plus its details.
STATUS_BUDGET = 4096
SERVICE = "/sesscache.v1.SessionCache/"
Metadata = tuple[tuple[str, str], ...]


def metadata(session: str | None = None, token: str | None = None) -> Metadata:
    result: list[tuple[str, str]] = []
    if session is not None:
        result.append(("session-id", session))
    if token is not None:
        result.append(("authorization", f"Bearer {token}"))
    return tuple(result)


class Raw:
    """Raw stubs on one server, with helpers for calls that must fail."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        self.stub = pb_grpc.SessionCacheStub(self.channel)

    @property
    def registry(self) -> SessionRegistry:
        assert self.server.running is not None
        return self.server.running.registry

    def call(
        self, rpc: str, request: Any, session: str | None = None, token: str | None = None
    ) -> Any:
        return getattr(self.stub, rpc)(request, metadata=metadata(session, token), timeout=30)

    def error(
        self, rpc: str, request: Any, session: str | None = None, token: str | None = None
    ) -> grpc.RpcError:
        try:
            self.call(rpc, request, session, token)
        except grpc.RpcError as error:
            return error
        pytest.fail(f"{rpc} succeeded")

    def code(
        self, rpc: str, request: Any, session: str | None = None, token: str | None = None
    ) -> grpc.StatusCode:
        return self.error(rpc, request, session, token).code()

    def query(
        self, session: str, token: str | None = None, **fields: Any
    ) -> pb.QueryPersonsResponse:
        fields.setdefault("view", pb.PERSON_VIEW_BASIC)
        return self.call("QueryPersons", pb.QueryPersonsRequest(**fields), session, token)  # type: ignore[no-any-return]

    def keys(self, sid: str | None, token: str | None = None, **fields: Any) -> list[pb.CacheEntry]:
        """Every entry of a listing, following every page."""
        request = pb.ListCacheKeysRequest(**fields)
        entries: list[pb.CacheEntry] = []
        while True:
            response = self.call("ListCacheKeys", request, sid, token)
            entries.extend(response.entries)
            if not response.next_page_token:
                return entries
            request.page_token = response.next_page_token

    def close(self) -> None:
        self.channel.close()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'sesscache.db'}"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with authentication on (alice, bob, root the admin), shared by the module."""
    url = sqlite_url(tmp_path_factory.mktemp("hostile"))
    with ServerThread(settings_for(url, auth_tokens=AUTH)) as running:
        yield running


@pytest.fixture(scope="module")
def raw(auth_server: ServerThread) -> Iterator[Raw]:
    stubs = Raw(auth_server)
    yield stubs
    stubs.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


def unique(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- 1. statuses are bounded ---------------------------------------------------------------


def test_quote_cuts_a_long_value() -> None:
    assert quote("abc") == "'abc'"
    quoted = quote("x" * 5000)
    assert quoted == repr("x" * 64) + "... (5000 characters)"
    assert len(quoted) < 100


def _huge(chars: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda char, count: char * count, st.sampled_from(list(chars)), st.integers(257, 100_000)
    )


TEXT = st.one_of(
    st.text(max_size=20),
    _huge("x'\"\\é\x00\U0001f600"),
    st.just("h" * 5000),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
IDS = st.one_of(
    st.lists(INT64, max_size=20),
    st.integers(1001, 20_000).map(lambda n: [-1] * n),
    st.integers(11, 1000).map(lambda n: list(range(-n, 0))),
)


def _persons() -> st.SearchStrategy[pb.QueryPersonsRequest]:
    return st.builds(
        lambda name, first, last, ids, size, token, view: pb.QueryPersonsRequest(
            name=name,
            name_range=pb.NameRange(first=first, last=last),
            ids=ids,
            page_size=size,
            page_token=token,
            view=view,
        ),
        TEXT,
        TEXT,
        TEXT,
        IDS,
        INT32,
        TEXT,
        INT32,
    )


def _invalidate() -> st.SearchStrategy[pb.InvalidateRequest]:
    return st.one_of(
        st.just(pb.InvalidateRequest()),
        TEXT.map(lambda key: pb.InvalidateRequest(key=key)),
        _persons().map(lambda query: pb.InvalidateRequest(query=query)),
        st.just(pb.InvalidateRequest(session_cache=True)),
        st.just(pb.InvalidateRequest(shared_region=True)),
    )


REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "QueryPersons": _persons(),
    "ListCacheKeys": st.builds(
        lambda size, token, region, entity, order, session: pb.ListCacheKeysRequest(
            page_size=size,
            page_token=token,
            region=region,
            entity=entity,
            order_by=order,
            session=session,
        ),
        INT32,
        TEXT,
        TEXT,
        TEXT,
        INT32,
        TEXT,
    ),
    "EndSession": st.just(pb.EndSessionRequest()),
    "GetStats": st.just(pb.GetStatsRequest()),
    "ResetStats": st.builds(pb.ResetStatsRequest, server=st.booleans()),
    "Invalidate": _invalidate(),
    "ListSessions": st.builds(
        lambda size, token: pb.ListSessionsRequest(page_size=size, page_token=token), INT32, TEXT
    ),
    "EndSessions": st.builds(
        lambda seconds, nanos: pb.EndSessionsRequest(
            min_idle=duration_pb2.Duration(seconds=seconds, nanos=nanos)
        ),
        st.integers(-(10**12), 10**12),
        INT32,
    ),
    "WatchCacheEvents": st.builds(
        lambda every, types: pb.WatchCacheEventsRequest(all_sessions=every, types=types),
        st.booleans(),
        st.one_of(st.lists(INT32, max_size=20), st.integers(13, 20_000).map(lambda n: [-7] * n)),
    ),
}
SESSION_IDS = st.sampled_from([None, "hostile-1", "s" * 5000, "bad id!", "-" * 129])
TOKENS = st.sampled_from([None, "root", "a", "b", "nobody", "t" * 5000])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def unknown_field(size: int, number: int = 1000) -> bytes:
    """A length-delimited field no message of the contract has, of ``size`` payload bytes."""
    if size == 0:
        return b""
    return _varint(number << 3 | 2) + _varint(size) + b"\x01" * size


def status_size(error: grpc.RpcError) -> int:
    """Bytes the failed call carried back: its trailers (every key and value) and its details."""
    trailers: Any = error.trailing_metadata() or ()
    total = sum(len(key) + len(value) for key, value in trailers)
    return total + len(error.details() or "")


def _send(channel: grpc.Channel, rpc: str, raw: bytes, md: Metadata) -> grpc.RpcError | None:
    identity: Callable[[bytes], bytes] = lambda data: data  # noqa: E731
    try:
        if rpc == "WatchCacheEvents":
            stream = channel.unary_stream(
                SERVICE + rpc, request_serializer=identity, response_deserializer=identity
            )
            for _ in stream(raw, metadata=md, timeout=0.3):
                pass
        else:
            unary = channel.unary_unary(
                SERVICE + rpc, request_serializer=identity, response_deserializer=identity
            )
            unary(raw, metadata=md, timeout=30)
    except grpc.RpcError as error:
        return error
    return None


@pytest.mark.parametrize("rpc", list(REQUESTS))
def test_statuses_stay_small_whatever_is_sent(raw: Raw, rpc: str) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        request=REQUESTS[rpc],
        padding=st.one_of(st.just(0), st.integers(1, 1 << 20)),
        session=SESSION_IDS,
        token=TOKENS,
    )
    def check(request: Any, padding: int, session: str | None, token: str | None) -> None:
        data = request.SerializeToString() + unknown_field(padding)
        error = _send(raw.channel, rpc, data, metadata(session, token))
        if error is None:
            return
        code = error.code()
        assert code not in NEVER, (code, (error.details() or ""))
        assert status_size(error) < STATUS_BUDGET, (code, status_size(error))

    check()


def test_many_violations_are_capped_and_short(raw: Raw) -> None:
    # 3 x 50,000 characters: under max_request_bytes (256 KiB), so the server parses it.
    request = pb.QueryPersonsRequest(
        name="n" * 50_000,
        name_range=pb.NameRange(first="z" * 50_000, last="a" * 50_000),
        ids=list(range(-500, 0)),
        page_size=-1,
        view=cast(pb.PersonView.ValueType, 77),
    )
    error = raw.error("QueryPersons", request, "hostile-v", "a")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert len(status.message) <= 1024
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert 1 <= len(bad.field_violations) <= 13  # 12 and the "more" line at most
    assert all(len(v.description) <= 300 for v in bad.field_violations)
    assert status_size(error) < STATUS_BUDGET


def test_a_long_value_is_quoted_not_echoed(raw: Raw) -> None:
    error = raw.error("ListCacheKeys", pb.ListCacheKeysRequest(region="r" * 5000), "hostile-q", "a")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "(5000 characters)" in (error.details() or "")
    assert "r" * 65 not in (error.details() or "")


# -- 2. per-principal isolation -------------------------------------------------------------


def _watch_events(
    raw: Raw,
    request: pb.WatchCacheEventsRequest,
    session: str,
    token: str,
    during: Callable[[], None],
) -> list[pb.CacheEvent]:
    """Events a watcher gets while ``during`` runs (the stream open before it starts)."""
    call = raw.stub.WatchCacheEvents(request, metadata=metadata(session, token), timeout=3)
    call.initial_metadata()  # the subscription is in place
    during()
    events: list[pb.CacheEvent] = []
    try:
        for event in call:
            events.append(event)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return events


def test_bob_never_reaches_alices_session(raw: Raw) -> None:
    shared = unique("same-id")
    with Client(raw.server.target, token="a", timeout=30) as alice_client:
        alice = alice_client.session(shared)
        first = alice.query_persons(name="person 10")
        assert alice.query_persons(name="person 10").cache_status == pb.CACHE_STATUS_HIT
        mine = alice.list_cache_keys()
        assert [entry.key for entry in mine] == [first.cache_key]
        hits_before = alice.get_stats().session.hits
    state = raw.registry.get(shared, principal="alice")
    assert state is not None
    handle = state.handle
    digest = mine[0].digest

    # Bob, same session id, before he has a session of his own.
    assert (
        raw.code("ListCacheKeys", pb.ListCacheKeysRequest(), shared, "b")
        == grpc.StatusCode.NOT_FOUND
    )
    assert raw.code("GetStats", pb.GetStatsRequest(), shared, "b") == grpc.StatusCode.NOT_FOUND
    assert raw.code("ResetStats", pb.ResetStatsRequest(), shared, "b") == grpc.StatusCode.NOT_FOUND
    assert raw.code("Invalidate", pb.InvalidateRequest(session_cache=True), shared, "b") == (
        grpc.StatusCode.NOT_FOUND
    )
    assert not raw.call("EndSession", pb.EndSessionRequest(), shared, "b").existed
    # Handles are for admins.
    assert raw.code("ListCacheKeys", pb.ListCacheKeysRequest(session=handle), shared, "b") == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert raw.code("ListCacheKeys", pb.ListCacheKeysRequest(session=handle), None, "b") == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert raw.code("ListSessions", pb.ListSessionsRequest(), None, "b") == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        raw.code(
            "EndSessions",
            pb.EndSessionsRequest(min_idle=duration_pb2.Duration(seconds=1)),
            None,
            "b",
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert raw.code("ResetStats", pb.ResetStatsRequest(server=True), shared, "b") == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert raw.code("Invalidate", pb.InvalidateRequest(shared_region=True), shared, "b") == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    # Bob with a session of his own under the same id.
    bob_query = raw.query(shared, "b", name="person 11")
    assert bob_query.cache_status == pb.CACHE_STATUS_MISS
    assert [e.key for e in raw.keys(shared, "b")] == [bob_query.cache_key]
    for target in (digest, first.cache_key):
        removed = raw.call("Invalidate", pb.InvalidateRequest(key=target), shared, "b")
        assert removed.removed_count == 0
    same_query = pb.InvalidateRequest(query=pb.QueryPersonsRequest(name="person 10"))
    assert raw.call("Invalidate", same_query, shared, "b").removed_count == 0
    assert raw.call("ResetStats", pb.ResetStatsRequest(), shared, "b").before.hits == 0
    stats = raw.call("GetStats", pb.GetStatsRequest(), shared, "b")
    assert stats.session.hits == 0
    assert not stats.HasField("server")

    # Bob's watch of "his" session sees none of alice's calls, and all_sessions is refused.
    def alice_works() -> None:
        hit = raw.query(shared, "a", name="person 10", view=pb.PERSON_VIEW_FULL)
        assert hit.cache_status == pb.CACHE_STATUS_HIT
        raw.query(shared, "a", name="person 12")  # a miss and a store

    seen = _watch_events(raw, pb.WatchCacheEventsRequest(), shared, "b", alice_works)
    assert seen == []
    watch_all = raw.stub.WatchCacheEvents(
        pb.WatchCacheEventsRequest(all_sessions=True), metadata=metadata(shared, "b"), timeout=5
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(watch_all)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Bob clears and ends "his" session: alice's stays whole.
    assert (
        raw.call("Invalidate", pb.InvalidateRequest(session_cache=True), shared, "b").removed_count
        == 1
    )
    assert raw.call("EndSession", pb.EndSessionRequest(), shared, "b").existed
    left = {e.key for e in raw.keys(shared, "a")}
    assert len(left) == 2, left
    assert first.cache_key in left, left
    alice_stats = raw.call("GetStats", pb.GetStatsRequest(), shared, "a").session
    assert alice_stats.hits == hits_before + 1

    # Admins see alice's session by handle.
    assert first.cache_key in {e.key for e in raw.keys(None, "root", session=handle)}


def test_non_admins_cannot_list_or_change_the_shared_region(raw: Raw) -> None:
    admin_session, bob_session = unique("root"), unique("bob")
    raw.query(admin_session, "root", name="person 20", view=pb.PERSON_VIEW_FULL)
    shared = raw.keys(admin_session, "root", region="default")
    assert shared, "a full query stores address parts in the shared region"
    raw.query(bob_session, "b", name="person 21")
    for region in ("default", "*"):
        code = raw.code("ListCacheKeys", pb.ListCacheKeysRequest(region=region), bob_session, "b")
        assert code == grpc.StatusCode.PERMISSION_DENIED
    for entry in shared:
        for target in (entry.digest, entry.key):
            response = raw.call("Invalidate", pb.InvalidateRequest(key=target), bob_session, "b")
            assert response.removed_count == 0
    after = {e.key for e in raw.keys(admin_session, "root", region="default")}
    assert {e.key for e in shared} <= after


def test_principal_stats_are_the_principals_own(raw: Raw) -> None:
    alice, bob = unique("alice"), unique("bob")
    before = raw.call("GetStats", pb.GetStatsRequest(), None, "b").principal.hits
    raw.query(alice, "a", name="person 30")
    for _ in range(5):
        assert raw.query(alice, "a", name="person 30").cache_status == pb.CACHE_STATUS_HIT
    raw.query(bob, "b", name="person 30")
    stats = raw.call("GetStats", pb.GetStatsRequest(), bob, "b")
    assert not stats.HasField("server")
    assert stats.HasField("principal")
    assert stats.principal.hits == before
    alice_stats = raw.call("GetStats", pb.GetStatsRequest(), alice, "a")
    assert alice_stats.principal.hits >= 5
    admin = raw.call("GetStats", pb.GetStatsRequest(), None, "root")
    assert admin.HasField("server")
    assert admin.server.hits >= 5


# -- 3. session quotas -----------------------------------------------------------------------


def _hold(server: ServerThread, principal: str, session_ids: list[str]) -> list[Any]:
    """Mark sessions in use, as a call in flight does (released by :func:`_let_go`)."""
    assert server.running is not None
    registry = server.running.registry

    async def hold() -> list[Any]:
        states = [registry.get(sid, principal=principal) for sid in session_ids]
        for state in states:
            assert state is not None
            registry.acquire(state)
        return states

    return server.run(hold())


def _let_go(server: ServerThread, states: list[Any]) -> None:
    assert server.running is not None
    registry = server.running.registry

    async def release() -> None:
        for state in states:
            registry.release(state)

    server.run(release())


def test_per_principal_quota_ends_the_principals_own_idle_session(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    server = make_server(sqlite, auth_tokens=AUTH, max_sessions_per_principal=3)
    raw = Raw(server)
    try:
        bob = unique("bob")
        raw.query(bob, "b", ids=[1])
        alice = [unique("alice") for _ in range(4)]
        for sid in alice:
            raw.query(sid, "a", ids=[1])
        assert (
            raw.code("GetStats", pb.GetStatsRequest(), alice[0], "a") == grpc.StatusCode.NOT_FOUND
        )
        for sid in alice[1:]:
            raw.call("GetStats", pb.GetStatsRequest(), sid, "a")
        assert raw.keys(bob, "b")
        held = _hold(server, "alice", alice[1:])
        try:
            error = raw.error("QueryPersons", pb.QueryPersonsRequest(ids=[1]), unique("a5"), "a")
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_sessions_per_principal" in (error.details() or "")
        finally:
            _let_go(server, held)
        # Bob is not alice: his sessions are his own quota.
        raw.query(unique("bob"), "b", ids=[1])
        hit = raw.call("GetStats", pb.GetStatsRequest(), None, "root").server.limits_hit
        assert hit["max_sessions_per_principal"] == 1
    finally:
        raw.close()


def test_max_sessions_evicts_from_the_principal_holding_most(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    server = make_server(sqlite, auth_tokens=AUTH, max_sessions=12)
    raw = Raw(server)
    try:
        alice = [unique("alice") for _ in range(3)]
        alice_keys = {}
        for index, sid in enumerate(alice):
            alice_keys[sid] = raw.query(sid, "a", ids=[index + 1]).cache_key
        bob = [f"bob-{index}" for index in range(200)]
        for sid in bob:
            raw.query(sid, "b", ids=[5])
        for sid in alice:
            assert [e.key for e in raw.keys(sid, "a")] == [alice_keys[sid]]
        assert len(raw.registry) == 12
        # Full, with every session busy: refused, naming the setting.
        assert server.running is not None
        held = _hold(server, "bob", bob[-9:]) + _hold(server, "alice", alice)
        try:
            error = raw.error("QueryPersons", pb.QueryPersonsRequest(ids=[1]), unique("n"), "b")
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_sessions" in (error.details() or "")
        finally:
            _let_go(server, held)
        hit = raw.call("GetStats", pb.GetStatsRequest(), None, "root").server.limits_hit
        assert hit["max_sessions"] == 1
    finally:
        raw.close()


def test_watchers_per_principal_are_bounded(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    server = make_server(sqlite, auth_tokens=AUTH, max_watchers_per_principal=2, max_watchers=3)
    raw = Raw(server)
    calls: list[Any] = []
    try:
        for index in range(2):
            call = raw.stub.WatchCacheEvents(
                pb.WatchCacheEventsRequest(), metadata=metadata(f"w{index}", "a"), timeout=10
            )
            call.initial_metadata()
            calls.append(call)
        third = raw.stub.WatchCacheEvents(
            pb.WatchCacheEventsRequest(), metadata=metadata("w3", "a"), timeout=1
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(third)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_watchers_per_principal" in (refused.value.details() or "")
    finally:
        for call in calls:
            call.cancel()
        raw.close()


def test_a_principal_with_busy_sessions_never_evicts_one_holding_fewer(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    server = make_server(sqlite, auth_tokens=AUTH, max_sessions=6)
    raw = Raw(server)
    try:
        alice = [unique("alice") for _ in range(2)]
        bob = [unique("bob") for _ in range(4)]
        for sid in alice:
            raw.query(sid, "a", ids=[1])
        for sid in bob:
            raw.query(sid, "b", ids=[1])
        held = _hold(server, "bob", bob)  # calls in flight on every one of bob's sessions
        try:
            error = raw.error("QueryPersons", pb.QueryPersonsRequest(ids=[1]), unique("b"), "b")
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            _let_go(server, held)
        for sid in alice:
            assert raw.keys(sid, "a"), "alice, holding fewer sessions, lost one to bob"
    finally:
        raw.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_silent_http_connection_is_closed(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    import socket

    port = _free_port()
    make_server(sqlite, http_listen=f"127.0.0.1:{port}", http_idle_timeout=0.3)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        silent.settimeout(2)
        try:
            closed = silent.recv(1) == b""
        except TimeoutError:
            closed = False
    assert closed, "a client that sends nothing holds an HTTP connection (and a thread) forever"


# -- 4. byte accounting ----------------------------------------------------------------------


def test_session_bytes_stay_within_the_budget(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    budget = 64 * 1024
    server = make_server(sqlite, max_bytes_per_session=budget)
    raw = Raw(server)
    try:
        sid = unique("bytes")
        for query in range(200):
            start = 10**9 + query * 1000
            response = raw.query(sid, ids=list(range(start, start + 1000)))
            assert response.cache_status == pb.CACHE_STATUS_MISS
            assert not response.persons
        entries = raw.keys(sid)
        largest = max(entry.size_bytes for entry in entries)
        stats = raw.call("GetStats", pb.GetStatsRequest(), sid).session
        assert 0 < stats.size_bytes <= budget + largest
        assert stats.size_bytes == sum(entry.size_bytes for entry in entries)
        assert stats.evictions >= 200 - len(entries) > 0
        listed = [
            s for s in raw.call("ListSessions", pb.ListSessionsRequest()).sessions if s.id == sid
        ]
        assert listed
        assert 0 < listed[0].size_bytes <= budget + largest
    finally:
        raw.close()


# -- 6. responses bounded ---------------------------------------------------------------------


def test_pages_and_invalidations_fit_max_response_bytes(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    limit = 20_000
    server = make_server(sqlite, max_response_bytes=limit)
    raw = Raw(server)
    try:
        sid = unique("big")
        stored = []
        for query in range(40):
            start = 10**8 + query * 1000
            stored.append(raw.query(sid, ids=list(range(start, start + 150))).cache_key)
        request = pb.ListCacheKeysRequest(page_size=1000)
        listed: list[str] = []
        pages = 0
        while True:
            response = raw.call("ListCacheKeys", request, sid)
            pages += 1
            assert response.entries, "a page holds at least one entry"
            assert response.ByteSize() <= limit
            listed.extend(entry.key for entry in response.entries)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        assert pages > 1
        assert sorted(listed) == sorted(stored)
        assert len(set(listed)) == len(listed)

        removed = raw.call("Invalidate", pb.InvalidateRequest(session_cache=True), sid)
        assert removed.removed_count == 40
        assert 0 < len(removed.removed) < 40
        assert removed.ByteSize() <= limit
        assert raw.keys(sid) == []
        hit = raw.call("GetStats", pb.GetStatsRequest()).server.limits_hit
        assert hit["max_response_bytes"] >= 2
    finally:
        raw.close()


# -- 7. paging under concurrent removal --------------------------------------------------------


@pytest.fixture(scope="module")
def paging_server(server: ServerThread) -> Iterator[Raw]:
    stubs = Raw(server)
    yield stubs
    stubs.close()


@pytest.mark.parametrize(
    "order",
    [pb.CACHE_ENTRY_ORDER_UNSPECIFIED, pb.CACHE_ENTRY_ORDER_HITS, pb.CACHE_ENTRY_ORDER_SIZE],
)
def test_paging_while_entries_are_removed(
    paging_server: Raw, order: pb.CacheEntryOrder.ValueType
) -> None:
    raw = paging_server
    sid = unique("paging")
    for person in range(1, 151):
        # Differing sizes (one to three ids) and hits (every seventh entry hit twice).
        ids = [person, 10**6 + person, 2 * 10**6 + person][: 1 + person % 3]
        raw.query(sid, ids=ids)
        if person % 7 == 0:
            raw.query(sid, ids=ids)
            raw.query(sid, ids=ids)
    request = pb.ListCacheKeysRequest(page_size=50, order_by=order)
    first = raw.call("ListCacheKeys", request, sid)
    assert len(first.entries) == 50
    assert first.next_page_token
    everything = [e.key for e in raw.keys(sid, order_by=order)]
    unread = [key for key in everything if key not in {e.key for e in first.entries}]
    gone = [e.key for e in first.entries[::5]] + unread[::20][:5]
    assert len(gone) == 15
    for key in gone:
        assert raw.call("Invalidate", pb.InvalidateRequest(key=key), sid).removed_count == 1
    rest: list[str] = []
    request.page_token = first.next_page_token
    while True:
        page = raw.call("ListCacheKeys", request, sid)
        rest.extend(entry.key for entry in page.entries)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    live_unread = [key for key in unread if key not in gone]
    assert sorted(rest) == sorted(live_unread)  # none skipped, none twice
    assert len(set(rest)) == len(rest)


def test_list_sessions_paging_while_sessions_end(
    make_server: Callable[..., ServerThread], sqlite: str
) -> None:
    server = make_server(sqlite)
    raw = Raw(server)
    try:
        sessions = [f"paged-{index:02d}" for index in range(30)]
        for sid in sessions:
            raw.query(sid, ids=[1])
        first = raw.call("ListSessions", pb.ListSessionsRequest(page_size=10))
        assert [s.id for s in first.sessions] == sessions[:10]
        ended = sessions[0:10:4] + sessions[12:30:6]
        for sid in ended:
            assert raw.call("EndSession", pb.EndSessionRequest(), sid).existed
        rest: list[str] = []
        request = pb.ListSessionsRequest(page_size=10, page_token=first.next_page_token)
        while request.page_token:
            page = raw.call("ListSessions", request)
            rest.extend(s.id for s in page.sessions)
            request.page_token = page.next_page_token
        assert rest == [sid for sid in sessions[10:] if sid not in ended]
    finally:
        raw.close()


# -- 8. validation before state ----------------------------------------------------------------


def test_arguments_are_checked_before_the_session_is_looked_up(raw: Raw) -> None:
    nobody = unique("never-used")
    bad_token = pb.ListCacheKeysRequest(page_token="not-a-token")
    for token in ("a", "root"):
        assert (
            raw.code("ListCacheKeys", bad_token, nobody, token) == grpc.StatusCode.INVALID_ARGUMENT
        )
    for handle in ("xyz", "0123456789ABCDEF", "g" * 16, "0" * 17, "h" * 5000):
        request = pb.ListCacheKeysRequest(session=handle)
        for token in ("a", "root"):
            error = raw.error("ListCacheKeys", request, nobody, token)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, handle
    bad_query = pb.InvalidateRequest(query=pb.QueryPersonsRequest(page_token="not-a-token"))
    assert raw.code("Invalidate", bad_query, nobody, "a") == grpc.StatusCode.INVALID_ARGUMENT
    assert raw.code("Invalidate", pb.InvalidateRequest(key=""), nobody, "a") == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_types = raw.stub.WatchCacheEvents(
        pb.WatchCacheEventsRequest(types=[cast(pb.CacheEventType.ValueType, 99)]),
        metadata=metadata(nobody, "a"),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(bad_types)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_page = pb.ListSessionsRequest(page_token="not-a-token")
    assert raw.code("ListSessions", bad_page, None, "root") == grpc.StatusCode.INVALID_ARGUMENT
    assert raw.registry.get(nobody, principal="alice") is None
    # A well-formed handle of no session is NOT_FOUND for an admin.
    unknown = pb.ListCacheKeysRequest(session="0123456789abcdef")
    assert raw.code("ListCacheKeys", unknown, None, "root") == grpc.StatusCode.NOT_FOUND


# -- 11. keyed session hashes ----------------------------------------------------------------------


def _listed_ids(raw: Raw, session_id: str, tokens: tuple[str, ...]) -> list[str]:
    for token in tokens:
        raw.query(session_id, token, ids=[1])
    listed = raw.call("ListSessions", pb.ListSessionsRequest(page_size=1000), token="root")
    return [s.id for s in listed.sessions]


def test_session_hashes_are_keyed_by_principal_and_secret(
    make_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    found: dict[str, list[str]] = {}
    for name, secret in (("one", "secret-one"), ("two", "secret-two"), ("again", "secret-one")):
        (tmp_path / name).mkdir()
        server = make_server(sqlite_url(tmp_path / name), auth_tokens=AUTH, secret=secret)
        raw = Raw(server)
        try:
            found[name] = _listed_ids(raw, "shared-session", ("a", "b"))
        finally:
            raw.close()
    one = found["one"]
    assert len(one) == 2
    assert one[0] != one[1]
    assert all("shared-session" not in label for label in one)
    assert all(len(label) == 14 and label.startswith("h:") for label in one)
    assert set(one).isdisjoint(found["two"])
    assert found["again"] == one


# -- 12. O(1) per call ---------------------------------------------------------------------


class Calls:
    """Counts calls of the registry methods that walk or look into sessions."""

    def __init__(self, registry: SessionRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts = {"store_of": 0, "states": 0}
        for name in self.counts:
            original = getattr(registry, name)

            def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
                self.counts[_name] += 1
                return _original(*args)

            monkeypatch.setattr(registry, name, counted)

    def reset(self) -> None:
        for name in self.counts:
            self.counts[name] = 0


def _open_many(server: ServerThread, count: int) -> None:
    assert server.running is not None
    registry = server.running.registry

    async def open_all() -> None:
        for index in range(count):
            registry.release(registry.open(f"many-{index}", principal="alice"))

    server.run(open_all())


def _store_totals(registry: SessionRegistry) -> tuple[int, int]:
    entries = size = 0
    for state in registry.states():
        store = registry.store_of(state)
        if store is not None:
            entries += len(store)
            size += store.bytes + store.removals_size
    return entries, size


def test_calls_do_not_walk_the_sessions(
    make_server: Callable[..., ServerThread],
    sqlite: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib.request

    http_port = _free_port()
    server = make_server(
        sqlite, auth_tokens=AUTH, http_listen=f"127.0.0.1:{http_port}", max_bytes_per_session=4000
    )
    raw = Raw(server)
    try:
        _open_many(server, 2000)
        mine = unique("mine")
        raw.query(mine, "a", ids=[1])
        assert len(raw.registry) == 2001
        calls = Calls(raw.registry, monkeypatch)
        raw.call("GetStats", pb.GetStatsRequest(), None, "a")
        raw.call("GetStats", pb.GetStatsRequest(), None, "root")
        assert calls.counts == {"store_of": 0, "states": 0}
        raw.call("GetStats", pb.GetStatsRequest(), mine, "a")
        assert calls.counts["store_of"] <= 1
        assert calls.counts["states"] == 0
        calls.reset()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as page:
            assert b"sesscache_sessions 2001" in page.read()
        assert calls.counts == {"store_of": 0, "states": 0}
        unknown = pb.ListCacheKeysRequest(session="0123456789abcdef")
        assert raw.code("ListCacheKeys", unknown, None, "root") == grpc.StatusCode.NOT_FOUND
        assert calls.counts == {"store_of": 0, "states": 0}
        monkeypatch.undo()

        # Totals kept as they change equal the sum over every store.
        workload = [unique("mixed") for _ in range(6)]
        for index, sid in enumerate(workload):
            for person in range(1, 12):
                raw.query(sid, "a", ids=[person, 10**6 + index], view=pb.PERSON_VIEW_FULL)
        raw.call("Invalidate", pb.InvalidateRequest(session_cache=True), workload[0], "a")
        key = raw.keys(workload[1], "a")[0].key
        raw.call("Invalidate", pb.InvalidateRequest(key=key), workload[1], "a")
        raw.call("EndSession", pb.EndSessionRequest(), workload[2], "a")
        raw.call(
            "EndSessions",
            pb.EndSessionsRequest(min_idle=duration_pb2.Duration(seconds=3600)),
            None,
            "root",
        )
        evicted = raw.call("GetStats", pb.GetStatsRequest(), workload[3], "a").session.evictions
        assert evicted > 0, "the byte budget evicts"
        registry = raw.registry
        # Ended sessions' stores are cleared on a worker thread: wait for those.
        wait_until(
            lambda: (registry.entries, registry.bytes) == _store_totals(registry),
            what="the registry's totals to equal the sum over its session stores",
        )
        assert registry.entries > 0
    finally:
        raw.close()


def test_hex_alphabet_is_what_handles_use() -> None:
    # The unknown handle above must be well-formed, or the test proves nothing.
    from sesscache_server.validation import check_handle

    check_handle("0123456789abcdef")
    assert set("0123456789abcdef") <= set(string.hexdigits)
