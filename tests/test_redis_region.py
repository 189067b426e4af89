"""The shared ``default`` region in a real Redis (Debian's ``redis-server``).

With ``--redis-url`` the server puts the shared region in Redis through
dogpile.cache's Redis backend, keys prefixed ``sesscache:default:``. These
tests run real servers against a real Redis: the address bits a query loads
land in Redis; a second server on the same Redis and database serves them
from there (its first query for the person emits one SQL statement); the
shared-region invalidation deletes the Redis keys and returns them; and with
Redis stopped queries are still served, from the database, until Redis is
back and caching resumes. SQLite is enough: the database is not the subject.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from sesscache.fixtures import person_name
from sesscache.regions import SHARED_KEY_PREFIX
from sesscache_client import SHARED_REGION, Client
from sesscache_client.v1 import sesscache_pb2 as pb
from tests.support.redis import RedisServer
from tests.support.servers import ServerThread

pytestmark = pytest.mark.redis

MakeServer = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('redis-region') / 'sesscache.db'}"


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The run's Redis, emptied for the test and running again after it."""
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as connection:
        connection.flushdb()
    yield redis_server
    if not redis_server.running:
        redis_server.start()


def redis_keys(redis: RedisServer) -> set[str]:
    with redis.client() as connection:
        return {key.decode() for key in connection.keys("*")}


def address_bits(response: pb.QueryPersonsResponse) -> int:
    """The distinct postal codes, cities and countries of a page: its lazy loads."""
    return sum(
        len({getattr(address, field) for p in response.persons for address in p.addresses})
        for field in ("postal_code", "city", "country")
    )


def test_the_shared_region_lives_in_redis(
    make_server: MakeServer, sqlite_url: str, redis: RedisServer
) -> None:
    first = make_server(sqlite_url, redis_url=redis.url)
    second = make_server(sqlite_url, redis_url=redis.url)
    with Client(first.target) as one, Client(second.target) as two:
        warm = one.session("warm").query_persons(name=person_name(8))
        bits = address_bits(warm)
        assert bits >= 3
        assert warm.sql_statements == 1 + bits

        keys = redis_keys(redis)
        assert len(keys) == bits
        assert all(key.startswith(SHARED_KEY_PREFIX) for key in keys)

        # Another server process on the same Redis and database: the address
        # bits come from Redis, only the page itself is read from the database.
        other = two.session("other").query_persons(name=person_name(8))
        assert other.cache_status == pb.CACHE_STATUS_MISS
        assert other.sql_statements == 1
        assert other.persons == warm.persons

        removed = two.invalidate_shared_region()
        assert {entry.key for entry in removed} == keys
        assert {entry.region for entry in removed} == {SHARED_REGION}
        assert redis_keys(redis) == set()
        assert two.invalidate_shared_region() == []

        cold = one.session("cold").query_persons(name=person_name(8))
        assert cold.sql_statements == 1 + bits, "loaded from the database again"
        assert len(redis_keys(redis)) == bits


def test_listing_shows_the_shared_region_in_redis(
    make_server: MakeServer, sqlite_url: str, redis: RedisServer
) -> None:
    server = make_server(sqlite_url, redis_url=redis.url)
    with Client(server.target) as client:
        session = client.session("lister")
        session.query_persons(name=person_name(9))
        listed = {entry.key for entry in session.list_cache_keys(region=SHARED_REGION)}
        assert listed == redis_keys(redis)


def test_queries_survive_a_redis_outage(
    make_server: MakeServer, sqlite_url: str, redis: RedisServer
) -> None:
    server = make_server(sqlite_url, redis_url=redis.url)
    with Client(server.target, timeout=20) as client:
        before = client.session("before").query_persons(name=person_name(12))
        bits = address_bits(before)
        assert client.session("warm").query_persons(name=person_name(12)).sql_statements == 1

        redis.stop()
        # No INTERNAL, no UNAVAILABLE: the shared region fails over to the database.
        during = client.session("during").query_persons(name=person_name(12))
        assert during.persons == before.persons
        assert during.cache_status == pb.CACHE_STATUS_MISS, "the session cache still works"
        assert during.sql_statements == 1 + bits, "address bits read from the database"
        again = client.session("during").query_persons(name=person_name(12))
        assert (again.cache_status, again.sql_statements) == (pb.CACHE_STATUS_HIT, 0)

        redis.start()
        assert redis_keys(redis) == set(), "Redis came back empty (no persistence)"
        after = client.session("after").query_persons(name=person_name(12))
        assert after.persons == before.persons
        assert after.sql_statements == 1 + bits
        assert len(redis_keys(redis)) == bits, "caching in Redis resumed"
        resumed = client.session("resumed").query_persons(name=person_name(12))
        assert resumed.sql_statements == 1
