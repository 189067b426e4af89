"""Bad input gets its documented status, never INTERNAL or UNKNOWN.

Table-driven: each case sends one bad request (or bad metadata) to a real
server and expects INVALID_ARGUMENT with a ``google.rpc.BadRequest`` field
violation naming the field at fault, read by the real client's error mapping
(:func:`client.errors.from_rpc_error`). Validation happens before any
database work, so these cases run on SQLite only. Inputs that do reach the
database (names that look like SQL or LIKE patterns) run on both backends,
through the conftest ``server``.

Cases the real client would refuse locally (a malformed session id, an
unknown view) go through a raw stub with hand-made metadata, so the server's
own checks are what is tested.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from sesscache_client import Client, InvalidArgument, SesscacheError, from_rpc_error
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.validation import MAX_ID, MAX_IDS, MAX_NAME
from tests.conftest import settings_for
from tests.support.servers import ServerThread

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server on a SQLite file: validation never reaches the database."""
    database = tmp_path_factory.mktemp("bad-input") / "sesscache.db"
    with ServerThread(settings_for(f"sqlite:///{database}")) as running:
        yield running


@dataclass
class Raw:
    """A raw stub and the real client on one server, with helpers to send bad calls."""

    stub: pb_grpc.SessionCacheStub
    client: Client
    server: ServerThread

    def sessions(self) -> int:
        """Live sessions on the server."""
        assert self.server.running is not None
        return len(self.server.running.registry)

    def has_session(self, session_id: str) -> bool:
        assert self.server.running is not None
        return self.server.running.registry.get(session_id) is not None

    def error(self, call: Callable[[], object]) -> SesscacheError:
        """The client exception for a call through the raw stub that must fail."""
        try:
            call()
        except grpc.RpcError as exc:
            return from_rpc_error(exc)
        pytest.fail("the call succeeded")

    def query(
        self, request: pb.QueryPersonsRequest, session_id: str | None = None
    ) -> pb.QueryPersonsResponse:
        metadata: Metadata = (("session-id", session_id),) if session_id else ()
        return self.stub.QueryPersons(request, metadata=metadata, timeout=10)

    def keys(self, request: pb.ListCacheKeysRequest, session_id: str) -> pb.ListCacheKeysResponse:
        return self.stub.ListCacheKeys(request, metadata=(("session-id", session_id),), timeout=10)


@pytest.fixture(scope="module")
def raw(sqlite_server: ServerThread) -> Iterator[Raw]:
    with (
        grpc.insecure_channel(sqlite_server.target) as channel,
        Client(sqlite_server.target, timeout=10) as connected,
    ):
        yield Raw(pb_grpc.SessionCacheStub(channel), connected, sqlite_server)


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No call may end in the server's "unexpected error" path (an INTERNAL status)."""
    caplog.set_level(logging.ERROR, logger="sesscache_server.errors")
    yield
    unexpected = [r for r in caplog.records if r.name == "sesscache_server.errors"]
    assert unexpected == [], "the server logged an unexpected error"


def assert_invalid(error: BaseException, *fields: str) -> InvalidArgument:
    """``error`` is a server-sent INVALID_ARGUMENT whose BadRequest names exactly ``fields``."""
    assert getattr(error, "code", None) not in NEVER, error
    assert isinstance(error, InvalidArgument), error
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details, "no google.rpc.BadRequest detail: not from the server"
    assert [field for field, _ in error.field_violations] == list(fields), error
    assert all(description for _, description in error.field_violations)
    return error


# -- QueryPersons request fields -----------------------------------------------------

Q = pb.QueryPersonsRequest
BAD_QUERIES: list[tuple[str, pb.QueryPersonsRequest, tuple[str, ...]]] = [
    ("negative-page-size", Q(page_size=-1), ("page_size",)),
    ("most-negative-page-size", Q(page_size=-(2**31)), ("page_size",)),
    ("name-too-long", Q(name="x" * (MAX_NAME + 1)), ("name",)),
    ("name-much-too-long", Q(name="é" * 100_000), ("name",)),
    ("name-with-nul", Q(name="person\x0010"), ("name",)),
    ("range-first-too-long", Q(name_range=pb.NameRange(first="a" * 300)), ("name_range.first",)),
    ("range-last-with-nul", Q(name_range=pb.NameRange(last="\x00")), ("name_range.last",)),
    (
        "range-first-after-last",
        Q(name_range=pb.NameRange(first="person 20", last="person 10")),
        ("name_range.first",),
    ),
    ("id-zero", Q(ids=[0]), ("ids[0]",)),
    ("id-negative", Q(ids=[5, -3]), ("ids[1]",)),
    ("id-most-negative", Q(ids=[-(2**63)]), ("ids[0]",)),
    ("id-above-int32", Q(ids=[1, 2, MAX_ID + 1]), ("ids[2]",)),
    ("id-int64-max", Q(ids=[2**63 - 1]), ("ids[0]",)),
    ("too-many-ids", Q(ids=list(range(1, MAX_IDS + 2))), ("ids",)),
    ("unknown-view", Q(view=99), ("view",)),  # type: ignore[arg-type]
    ("negative-view", Q(view=-1), ("view",)),  # type: ignore[arg-type]
    (
        "every-violation-at-once",
        Q(name="x" * 257, ids=[0], page_size=-5, view=7),  # type: ignore[arg-type]
        ("name", "ids[0]", "view", "page_size"),
    ),
]


@pytest.mark.parametrize(
    ("request_", "fields"), [pytest.param(r, f, id=i) for i, r, f in BAD_QUERIES]
)
@pytest.mark.parametrize("with_session", [True, False], ids=["session", "no-session"])
def test_bad_query_persons_request(
    raw: Raw,
    session_id: str,
    request_: pb.QueryPersonsRequest,
    fields: tuple[str, ...],
    with_session: bool,
) -> None:
    error = raw.error(lambda: raw.query(request_, session_id if with_session else None))
    assert_invalid(error, *fields)
    assert not raw.has_session(session_id), "a rejected request creates no session"


def test_many_bad_ids_still_make_a_bad_request(raw: Raw) -> None:
    """1,000 bad ids: INVALID_ARGUMENT naming the first ten, small enough for gRPC trailers."""
    first_ten = [f"ids[{i}]" for i in range(10)]
    for ids in ([0] * MAX_IDS, [-1] * MAX_IDS, [-(2**63)] * MAX_IDS, [MAX_ID + 1] * MAX_IDS):
        error = raw.error(lambda ids=ids: raw.query(Q(ids=ids)))  # type: ignore[misc]
        invalid = assert_invalid(error, *first_ten, "ids")
        assert "990 more" in invalid.field_violations[-1][1]
    mixed = [1, 0, 2, *range(-11, 0), 3]  # 12 bad ids at positions 1, 3 .. 13
    invalid = assert_invalid(
        raw.error(lambda: raw.query(Q(ids=mixed))),
        "ids[1]",
        *[f"ids[{i}]" for i in range(3, 12)],
        "ids",
    )
    assert "2 more" in invalid.field_violations[-1][1]


BOUNDARIES: list[tuple[str, pb.QueryPersonsRequest]] = [
    ("name-at-limit", Q(name="x" * MAX_NAME)),
    ("range-equal-bounds", Q(name_range=pb.NameRange(first="person 10", last="person 10"))),
    ("id-at-max", Q(ids=[MAX_ID])),
    ("ids-at-limit", Q(ids=list(range(1, MAX_IDS + 1)))),
    ("page-size-max-int32", Q(page_size=2**31 - 1)),
    ("views", Q(view=pb.PERSON_VIEW_BASIC)),
]


@pytest.mark.parametrize("request_", [pytest.param(r, id=i) for i, r in BOUNDARIES])
def test_values_at_the_limits_are_accepted(raw: Raw, request_: pb.QueryPersonsRequest) -> None:
    response = raw.query(request_)
    assert response.cache_status == pb.CACHE_STATUS_MISS


# -- page tokens ---------------------------------------------------------------------


def _flip(token: str, index: int) -> str:
    """``token`` with the character at ``index`` replaced by another base64 character."""
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


@pytest.fixture
def persons_token(raw: Raw, session_id: str) -> str:
    """A valid next-page token of ``QueryPersons(page_size=5)`` in ``session_id``."""
    token = raw.query(Q(page_size=5), session_id).next_page_token
    assert token
    # It works as given.
    assert raw.query(Q(page_size=5, page_token=token), session_id).persons[0].id > 5
    return token


def _forged() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")


TOKEN_CASES: list[tuple[str, Callable[[str], str], Callable[[str], pb.QueryPersonsRequest]]] = [
    ("forged", lambda _: _forged(), lambda t: Q(page_size=5, page_token=t)),
    ("forged-json", lambda _: "eyJ2IjoxLCJmIjoieCIsInAiOjV9", lambda t: Q(page_token=t)),
    ("not-base64", lambda _: "!!not a token!!", lambda t: Q(page_size=5, page_token=t)),
    ("non-ascii", lambda _: "tökén", lambda t: Q(page_size=5, page_token=t)),
    ("too-long", lambda _: "A" * 4096, lambda t: Q(page_size=5, page_token=t)),
    ("truncated-by-1", lambda t: t[:-1], lambda t: Q(page_size=5, page_token=t)),
    ("truncated-by-3", lambda t: t[:-3], lambda t: Q(page_size=5, page_token=t)),
    ("truncated-to-half", lambda t: t[: len(t) // 2], lambda t: Q(page_size=5, page_token=t)),
    ("first-char-altered", lambda t: _flip(t, 0), lambda t: Q(page_size=5, page_token=t)),
    ("middle-char-altered", lambda t: _flip(t, len(t) // 2), lambda t: Q(page_token=t)),
    ("other-filters", lambda t: t, lambda t: Q(name="person 10", page_size=5, page_token=t)),
    (
        "other-range",
        lambda t: t,
        lambda t: Q(name_range=pb.NameRange(first="person 2"), page_size=5, page_token=t),
    ),
    ("other-view", lambda t: t, lambda t: Q(view=pb.PERSON_VIEW_BASIC, page_token=t)),
    ("other-ids", lambda t: t, lambda t: Q(ids=[1, 2, 3, 7, 9, 11], page_token=t)),
]


@pytest.mark.parametrize(("mangle", "build"), [pytest.param(m, b, id=i) for i, m, b in TOKEN_CASES])
def test_unusable_persons_page_token(
    raw: Raw,
    session_id: str,
    persons_token: str,
    mangle: Callable[[str], str],
    build: Callable[[str], pb.QueryPersonsRequest],
) -> None:
    request = build(mangle(persons_token))
    error = raw.error(lambda: raw.query(request, session_id))
    assert_invalid(error, "page_token")
    # The same token with the filters it was issued for still works (page size may change).
    assert raw.query(Q(page_size=7, page_token=persons_token), session_id).persons


def test_persons_token_works_in_another_session_of_the_same_request(
    raw: Raw, session_id: str, persons_token: str
) -> None:
    """A token is bound to the request, not the session: any session can continue the walk."""
    other = session_id + "-other"
    response = raw.query(Q(page_size=5, page_token=persons_token), other)
    assert [p.id for p in response.persons] == [6, 7, 8, 9, 10]
    raw.client.session(other).end()


@pytest.fixture
def keys_token(raw: Raw, session_id: str) -> str:
    """A valid next-page token of ``ListCacheKeys(page_size=1)`` in ``session_id``."""
    for number in (1, 2, 3):
        raw.query(Q(ids=[number]), session_id)
    token = raw.keys(pb.ListCacheKeysRequest(page_size=1), session_id).next_page_token
    assert token
    return token


def test_list_cache_keys_token_of_another_session(
    raw: Raw, session_id: str, keys_token: str
) -> None:
    other = session_id + "-b"
    for number in (1, 2, 3):  # the same entries, so only the session differs
        raw.query(Q(ids=[number]), other)
    request = pb.ListCacheKeysRequest(page_size=1, page_token=keys_token)
    assert_invalid(raw.error(lambda: raw.keys(request, other)), "page_token")
    # The owner can use it.
    assert len(raw.keys(request, session_id).entries) == 1
    raw.client.session(other).end()


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda _: _forged(), id="forged"),
        pytest.param(lambda t: t[:-2], id="truncated"),
        pytest.param(lambda t: _flip(t, len(t) // 2), id="altered"),
    ],
)
def test_unusable_list_cache_keys_token(
    raw: Raw, session_id: str, keys_token: str, mangle: Callable[[str], str]
) -> None:
    request = pb.ListCacheKeysRequest(page_size=1, page_token=mangle(keys_token))
    assert_invalid(raw.error(lambda: raw.keys(request, session_id)), "page_token")


def test_tokens_do_not_cross_rpcs(
    raw: Raw, session_id: str, keys_token: str, persons_token: str
) -> None:
    keys_request = pb.ListCacheKeysRequest(page_token=persons_token)
    assert_invalid(raw.error(lambda: raw.keys(keys_request, session_id)), "page_token")
    persons_request = Q(page_token=keys_token)
    assert_invalid(raw.error(lambda: raw.query(persons_request, session_id)), "page_token")


def test_negative_page_size_of_list_cache_keys(raw: Raw, session_id: str) -> None:
    raw.query(Q(name="person 01"), session_id)
    for size in (-1, -(2**31)):
        request = pb.ListCacheKeysRequest(page_size=size)
        assert_invalid(raw.error(lambda r=request: raw.keys(r, session_id)), "page_size")  # type: ignore[misc]
    # Also through the real client.
    with pytest.raises(InvalidArgument) as caught:
        raw.client.session(session_id).list_cache_keys(page_size=-1)
    assert_invalid(caught.value, "page_size")


def test_negative_page_size_through_the_real_client(raw: Raw, session_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        raw.client.session(session_id).query_persons(page_size=-1)
    assert_invalid(caught.value, "page_size")


# -- the session id ------------------------------------------------------------------

BAD_SESSION_METADATA: list[tuple[str, Metadata]] = [
    ("empty", (("session-id", ""),)),
    ("129-characters", (("session-id", "s" * 129),)),
    ("space", (("session-id", "a b"),)),
    ("slash", (("session-id", "a/b"),)),
    ("colon", (("session-id", "a:b"),)),
    ("percent-encoded", (("session-id", "%C3%BC"),)),
    ("sent-twice", (("session-id", "a"), ("session-id", "b"))),
    ("sent-twice-same", (("session-id", "a"), ("session-id", "a"))),
]

RPCS: dict[str, Callable[[pb_grpc.SessionCacheStub, Metadata], object]] = {
    "QueryPersons": lambda stub, md: stub.QueryPersons(Q(), metadata=md, timeout=10),
    "ListCacheKeys": lambda stub, md: stub.ListCacheKeys(
        pb.ListCacheKeysRequest(), metadata=md, timeout=10
    ),
    "EndSession": lambda stub, md: stub.EndSession(pb.EndSessionRequest(), metadata=md, timeout=10),
}


@pytest.mark.parametrize("rpc", list(RPCS))
@pytest.mark.parametrize("metadata", [pytest.param(m, id=i) for i, m in BAD_SESSION_METADATA])
def test_bad_session_id(raw: Raw, rpc: str, metadata: Metadata) -> None:
    before = raw.sessions()
    error = raw.error(lambda: RPCS[rpc](raw.stub, metadata))
    assert_invalid(error, "session-id")
    assert raw.sessions() == before


def test_session_id_at_the_limits_is_accepted(raw: Raw) -> None:
    for session_id in ("s" * 128, "a", "A-z_0.9~"):
        assert raw.query(Q(name="person 01"), session_id).persons
        assert raw.client.session(session_id).end().existed


@pytest.mark.parametrize("session_id", ["ü", "a b", "", "s" * 129, "tab\t"])
def test_real_client_refuses_bad_session_ids_locally(raw: Raw, session_id: str) -> None:
    """Non-ASCII ids cannot even travel in gRPC metadata; the client says so before sending."""
    with pytest.raises(InvalidArgument) as caught:
        raw.client.session(session_id)
    assert caught.value.__cause__ is None, "refused locally"
    assert [field for field, _ in caught.value.field_violations] == ["session-id"]


# -- inputs that reach the database match literally ----------------------------------

LITERAL_NAMES = [
    "person 10' OR '1'='1",
    "person 10'; DROP TABLE person; --",
    'person 10" OR "1"="1',
    "person 1%",
    "%",
    "person _0",
    "_",
    "person 1*",
    "person 10\\",
    "person 10 ",
    " person 10",
    "PERSON 10",
]


@pytest.mark.parametrize("name", LITERAL_NAMES)
def test_names_match_literally(client: Client, session_id: str, name: str) -> None:
    with client.session(session_id) as session:
        response = session.query_persons(name=name)
        assert list(response.persons) == []
        assert response.cache_status == pb.CACHE_STATUS_MISS
        # Nothing was harmed: the table is still there with every person.
        assert len(session.query_persons(page_size=100, view="basic").persons) == 50


def test_name_ranges_compare_literally(client: Client, session_id: str) -> None:
    with client.session(session_id) as session:
        # '%' and '_' sort as themselves: no pattern matching.
        response = session.query_persons(
            name_first="person 1%", name_last="person 1_", view="basic"
        )
        assert [p.name for p in response.persons] == [f"person {n}" for n in range(10, 20)]
        sql_like = session.query_persons(name_first="'", name_last="' OR '1'='1", view="basic")
        assert list(sql_like.persons) == []


# -- messages near the size limit ----------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(40_000, grpc.StatusCode.INVALID_ARGUMENT, id="240KB-too-many-ids"),
        pytest.param(50_000, grpc.StatusCode.RESOURCE_EXHAUSTED, id="300KB-over-max-request-bytes"),
        pytest.param(720_000, grpc.StatusCode.RESOURCE_EXHAUSTED, id="4.3MB-over-the-limit"),
    ],
)
def test_message_near_the_size_limit(raw: Raw, count: int, expected: grpc.StatusCode) -> None:
    request = Q(ids=[2**40] * count)  # 6 bytes each on the wire
    error = raw.error(lambda: raw.query(request))
    assert error.code is expected
    assert error.code not in NEVER
    if expected is grpc.StatusCode.INVALID_ARGUMENT:
        assert_invalid(error, "ids")
    # The server is fine afterwards.
    assert raw.query(Q(name="person 02")).persons
