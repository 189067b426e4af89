"""Tests for the throwaway PostgreSQL server in :mod:`tests.support.postgres`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.support.postgres import (
    EXTERNAL_URL_ENV,
    REQUIRE_ENV,
    PostgresError,
    PostgresServer,
    postgres_required,
    start_or_skip,
)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """One server for this module; restarted in place by the outage test."""
    server = start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


def _scalar(url: str, query: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_connects_and_reports_version(pg: PostgresServer) -> None:
    assert _scalar(pg.url(), "select 1") == 1
    version = pg.version()
    assert re.fullmatch(r"\d+\.\d+", version), version
    assert str(_scalar(pg.url(), "show server_version")).split()[0] == version
    if not pg.is_external:
        assert pg.url() == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/postgres"
        bindir = pg.bindir
        assert bindir is not None
        assert (bindir / "initdb").is_file()


@pytest.mark.postgres
def test_create_and_drop_database(pg: PostgresServer) -> None:
    url = pg.create_database("support_create_drop")
    assert url == pg.url("support_create_drop")
    assert _scalar(url, "select current_database()") == "support_create_drop"

    # A second create starts from scratch.
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table t (x int)"))
    finally:
        engine.dispose()
    pg.create_database("support_create_drop")
    assert _scalar(url, "select count(*) from pg_tables where tablename = 't'") == 0

    pg.drop_database("support_create_drop")
    with pytest.raises(OperationalError, match="does not exist"):
        _scalar(url, "select 1")
    pg.drop_database("support_create_drop")  # dropping a missing database is fine


@pytest.mark.postgres
def test_data_survives_stop_and_start_again(pg: PostgresServer) -> None:
    if not pg.can_restart:
        pytest.skip(f"{EXTERNAL_URL_ENV} names a server that cannot be restarted")
    url = pg.create_database("support_outage")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table kept (x int)"))
            conn.execute(text("insert into kept values (42)"))
        port = pg.port

        pg.stop()
        assert not pg.running
        engine.dispose()  # drop pooled connections to the stopped server
        with pytest.raises(OperationalError), engine.connect():
            pass

        pg.start_again()
        assert pg.port == port
        with engine.connect() as conn:
            assert conn.execute(text("select x from kept")).scalar_one() == 42

        pg.restart(mode="immediate")
        assert pg.port == port
        engine.dispose()
        with engine.connect() as conn:
            assert conn.execute(text("select x from kept")).scalar_one() == 42
    finally:
        engine.dispose()
        if not pg.running:
            pg.start_again()


@pytest.mark.postgres
def test_external_url_is_honoured(pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTERNAL_URL_ENV, pg.url())
    external = start_or_skip()
    try:
        assert external.is_external
        assert not external.can_restart
        assert external.version() == pg.version()
        url = external.create_database("support_external")
        assert _scalar(url, "select current_database()") == "support_external"
        with pytest.raises(PostgresError, match="cannot stop or restart"):
            external.stop()
        with pytest.raises(PostgresError, match="cannot stop or restart"):
            external.restart()
    finally:
        external.cleanup()  # drops the databases it created
    assert pg.running
    with pytest.raises(OperationalError, match="does not exist"):
        _scalar(pg.url("support_external"), "select 1")


@pytest.mark.postgres
def test_context_manager_cleans_up() -> None:
    if PostgresServer.find_binaries() is None:
        pytest.skip("PostgreSQL is not installed")
    with PostgresServer() as server:
        directory = server.directory
        assert directory is not None
        assert directory.is_dir()
        assert _scalar(server.url(), "select 1") == 1
    assert not server.running
    assert not Path(directory).exists()
    server.cleanup()  # idempotent


def test_missing_binaries_skip_or_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXTERNAL_URL_ENV, raising=False)
    monkeypatch.setattr(PostgresServer, "find_binaries", staticmethod(lambda: None))

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        start_or_skip()

    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        start_or_skip()


@pytest.mark.parametrize(
    ("ci", "require", "expected"),
    [
        (None, None, False),
        ("true", None, True),
        ("TRUE", None, True),
        ("false", None, False),
        ("1", None, False),
        (None, "1", True),
        (None, "0", False),
        ("false", "1", True),
    ],
)
def test_postgres_required(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, require: str | None, expected: bool
) -> None:
    for name, value in (("CI", ci), (REQUIRE_ENV, require)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert postgres_required() is expected
