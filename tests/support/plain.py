"""Plain SQL on a test database, through the driver itself (``sqlite3`` / ``psycopg``), not the ORM.

:func:`connect` opens an autocommit DBAPI connection for a SQLAlchemy URL of
either backend; :func:`run` executes literal SQL (no parameters, so one text
works on both) and returns the rows, if any.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from sqlalchemy import make_url

PlainConnection = sqlite3.Connection | psycopg.Connection[Any]


def conninfo_params(url: str) -> dict[str, Any]:
    """psycopg keyword arguments for a ``postgresql+psycopg://`` URL."""
    parsed = make_url(url)
    params: dict[str, Any] = parsed.translate_connect_args(username="user", database="dbname")
    return params


def connect(url: str, *, autocommit: bool = True) -> PlainConnection:
    """A driver connection to the database at ``url`` (caller closes it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return sqlite3.connect(
            str(parsed.database), isolation_level=None if autocommit else "DEFERRED", timeout=10
        )
    return psycopg.connect(**conninfo_params(url), autocommit=autocommit)


def run(connection: PlainConnection, statement: str) -> list[tuple[Any, ...]]:
    """Execute one literal statement; the rows it returned (empty for none)."""
    cursor = connection.execute(statement)
    if cursor.description is None:
        return []
    return [tuple(row) for row in cursor.fetchall()]


def run_all(url: str, *statements: str) -> None:
    """Execute ``statements`` on a new autocommit connection (each its own transaction)."""
    connection = connect(url)
    try:
        for statement in statements:
            run(connection, statement)
    finally:
        connection.close()
