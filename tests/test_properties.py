"""Hostile input, generated: thousands of random requests per RPC never break the server.

Hypothesis generates QueryPersons, ListCacheKeys and EndSession requests and
call metadata, and sends each through raw ``sesscache.v1`` stubs (so values
the real client would refuse locally, such as unknown enum values or
malformed session ids, reach the server): names of any text (NUL,
unicode, SQL-looking, LIKE patterns), name ranges, ids over the whole int64
range, page sizes over the whole int32 range, page tokens (random text,
random base64, and real tokens cut, altered or sent to another RPC), views
of any int32, session ids valid, invalid, repeated or binary, and bypass
flags; and request bytes of any kind, message or not. The server runs as a
``python -m sesscache_server`` child, so hypothesis and the server each get a core.
The properties:

- no call ever ends INTERNAL or UNKNOWN; each ends with a status its RPC
  documents, and INVALID_ARGUMENT always carries a ``google.rpc.BadRequest``
  naming the fields at fault;
- an OK QueryPersons page is right: ordered by id, within its page size, and
  matching the filters it was given;
- afterwards the server is healthy (SERVING, and answers a plain query),
  the database is unchanged (a checksum of every table's rows, and the list
  of tables, before and after), and the server's log holds nothing worse
  than INFO (no error, no traceback) and it exits 0.

Example counts: each RPC gets 2,000 generated requests on SQLite, and 300 on
PostgreSQL (plus a quarter of that of random bytes). Validation, tokens and
sessions are the same code on both, so the full 2,000 run once; what differs
by database is how the names, ranges and ids that pass validation are bound
into SQL, which 300 examples per RPC cover on PostgreSQL while keeping the
whole module well under a minute.
The table-driven cases for each documented bad input are in
``tests/test_bad_input.py``; this module does not repeat them.
"""

from __future__ import annotations

import base64
import hashlib
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select

from harness.child import Child
from sesscache.models import Base
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
SESSION_CHARS = string.ascii_letters + string.digits + "._~-"
#: Sessions that exist (they hold entries) while the properties run.
LIVE_SESSIONS = ("prop-live-1", "prop-live-2", "prop-live-3")
SQLISH = (
    "' OR '1'='1",
    "person 01' --",
    "person 01'; DROP TABLE person; --",
    "'; DELETE FROM person; --",
    "\"; UPDATE person SET name = 'x'; --",
    "%",
    "_",
    "person %",
    "person _1",
    "\\",
    "\\'",
    "person 01\x00' OR 1=1",
    "1; SELECT pg_sleep(10)",
    "$$",
    "E'\\x00'",
)
ALLOWED = {
    "QueryPersons": {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT},
    "ListCacheKeys": {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    },
    "EndSession": {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT},
}
Metadata = tuple[tuple[str, str | bytes], ...]


def examples(backend: str) -> int:
    return 2000 if backend == "sqlite" else 300


# -- the server and what the database holds ---------------------------------------------------


def checksum(database_url: str) -> tuple[list[str], str]:
    """(table names, SHA-256 of every row of every table in primary-key order)."""
    engine = create_engine(database_url)
    try:
        digest = hashlib.sha256()
        with engine.connect() as connection:
            tables = sorted(inspect(connection).get_table_names())
            for table in Base.metadata.sorted_tables:
                rows = connection.execute(select(table).order_by(*table.primary_key.columns)).all()
                digest.update(f"{table.name}:{len(rows)}:{rows!r}".encode())
    finally:
        engine.dispose()
    return tables, digest.hexdigest()


@dataclass
class Target:
    """The module's server, a channel to it, and real page tokens it issued."""

    server: Child
    channel: grpc.Channel
    stub: pb_grpc.SessionCacheStub
    database_url: str
    checksum_before: tuple[list[str], str]
    persons_tokens: list[str]
    keys_tokens: list[str]


@pytest.fixture(scope="module")
def target(database_url: str) -> Iterator[Target]:
    """The server in a child process: hypothesis and the server each get a core."""
    server = Child(["--listen=127.0.0.1:0", f"--database-url={database_url}"]).start()
    try:
        yield from _target(server, database_url)
    finally:
        code = server.stop()
    assert code == 0, server.log_text()
    # Nothing the examples sent made the server log a warning, an error or a traceback.
    assert [line for line in server.lines if " INFO " not in line] == []


def _target(server: Child, database_url: str) -> Iterator[Target]:
    before = checksum(database_url)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)
        persons_tokens: list[str] = []
        keys_tokens: list[str] = []
        for session_id in LIVE_SESSIONS:
            metadata = (("session-id", session_id),)
            for request in (
                pb.QueryPersonsRequest(page_size=7),
                pb.QueryPersonsRequest(name_range=pb.NameRange(first="person 2"), page_size=3),
                pb.QueryPersonsRequest(ids=[1, 2, 3, 4], page_size=2, view=pb.PERSON_VIEW_BASIC),
            ):
                response = stub.QueryPersons(request, metadata=metadata, timeout=30)
                assert response.next_page_token
                persons_tokens.append(response.next_page_token)
            listing = stub.ListCacheKeys(
                pb.ListCacheKeysRequest(page_size=1), metadata=metadata, timeout=30
            )
            assert listing.next_page_token
            keys_tokens.append(listing.next_page_token)
        yield Target(server, channel, stub, database_url, before, persons_tokens, keys_tokens)


# -- strategies ---------------------------------------------------------------------------------

# Strategies draw short text and make long text by repetition: hypothesis draws
# each character on its own, and long draws would dominate the run time.


def repeated(parts: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    """Text ``low`` to ``high`` characters long, made of a drawn piece repeated."""
    return st.tuples(parts.filter(bool), st.integers(low, high)).map(
        lambda p: (p[0] * (p[1] // len(p[0]) + 1))[: p[1]]
    )


printable_chars = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
printable = st.one_of(
    st.text(alphabet=printable_chars, max_size=24),
    repeated(st.text(alphabet=printable_chars, max_size=8), 120, 200),
)
valid_session_ids = st.one_of(
    st.text(alphabet=SESSION_CHARS, min_size=1, max_size=24),
    repeated(st.text(alphabet=SESSION_CHARS, max_size=8), 120, 130),  # around the 128 limit
)
metadata_values = st.one_of(
    st.just(()),
    st.sampled_from(LIVE_SESSIONS).map(lambda s: (("session-id", s),)),
    valid_session_ids.map(lambda s: (("session-id", s),)),
    # Mostly invalid: any character gRPC lets through in a text header.
    printable.map(lambda s: (("session-id", s),)),
    st.tuples(valid_session_ids, valid_session_ids).map(
        lambda p: (("session-id", p[0]), ("session-id", p[1]))
    ),
    st.binary(max_size=64).map(lambda b: (("session-id-bin", b),)),
    st.tuples(st.sampled_from(LIVE_SESSIONS), printable).map(
        lambda p: (("session-id", p[0]), ("authorization", p[1]), ("x-extra", p[1]))
    ),
)
names = st.one_of(
    st.just(""),
    st.text(max_size=24),  # any unicode, NUL included
    repeated(st.text(max_size=8), 250, 300),  # around the 256 limit
    st.sampled_from(SQLISH),
    st.integers(0, 60).map(lambda n: f"person {n:02d}"),
    st.text(alphabet="person 0123456789%_'\\\x00", max_size=20),
)
ids = st.one_of(
    st.lists(st.integers(*INT64), max_size=8),
    st.lists(st.integers(-2, 60), max_size=10),
    st.integers(1001, 1010).map(lambda n: list(range(1, n + 1))),
)
page_sizes = st.one_of(st.integers(*INT32), st.integers(-2, 60), st.sampled_from([1000, 1001]))
views = st.one_of(st.integers(*INT32), st.integers(-1, 3))


def mutated(tokens: Sequence[str]) -> st.SearchStrategy[str]:
    """Real tokens, cut, altered in one character, extended or doubled."""
    real = st.sampled_from(tokens)

    def alter(token: str, index: int, char: str) -> str:
        i = index % len(token)
        return token[:i] + char + token[i + 1 :]

    return st.one_of(
        real,
        st.tuples(real, st.integers(0, 200)).map(lambda p: p[0][: p[1]]),
        st.tuples(real, st.integers(0, 200), st.sampled_from("AZaz09-_=+/.!~ \x00é")).map(
            lambda p: alter(*p)
        ),
        st.tuples(real, printable).map(lambda p: p[0] + p[1]),
        real.map(lambda t: t + t),
    )


def page_tokens(target: Target) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.text(max_size=24),
        st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        repeated(st.text(alphabet=string.ascii_letters + string.digits + "-_"), 500, 600),
        mutated(target.persons_tokens),
        mutated(target.keys_tokens),
    )


@st.composite
def persons_requests(draw: st.DrawFn, target: Target) -> pb.QueryPersonsRequest:
    request = pb.QueryPersonsRequest(
        name=draw(names),
        ids=draw(ids),
        bypass_cache=draw(st.booleans()),
        page_size=draw(page_sizes),
        page_token=draw(page_tokens(target)),
    )
    request.view = draw(views)  # type: ignore[assignment]  # any int32: proto3 enums are open
    first, last = draw(st.none() | names), draw(st.none() | names)
    if first is not None:
        request.name_range.first = first
    if last is not None:
        request.name_range.last = last
    return request


def keys_requests(target: Target) -> st.SearchStrategy[pb.ListCacheKeysRequest]:
    return st.builds(
        lambda size, token: pb.ListCacheKeysRequest(page_size=size, page_token=token),
        page_sizes,
        page_tokens(target),
    )


# -- the properties -----------------------------------------------------------------------------


SENT: Counter[str] = Counter()


def call(
    method: Callable[..., Any], rpc: str, request: Any, metadata: Metadata
) -> tuple[grpc.StatusCode, Any]:
    """Send one request; return (status, response or error). Checks the status."""
    SENT[rpc] += 1
    try:
        return grpc.StatusCode.OK, method(request, metadata=metadata, timeout=30)
    except grpc.RpcError as failed:
        error = failed
    code = error.code()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"{rpc} ended {code}: {error.details()}"
    )
    assert code in ALLOWED[rpc], f"{rpc} ended {code}: {error.details()}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(cast(grpc.Call, error))
        assert status is not None, "INVALID_ARGUMENT without a rich status"
        violations: list[error_details_pb2.BadRequest.FieldViolation] = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                violations.extend(bad_request.field_violations)
        assert violations, "INVALID_ARGUMENT without a field violation"
        assert all(v.field and v.description for v in violations)
    return code, error


def check_page(request: pb.QueryPersonsRequest, response: pb.QueryPersonsResponse) -> None:
    """An OK page of persons is ordered by id, fits its size and matches its filters."""
    found = list(response.persons)
    id_list = [p.id for p in found]
    assert id_list == sorted(set(id_list))
    size = 50 if request.page_size == 0 else min(request.page_size, 1000)
    assert len(found) <= size
    for person in found:
        if request.name:
            assert person.name == request.name
        if request.name_range.first:
            assert person.name >= request.name_range.first
        if request.name_range.last:
            assert person.name <= request.name_range.last
        if request.ids:
            assert person.id in request.ids
        if request.view == pb.PERSON_VIEW_BASIC:
            assert not person.addresses
    if request.bypass_cache:
        assert response.cache_status == pb.CACHE_STATUS_BYPASS
    else:
        assert response.cache_status in (pb.CACHE_STATUS_HIT, pb.CACHE_STATUS_MISS)
        assert response.cache_key


def hypothesis_settings(backend: str) -> settings:
    return settings(
        max_examples=examples(backend),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_query_persons_never_fails_internally(target: Target, backend: str) -> None:
    seen: set[grpc.StatusCode] = set()

    @hypothesis_settings(backend)
    @given(request=persons_requests(target), metadata=metadata_values)
    def query_persons(request: pb.QueryPersonsRequest, metadata: Metadata) -> None:
        code, result = call(target.stub.QueryPersons, "QueryPersons", request, metadata)
        seen.add(code)
        if code is grpc.StatusCode.OK:
            check_page(request, result)

    SENT.clear()
    query_persons()
    assert SENT["QueryPersons"] >= examples(backend)
    assert seen == ALLOWED["QueryPersons"], "the examples missed a documented outcome"


def test_list_cache_keys_never_fails_internally(target: Target, backend: str) -> None:
    seen: set[grpc.StatusCode] = set()

    @hypothesis_settings(backend)
    @given(request=keys_requests(target), metadata=metadata_values)
    def list_cache_keys(request: pb.ListCacheKeysRequest, metadata: Metadata) -> None:
        code, result = call(target.stub.ListCacheKeys, "ListCacheKeys", request, metadata)
        seen.add(code)
        if code is grpc.StatusCode.OK:
            keys = [entry.key for entry in result.entries]
            assert len(keys) == len(set(keys))
            assert len(keys) <= (100 if request.page_size == 0 else min(request.page_size, 1000))

    SENT.clear()
    list_cache_keys()
    assert SENT["ListCacheKeys"] >= examples(backend)
    assert seen == ALLOWED["ListCacheKeys"], "the examples missed a documented outcome"


def test_end_session_never_fails_internally(target: Target, backend: str) -> None:
    seen: set[grpc.StatusCode] = set()

    @hypothesis_settings(backend)
    @given(metadata=metadata_values)
    def end_session(metadata: Metadata) -> None:
        code, result = call(target.stub.EndSession, "EndSession", pb.EndSessionRequest(), metadata)
        seen.add(code)
        if code is grpc.StatusCode.OK and not any(k == "session-id" for k, _ in metadata):
            assert not result.existed

    SENT.clear()
    end_session()
    assert SENT["EndSession"] >= examples(backend)
    assert seen == ALLOWED["EndSession"], "the examples missed a documented outcome"


@pytest.mark.parametrize("rpc", ["QueryPersons", "ListCacheKeys", "EndSession"])
def test_random_request_bytes_never_fail_internally(target: Target, backend: str, rpc: str) -> None:
    """Request bytes of any kind: a message (maybe with unknown fields) or not one at all."""
    send = target.channel.unary_unary(
        f"/sesscache.v1.SessionCache/{rpc}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    corrupt = 0

    @settings(
        max_examples=examples(backend) // 4,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(raw=st.one_of(st.just(b"\xff\xff\xff"), st.binary(max_size=48)))
    def random_bytes(raw: bytes) -> None:
        nonlocal corrupt
        code, _ = call(send, rpc, raw, (("session-id", LIVE_SESSIONS[0]),))
        corrupt += code is grpc.StatusCode.INVALID_ARGUMENT

    random_bytes()
    assert corrupt, "no corrupt message was sent"


def test_afterwards_the_server_is_healthy_and_the_database_unchanged(target: Target) -> None:
    """Runs after the properties above (pytest keeps the order of a module's tests)."""
    health = health_pb2_grpc.HealthStub(target.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    plain = target.stub.QueryPersons(pb.QueryPersonsRequest(name="person 10"), timeout=30)
    assert [p.name for p in plain.persons] == ["person 10"]
    assert checksum(target.database_url) == target.checksum_before, "the database changed"
