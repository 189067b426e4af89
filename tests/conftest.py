"""Fixtures: databases (SQLite and a real PostgreSQL), real servers, the real client.

Every database-touching test runs twice, once per backend: ``backend`` is
parametrised over ``sqlite`` and ``postgres``. The PostgreSQL cluster is
started once per test run (see :mod:`tests.support.postgres`); under
``CI=true`` a missing PostgreSQL fails the run instead of skipping.

The ``server`` fixture is a real aio server on 127.0.0.1 port 0 in a thread,
shared by a module's tests (the service only reads the database; tests keep
apart by using their own session ids). Tests that need other settings start
their own with :func:`make_server`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sesscache_client import Client
from sesscache_server.config import Settings
from tests.support.postgres import PostgresServer, start_or_skip
from tests.support.redis import RedisServer
from tests.support.redis import start_or_skip as start_redis_or_skip
from tests.support.servers import ServerThread

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole run."""
    server = start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fresh_database(backend: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'sesscache.db'}"
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture(scope="module")
def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh database of ``backend`` for the module (made and seeded by the server)."""
    yield from _fresh_database(backend, request, tmp_path_factory.mktemp("db"))


@pytest.fixture
def fresh_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A fresh database of ``backend`` for one test."""
    yield from _fresh_database(backend, request, tmp_path)


def settings_for(database_url: str, **overrides: object) -> Settings:
    """Test settings: loopback, port 0, the given database, fast start-up, no HTTP."""
    base = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        grace=1.0,
        db_startup_attempts=3,
        db_startup_max_backoff=0.5,
        http_listen="",  # no HTTP server unless a test asks for one
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    """Start servers with custom settings; all are stopped after the test."""
    started: list[ServerThread] = []

    def make(database_url: str, **overrides: object) -> ServerThread:
        server = ServerThread(settings_for(database_url, **overrides)).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[ServerThread]:
    """A real server on ``database_url``, shared by the module."""
    with ServerThread(settings_for(database_url)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    """The real client, connected to ``server``."""
    with Client(server.target, timeout=30) as connected:
        yield connected


@pytest.fixture
def session_id() -> str:
    """A session id no other test uses."""
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def pg_database(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, psycopg conninfo) of a fresh PostgreSQL database for the module."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(database)
    try:
        yield url, postgres.conninfo(database)
    finally:
        postgres.drop_database(database)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server for the whole run."""
    server = start_redis_or_skip()
    try:
        yield server
    finally:
        server.cleanup()
