"""The sesscache service end to end: real servers, the real client, both backends.

Every test here talks gRPC over loopback to a real server (the module's
shared :class:`~tests.support.servers.ServerThread`, or a ``python -m sesscache_server``
child process) and runs once on SQLite and once on PostgreSQL. Expected
data comes from the database itself (plain SQL), never from the server.

Covered: the README walk-through (MISS, HIT without SQL, the key listed,
EndSession, MISS again), sessions (unknown, ephemeral, isolated), filters,
paging of persons and of cache keys, bypass, views, health, reflection, a
client generated only from the ``.proto`` file, concurrency, a graceful
stop under load, and the access log.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sqlalchemy import create_engine, text

from harness.child import Child
from sesscache.fixtures import person_name
from sesscache.registry import SessionRegistry
from sesscache_client import SERVICE_NAME, Client, SessionNotFound
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from tests.support.servers import ROOT, ServerThread

PROTO = ROOT / "protos" / "sesscache" / "v1" / "sesscache.proto"
PERSONS = 50  # the fixture persons a server seeds by default

AddressRow = tuple[str, str, str, str]  # street, postal code, city, country


@dataclass(frozen=True)
class Expected:
    """A person as the database holds it."""

    id: int
    name: str
    addresses: tuple[AddressRow, ...]


@pytest.fixture(scope="module")
def people(server: ServerThread, database_url: str) -> dict[int, Expected]:
    """Every person with its addresses, read straight from the (seeded) database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT p.id, p.name, a.street, pc.code, c.name, co.name "
                    "FROM person p "
                    "LEFT JOIN address a ON a.person_id = p.id "
                    "LEFT JOIN postal_code pc ON pc.id = a.postal_code_id "
                    "LEFT JOIN city c ON c.id = pc.city_id "
                    "LEFT JOIN country co ON co.id = c.country_id "
                    "ORDER BY p.id, a.id"
                )
            ).all()
    finally:
        engine.dispose()
    names: dict[int, str] = {}
    addresses: dict[int, list[AddressRow]] = {}
    for person_id, name, street, code, city, country in rows:
        names[person_id] = name
        addresses.setdefault(person_id, [])
        if street is not None:
            addresses[person_id].append((street, code, city, country))
    result = {i: Expected(i, names[i], tuple(addresses[i])) for i in names}
    assert len(result) == PERSONS
    return result


@pytest.fixture
def registry(server: ServerThread) -> SessionRegistry:
    assert server.running is not None
    return server.running.registry


def _ids(response: pb.QueryPersonsResponse) -> list[int]:
    return [person.id for person in response.persons]


def _id_of(people: dict[int, Expected], number: int) -> int:
    """The id of fixture person ``number`` (``person 07`` ...)."""
    (found,) = [p.id for p in people.values() if p.name == person_name(number)]
    return found


# -- the README walk-through ---------------------------------------------------------


def test_walk_through_miss_hit_list_end_miss(
    client: Client, session_id: str, registry: SessionRegistry, people: dict[int, Expected]
) -> None:
    session = client.session(session_id)
    ten = _id_of(people, 10)

    first = session.query_persons(name="person 10")
    assert first.cache_status == pb.CACHE_STATUS_MISS
    assert first.sql_statements >= 1
    assert first.cache_key
    assert _ids(first) == [ten]
    assert first.persons[0].name == "person 10"
    assert not first.next_page_token

    before_hit = time.time()
    second = session.query_persons(name="person 10")
    assert second.cache_status == pb.CACHE_STATUS_HIT
    assert second.sql_statements == 0
    assert second.cache_key == first.cache_key
    assert list(second.persons) == list(first.persons)

    entries = session.list_cache_keys()
    assert [entry.key for entry in entries] == [first.cache_key]
    (entry,) = entries
    assert entry.region == "local_session"
    assert entry.rows == 1
    assert entry.entity == "Person"
    assert entry.digest
    assert entry.HasField("stored_at")
    assert before_hit - 60 < entry.stored_at.ToNanoseconds() / 1e9 <= time.time() + 1
    assert entry.hits == 1
    assert entry.last_access.ToNanoseconds() >= entry.stored_at.ToNanoseconds()
    assert registry.get(session_id) is not None

    ended = session.end()
    assert ended.existed is True
    assert ended.keys_dropped == 1
    assert registry.get(session_id) is None

    again = session.query_persons(name="person 10")
    assert again.cache_status == pb.CACHE_STATUS_MISS
    assert again.sql_statements >= 1
    assert again.cache_key == first.cache_key
    session.end()


# -- sessions ------------------------------------------------------------------------


def test_end_session_of_unknown_session_says_it_did_not_exist(
    client: Client, session_id: str
) -> None:
    ended = client.session(session_id).end()
    assert ended.existed is False
    assert ended.keys_dropped == 0


def test_list_cache_keys_of_unknown_session_is_not_found(client: Client, session_id: str) -> None:
    with pytest.raises(SessionNotFound) as caught:
        client.session(session_id).list_cache_keys()
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.session_id == session_id


def test_ended_session_is_not_found_by_list_cache_keys(client: Client, session_id: str) -> None:
    session = client.session(session_id)
    session.query_persons(name="person 03")
    assert session.end().existed
    with pytest.raises(SessionNotFound):
        session.list_cache_keys()
    assert session.end().existed is False


def test_call_without_session_id_is_ephemeral(client: Client, registry: SessionRegistry) -> None:
    before = {state.key for state in registry.states()}
    for _ in range(3):
        response = client.query_persons(name="person 11")
        assert response.cache_status == pb.CACHE_STATUS_MISS
        assert response.sql_statements >= 1
        assert [person.name for person in response.persons] == ["person 11"]
    after = {state.key for state in registry.states()}
    assert after == before
    assert not any(state.ephemeral for state in registry.states())


def test_sessions_are_isolated(client: Client, session_id: str) -> None:
    a = client.session(session_id + "-a")
    b = client.session(session_id + "-b")
    try:
        assert a.query_persons(name="person 12").cache_status == pb.CACHE_STATUS_MISS
        assert a.query_persons(name="person 12").cache_status == pb.CACHE_STATUS_HIT
        with pytest.raises(SessionNotFound):
            b.list_cache_keys()

        from_b = b.query_persons(name="person 12")
        assert from_b.cache_status == pb.CACHE_STATUS_MISS
        assert from_b.sql_statements >= 1
        assert len(b.list_cache_keys()) == 1

        assert b.end().keys_dropped == 1
        # Ending B leaves A's cache alone.
        assert a.query_persons(name="person 12").cache_status == pb.CACHE_STATUS_HIT
        assert [entry.hits for entry in a.list_cache_keys()] == [2]
    finally:
        a.end()
        b.end()


# -- filters -------------------------------------------------------------------------

FILTERS: list[tuple[str, dict[str, object], list[int]]] = [
    ("name", {"name": "person 10"}, [10]),
    ("name-unknown", {"name": "person 99"}, []),
    ("range", {"name_first": "person 10", "name_last": "person 20"}, list(range(10, 21))),
    ("range-open-last", {"name_first": "person 48"}, [48, 49, 50]),
    ("range-open-first", {"name_last": "person 03"}, [1, 2, 3]),
    ("range-single", {"name_first": "person 07", "name_last": "person 07"}, [7]),
    ("ids", {"ids": [49, 3, 1, 2, 3]}, [1, 2, 3, 49]),
    ("ids-unknown", {"ids": [10_000]}, []),
    (
        "range-and-ids",
        {"name_first": "person 10", "name_last": "person 20", "ids": [5, 12, 15, 30]},
        [12, 15],
    ),
    ("name-and-ids", {"name": "person 10", "ids": [11]}, []),
    (
        "name-and-range",
        {"name": "person 15", "name_first": "person 10", "name_last": "person 20"},
        [15],
    ),
    ("name-outside-range", {"name": "person 25", "name_last": "person 20"}, []),
]


@pytest.mark.parametrize(
    ("arguments", "numbers"), [pytest.param(a, n, id=i) for i, a, n in FILTERS]
)
def test_filters(
    client: Client,
    session_id: str,
    people: dict[int, Expected],
    arguments: dict[str, object],
    numbers: list[int],
) -> None:
    ids = arguments.get("ids")
    if isinstance(ids, list):  # fixture numbers to database ids
        arguments = {**arguments, "ids": [_id_of(people, n) if n <= PERSONS else n for n in ids]}
    expected = sorted(_id_of(people, n) for n in numbers)
    with client.session(session_id) as session:
        response = session.query_persons(**arguments)  # type: ignore[arg-type]
        assert _ids(response) == expected
        assert [p.name for p in response.persons] == [people[i].name for i in expected]
        assert response.cache_status == pb.CACHE_STATUS_MISS
        assert not response.next_page_token


# -- paging --------------------------------------------------------------------------


def _walk(
    query: Callable[..., pb.QueryPersonsResponse], page_size: int, **filters: object
) -> list[pb.QueryPersonsResponse]:
    """Every page of a query, following ``next_page_token``."""
    pages: list[pb.QueryPersonsResponse] = []
    token = ""
    while True:
        page = query(page_size=page_size, page_token=token, **filters)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "paging does not end"


def test_paging_walks_every_person_in_id_order(
    client: Client, session_id: str, people: dict[int, Expected]
) -> None:
    with client.session(session_id) as session:
        pages = _walk(session.query_persons, 7)
        assert [len(page.persons) for page in pages] == [7] * 7 + [1]
        assert [i for page in pages for i in _ids(page)] == sorted(people)
        assert all(page.next_page_token for page in pages[:-1])
        assert pages[-1].next_page_token == ""
        assert all(page.cache_status == pb.CACHE_STATUS_MISS for page in pages)
        keys = [page.cache_key for page in pages]
        assert len(set(keys)) == len(pages), "each page is its own cache entry"
        assert [entry.key for entry in session.list_cache_keys()] == keys

        again = _walk(session.query_persons, 7)
        assert [page.cache_status for page in again] == [pb.CACHE_STATUS_HIT] * len(pages)
        assert [page.sql_statements for page in again] == [0] * len(pages)
        assert [page.cache_key for page in again] == keys
        assert [list(page.persons) for page in again] == [list(page.persons) for page in pages]
        assert len(session.list_cache_keys()) == len(pages)


def test_paging_with_filters(client: Client, session_id: str, people: dict[int, Expected]) -> None:
    with client.session(session_id) as session:
        pages = _walk(session.query_persons, 4, name_first="person 10", name_last="person 20")
        assert [len(page.persons) for page in pages] == [4, 4, 3]
        names = [p.name for page in pages for p in page.persons]
        assert names == [person_name(n) for n in range(10, 21)]


def test_page_size_zero_is_the_default_of_50(client: Client, session_id: str) -> None:
    with client.session(session_id) as session:
        default = session.query_persons(page_size=0, view="basic")
        assert len(default.persons) == 50
        fifty = session.query_persons(page_size=50, view="basic")
        assert fifty.cache_status == pb.CACHE_STATUS_HIT, "page_size 0 is the same query as 50"
        assert fifty.cache_key == default.cache_key
        smaller = session.query_persons(page_size=49, view="basic")
        assert smaller.cache_status == pb.CACHE_STATUS_MISS
        assert len(smaller.persons) == 49
        assert smaller.next_page_token


def test_page_size_above_maximum_is_clamped_to_1000(client: Client, session_id: str) -> None:
    with client.session(session_id) as session:
        huge = session.query_persons(page_size=5000, view="basic")
        assert huge.cache_status == pb.CACHE_STATUS_MISS
        assert len(huge.persons) == PERSONS
        assert huge.next_page_token == ""
        maximum = session.query_persons(page_size=1000, view="basic")
        assert maximum.cache_status == pb.CACHE_STATUS_HIT, "5000 is lowered to 1000"
        assert maximum.cache_key == huge.cache_key
        below = session.query_persons(page_size=999, view="basic")
        assert below.cache_status == pb.CACHE_STATUS_MISS
        assert below.cache_key != huge.cache_key


def test_page_token_survives_a_page_size_change(client: Client, session_id: str) -> None:
    with client.session(session_id) as session:
        first = session.query_persons(page_size=10, view="basic")
        rest = session.query_persons(page_size=100, page_token=first.next_page_token, view="basic")
        assert _ids(first) + _ids(rest) == sorted(_ids(first) + _ids(rest))
        assert len(first.persons) + len(rest.persons) == PERSONS
        assert rest.next_page_token == ""


# -- bypass and views ----------------------------------------------------------------


def test_bypass_cache_reads_the_database_and_stores_nothing(
    client: Client, session_id: str
) -> None:
    with client.session(session_id) as session:
        cached = session.query_persons(name="person 13")
        keys = [entry.key for entry in session.list_cache_keys()]
        assert keys == [cached.cache_key]

        for name in ("person 13", "person 14"):
            bypass = session.query_persons(name=name, bypass_cache=True)
            assert bypass.cache_status == pb.CACHE_STATUS_BYPASS
            assert bypass.cache_key == ""
            assert bypass.sql_statements >= 1
            assert [p.name for p in bypass.persons] == [name]
        assert [entry.key for entry in session.list_cache_keys()] == keys
        assert [entry.hits for entry in session.list_cache_keys()] == [0]
        # The bypassed query was not stored: asking it normally is a MISS.
        assert session.query_persons(name="person 14").cache_status == pb.CACHE_STATUS_MISS
        assert session.query_persons(name="person 13").cache_status == pb.CACHE_STATUS_HIT


def test_basic_view_has_no_addresses_and_its_own_key(
    client: Client, session_id: str, people: dict[int, Expected]
) -> None:
    with client.session(session_id) as session:
        basic = session.query_persons(name_last="person 05", view="basic")
        assert [p.name for p in basic.persons] == [person_name(n) for n in range(1, 6)]
        assert all(len(p.addresses) == 0 for p in basic.persons)

        full = session.query_persons(name_last="person 05", view="full")
        assert full.cache_status == pb.CACHE_STATUS_MISS
        assert full.cache_key != basic.cache_key
        assert all(len(p.addresses) >= 1 for p in full.persons)

        default = session.query_persons(name_last="person 05")
        assert default.cache_status == pb.CACHE_STATUS_HIT, "unspecified view means FULL"
        assert default.cache_key == full.cache_key
        assert len(session.list_cache_keys()) == 2


def test_full_view_addresses_match_the_database(
    client: Client, session_id: str, people: dict[int, Expected]
) -> None:
    with client.session(session_id) as session:
        for attempt in ("miss", "hit"):
            response = session.query_persons(page_size=PERSONS)
            assert response.cache_status == (
                pb.CACHE_STATUS_MISS if attempt == "miss" else pb.CACHE_STATUS_HIT
            )
            got = {
                p.id: Expected(
                    p.id,
                    p.name,
                    tuple((a.street, a.postal_code, a.city, a.country) for a in p.addresses),
                )
                for p in response.persons
            }
            assert got == people
            assert all(a.id > 0 for p in response.persons for a in p.addresses)


# -- ListCacheKeys paging ------------------------------------------------------------


def test_list_cache_keys_pages_oldest_first(client: Client, session_id: str) -> None:
    with client.session(session_id) as session:
        keys = [session.query_persons(ids=[i], view="basic").cache_key for i in range(1, 26)]
        assert len(set(keys)) == 25

        with grpc.insecure_channel(client.target) as channel:
            stub = pb_grpc.SessionCacheStub(channel)
            metadata = (("session-id", session_id),)
            pages: list[pb.ListCacheKeysResponse] = []
            request = pb.ListCacheKeysRequest(page_size=10)
            while True:
                page = stub.ListCacheKeys(request, metadata=metadata, timeout=10)
                pages.append(page)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
                assert len(pages) < 10

        assert [len(page.entries) for page in pages] == [10, 10, 5]
        assert [page.total_size for page in pages] == [25, 25, 25]
        assert pages[-1].next_page_token == ""
        listed = [entry for page in pages for entry in page.entries]
        assert [entry.key for entry in listed] == keys
        stored = [entry.stored_at.ToNanoseconds() for entry in listed]
        assert stored == sorted(stored), "oldest first"

        assert [entry.key for entry in session.list_cache_keys(page_size=10)] == keys
        assert [entry.key for entry in session.list_cache_keys()] == keys


# -- health and reflection -----------------------------------------------------------


def test_health_reports_serving(client: Client) -> None:
    assert client.health("") == "SERVING"
    assert client.health(SERVICE_NAME) == "SERVING"
    assert SERVICE_NAME == "sesscache.v1.SessionCache"
    assert client.health("no.such.Service") == "SERVICE_UNKNOWN"


def test_reflection_lists_and_describes_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert "sesscache.v1.SessionCache" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("sesscache.v1.SessionCache")
        methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
        assert (
            methods.items()
            >= {
                "QueryPersons": ("QueryPersonsRequest", "QueryPersonsResponse"),
                "ListCacheKeys": ("ListCacheKeysRequest", "ListCacheKeysResponse"),
                "EndSession": ("EndSessionRequest", "EndSessionResponse"),
            }.items()
        )
        # Reflection serves the same contract the stubs were generated from.
        assert set(methods) == set(pb.DESCRIPTOR.services_by_name["SessionCache"].methods_by_name)


# -- a client built from the .proto file alone ---------------------------------------

PROTO_ONLY_CLIENT = textwrap.dedent(
    """
    import json, sys
    import grpc
    import sesscache_pb2 as pb
    import sesscache_pb2_grpc as pb_grpc

    assert "sesscache.v1" not in sys.modules and "client" not in sys.modules
    target, session_id = sys.argv[1], sys.argv[2]
    metadata = (("session-id", session_id),)
    steps = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SessionCacheStub(channel)

        def query():
            request = pb.QueryPersonsRequest(name="person 10")
            response = stub.QueryPersons(request, metadata=metadata, timeout=20)
            steps.append({
                "step": "query",
                "status": pb.CacheStatus.Name(response.cache_status),
                "sql": response.sql_statements,
                "key": response.cache_key,
                "names": [p.name for p in response.persons],
                "cities": [a.city for p in response.persons for a in p.addresses],
            })

        query()
        query()
        listed = stub.ListCacheKeys(pb.ListCacheKeysRequest(), metadata=metadata, timeout=20)
        steps.append({"step": "keys", "keys": [e.key for e in listed.entries],
                      "hits": [e.hits for e in listed.entries]})
        ended = stub.EndSession(pb.EndSessionRequest(), metadata=metadata, timeout=20)
        steps.append({"step": "end", "existed": ended.existed, "dropped": ended.keys_dropped})
        query()
    print(json.dumps({"module": pb.__file__, "steps": steps}))
    """
)


@pytest.fixture(scope="module")
def proto_only_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding stubs generated from a copy of the .proto file, and a client script."""
    base = tmp_path_factory.mktemp("proto-only")
    source, generated = base / "proto", base / "generated"
    source.mkdir()
    generated.mkdir()
    shutil.copy(PROTO, source / PROTO.name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{source}",
            f"--python_out={generated}",
            f"--grpc_python_out={generated}",
            str(source / PROTO.name),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in generated.iterdir()} == {"sesscache_pb2.py", "sesscache_pb2_grpc.py"}
    (generated / "walk_through.py").write_text(PROTO_ONLY_CLIENT)
    return generated


def test_client_generated_from_the_proto_alone(
    server: ServerThread, proto_only_client: Path, session_id: str, people: dict[int, Expected]
) -> None:
    result = subprocess.run(
        [sys.executable, str(proto_only_client / "walk_through.py"), server.target, session_id],
        cwd=proto_only_client,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(proto_only_client)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["module"]).parent == proto_only_client
    miss, hit, keys, end, again = report["steps"]
    ten = people[_id_of(people, 10)]
    assert miss["status"] == "CACHE_STATUS_MISS"
    assert miss["sql"] >= 1
    assert miss["names"] == ["person 10"]
    assert miss["cities"] == [address[2] for address in ten.addresses]
    assert hit["status"] == "CACHE_STATUS_HIT"
    assert hit["sql"] == 0
    assert hit["key"] == miss["key"] != ""
    assert keys == {"step": "keys", "keys": [miss["key"]], "hits": [1]}
    assert end == {"step": "end", "existed": True, "dropped": 1}
    assert again["status"] == "CACHE_STATUS_MISS"
    assert again["sql"] >= 1


# -- concurrency ---------------------------------------------------------------------


def test_concurrent_calls_on_shared_sessions(
    client: Client, session_id: str, people: dict[int, Expected]
) -> None:
    sessions = [client.session(f"{session_id}-{n}") for n in range(8)]
    numbers = list(range(1, 11))
    errors: list[BaseException] = []

    def worker(thread: int) -> int:
        done = 0
        for call in range(20):
            session = sessions[(thread + call) % len(sessions)]
            number = numbers[(thread * 20 + call) % len(numbers)]
            response = session.query_persons(name=person_name(number))
            if [p.name for p in response.persons] != [person_name(number)]:
                errors.append(AssertionError(f"{session.id}: {number} -> {response.persons}"))
            if response.cache_status == pb.CACHE_STATUS_HIT and response.sql_statements != 0:
                errors.append(AssertionError(f"a HIT emitted {response.sql_statements} SQL"))
            done += 1
        return done

    try:
        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(worker, range(16))) == 16 * 20
        assert errors == []
        for index, session in enumerate(sessions):
            entries = session.list_cache_keys()
            assert len({entry.key for entry in entries}) == len(entries) <= len(numbers)
            # Each call on the session was the MISS that stored an entry, or a hit of one.
            calls = sum(1 for t in range(16) for c in range(20) if (t + c) % 8 == index)
            assert sum(entry.hits for entry in entries) + len(entries) == calls
    finally:
        for session in sessions:
            session.end()


# -- graceful stop and the access log ------------------------------------------------

_ACCESS = re.compile(
    r"sesscache\.access: (?P<method>\w+) session=(?P<session>\S+) "
    r"status=(?P<status>\w+) cache=(?P<cache>\S+) duration_ms=\d"
)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sigterm_drains_calls_in_flight_and_exits_0(database_url: str) -> None:
    """SIGTERM while calls are queued in the server: every one of them completes OK.

    A call counts as in flight once the server has started handling it, which
    is when its (named) session appears in ListSessions. A call the server
    has received but not yet dispatched when it shuts down is cancelled by
    gRPC itself, so SIGTERM waits until every call's session is live.
    """
    calls = 24
    process = Child(
        ["--listen", "127.0.0.1:0", "--database-url", database_url, "--db-workers", "1"]
    )
    with (
        process,
        Client(process.target, timeout=30) as client,
        grpc.insecure_channel(process.target) as channel,
        ThreadPoolExecutor(calls) as pool,
    ):
        stub = pb_grpc.SessionCacheStub(channel)

        def live_sessions() -> int:
            return stub.ListSessions(pb.ListSessionsRequest(), timeout=10).total_size

        # One database worker: the calls queue up behind each other in the server.
        futures = [
            pool.submit(
                client.session(f"drain-{n}").query_persons, bypass_cache=True, page_size=PERSONS
            )
            for n in range(calls)
        ]
        _wait_for(lambda: live_sessions() == calls, 30)
        assert not all(future.done() for future in futures)
        process.signal(signal.SIGTERM)
        results = [future.result(timeout=60) for future in futures]
        assert process.wait(30) == 0

    assert all(r.cache_status == pb.CACHE_STATUS_BYPASS for r in results)
    assert all(len(r.persons) == PERSONS for r in results)
    lines = process.lines
    (draining,) = [i for i, line in enumerate(lines) if "shutting down: draining" in line]
    assert any(line.endswith(": stopped") for line in lines[draining:])
    access = [(i, m) for i, line in enumerate(lines) if (m := _ACCESS.search(line))]
    queries = [(i, m) for i, m in access if m["method"] == "QueryPersons"]
    assert len(queries) == calls, "one access-log line per call"
    assert all(m["status"] == "OK" and m["cache"] == "BYPASS" for _, m in queries)
    assert any(i > draining for i, _ in queries), "no call was in flight at SIGTERM"
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line]


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """The records of the ``sesscache.access`` logger (the server runs in this process)."""
    caplog.set_level(logging.INFO, logger="sesscache.access")
    records: list[logging.LogRecord] = []
    lock = threading.Lock()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with lock:
                records.append(record)

    handler = Collect(logging.INFO)
    logger = logging.getLogger("sesscache.access")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_one_access_log_line_per_call(
    client: Client, session_id: str, access_log: list[logging.LogRecord]
) -> None:
    def lines_of_session() -> list[str]:
        return [
            r.getMessage() for r in list(access_log) if f"session={session_id} " in r.getMessage()
        ]

    session = client.session(session_id)
    session.query_persons(name="person 16")
    _wait_for(lambda: len(lines_of_session()) >= 1, 5)
    session.query_persons(name="person 16")
    _wait_for(lambda: len(lines_of_session()) >= 2, 5)
    session.end()
    _wait_for(lambda: len(lines_of_session()) >= 3, 5)
    with pytest.raises(SessionNotFound):
        session.list_cache_keys()
    _wait_for(lambda: len(lines_of_session()) >= 4, 5)
    time.sleep(0.05)

    lines = lines_of_session()
    assert len(lines) == 4, lines
    pattern = re.compile(r"^(\w+) session=(\S+) status=(\w+) cache=(\S+) duration_ms=\d+\.\d+$")
    parsed = [m.groups() if (m := pattern.match(line)) else line for line in lines]
    assert parsed == [
        ("QueryPersons", session_id, "OK", "MISS"),
        ("QueryPersons", session_id, "OK", "HIT"),
        ("EndSession", session_id, "OK", "-"),
        ("ListCacheKeys", session_id, "NOT_FOUND", "-"),
    ]
    assert all(r.levelno == logging.INFO for r in access_log)
