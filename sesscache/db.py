"""Engines, schema creation and seeding, and waiting for the database.

:func:`make_engine` builds the engine the server uses, with the pool settings
of :class:`PoolSettings` and the listener that counts SQL statements per call
(see :mod:`sesscache.tracking`). :func:`prepare_database` creates the schema
(with the change log and its triggers, see :mod:`sesscache.changes`)
and seeds the fixture data; it is idempotent and safe when several server
processes start at once against one database, because it holds a lock for
the whole transaction: a transaction-level advisory lock on PostgreSQL, an
exclusive file lock beside the database file on SQLite.
:func:`wait_for_database` retries the first connection with capped
exponential back-off, logging one line per attempt.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from sesscache import changes, fixtures, tracking
from sesscache.models import Base

log = logging.getLogger(__name__)

#: Key of the PostgreSQL advisory lock held while preparing the database.
PREPARE_LOCK_KEY = 0x5E55CAC4E


class DatabaseUnavailable(Exception):
    """The database cannot be reached (or stopped answering) right now."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Connection pool settings (PostgreSQL; SQLite files use a small pool too).

    ``size``: connections kept open. ``max_overflow``: extra connections
    allowed under load. ``timeout``: seconds a call waits for a free
    connection before failing (UNAVAILABLE). ``pre_ping``: test a pooled
    connection before use, so connections broken by a database restart are
    replaced instead of failing a call. ``recycle``: seconds after which a
    connection is replaced (-1: never). ``connect_timeout``: seconds to wait
    for a new connection to be established.
    """

    size: int = 10
    max_overflow: int = 10
    timeout: float = 5.0
    pre_ping: bool = True
    recycle: int = 1800
    connect_timeout: int = 5


def make_engine(url: str | URL, pool: PoolSettings | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` whose statements are counted per call."""
    pool = pool or PoolSettings()
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # One shared in-memory database for every connection.
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            options.update(
                pool_size=pool.size,
                max_overflow=pool.max_overflow,
                pool_timeout=pool.timeout,
                connect_args={"check_same_thread": False, "timeout": pool.timeout},
            )
    else:
        options.update(
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.timeout,
            pool_pre_ping=pool.pre_ping,
            pool_recycle=pool.recycle,
        )
        if parsed.get_backend_name() == "postgresql":
            options["connect_args"] = {"connect_timeout": pool.connect_timeout}
    options.update(kwargs)
    engine = create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "before_cursor_execute", _count_statement)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers go on while a writer (the seeding) works.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _count_statement(*_args: Any, **_kwargs: Any) -> None:
    tracking.count_statement()


#: What SQLite says of a file that is not (or no longer) a sound database.
_CORRUPT = ("file is not a database", "database disk image is malformed")


def corrupt_database(error: BaseException, url: URL | None = None) -> str | None:
    """A message naming the file, when ``error`` says a SQLite database file is corrupt."""
    if not isinstance(error, DBAPIError) or error.orig is None:
        return None
    text = str(error.orig)
    if not any(marker in text for marker in _CORRUPT):
        return None
    where = "the database file"
    if url is not None and url.database:
        where = f"the SQLite database file {url.database}"
    return (
        f"{where} is corrupt ({_first_line(error.orig)}); restore it from a backup, or move it "
        "away to start afresh"
    )


def is_disconnect(error: BaseException) -> bool:
    """Whether ``error`` means the database is unreachable (not a bad query)."""
    if isinstance(error, DatabaseUnavailable):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        return True
    # The pool gave up waiting for a connection.
    return type(error).__name__ == "TimeoutError" and "QueuePool" in str(error)


def prepare_database(engine: Engine, *, persons: int = fixtures.DEFAULT_PERSONS) -> int:
    """Create the schema and seed the fixtures, once, whoever else is trying.

    Returns the number of rows this call added (0 when another process, or an
    earlier start, already did the work).
    """
    with _prepare_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends: concurrent starters queue here.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PREPARE_LOCK_KEY}
            )
        Base.metadata.create_all(connection)
        # The change log and its triggers (and person.version on a database made
        # before writes existed), before seeding (which needs person.version).
        changes.install(connection)
        with Session(bind=connection) as session:
            added = fixtures.seed(session, persons=persons)
    if added:
        log.info("database prepared: %d fixture rows added", added)
    return added


@contextlib.contextmanager
def _prepare_lock(engine: Engine) -> Iterator[None]:
    """An exclusive file lock beside a SQLite database file (no-op otherwise)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(str(database)).with_suffix(".prepare.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_database(
    engine: Engine,
    *,
    attempts: int = 10,
    max_backoff: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Connect once, retrying with capped exponential back-off.

    Logs one warning line per failed attempt (no traceback), and raises
    :class:`DatabaseUnavailable` after ``attempts`` failures.
    """
    delay = 0.25
    for attempt in range(1, attempts + 1):
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as error:
            reason = _first_line(error.orig) if error.orig is not None else _first_line(error)
            if attempt == attempts:
                raise DatabaseUnavailable(
                    f"database {engine.url.render_as_string(hide_password=True)} unreachable "
                    f"after {attempts} attempts: {reason}"
                ) from None
            log.warning(
                "database unreachable (%s); retrying in %.1fs (attempt %d of %d)",
                reason,
                delay,
                attempt,
                attempts,
            )
            sleep(delay)
            delay = min(delay * 2, max_backoff)
        else:
            return


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
