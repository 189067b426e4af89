"""The change log: triggers that record every committed write to the tables the cache reads.

One spec, :data:`TRACKED`, lists the tracked tables (``country``, ``city``,
``postal_code``, ``address``, ``person``) with their key and the columns a
change records. From it :func:`ddl` generates, per dialect (``sqlite`` or
``postgresql``):

- ``sesscache_change``: the log. ``id`` increases monotonically (SQLite
  ``AUTOINCREMENT``, so ids are never reused even after pruning; PostgreSQL an
  identity column, cache 1), ``table_name``, ``op`` (``I``/``U``/``D``),
  ``row_id``, ``old_row`` / ``new_row`` (JSON objects of the spec's columns:
  SQLite ``json_object``, PostgreSQL ``jsonb_build_object``), ``committed_at``
  (seconds since the epoch when the row was written: ``clock_timestamp()`` on
  PostgreSQL, ``julianday('now')`` on SQLite; the commit follows, so this is
  the commit time minus however long the transaction stayed open) and, on
  PostgreSQL, ``txid`` (``pg_current_xact_id()`` of the writing transaction,
  which :mod:`sesscache.feed` uses to pick up late commits).
- ``sesscache_change_state``: one row: ``pruned_through`` (every change with an
  id at or below it may have been deleted by :func:`prune`), ``prunes`` /
  ``pruned_at`` / ``prune_horizon`` (how many prunes ran, the last one's time
  and, on PostgreSQL, its snapshot's ``xmin``), ``epoch`` (random, made once:
  a follower that sees it change knows the log was recreated) and
  ``fingerprint`` (of the installed DDL).
- ``person.version`` (integer, server default 1): bumped by triggers on any
  update of the person row (unless the update sets it itself) and on every
  insert, update or delete of one of its addresses. It is the person's etag:
  ``UPDATE person SET name = :name WHERE id = :id AND version = :etag`` (one
  row changed: success; none: missing or a concurrent update won).
- AFTER INSERT / UPDATE / DELETE row triggers on each tracked table, writing
  one ``sesscache_change`` row per changed row. An address change writes its
  own row first, then bumps the person, which writes a ``person`` ``U`` row
  (only ``version`` differs).
- PostgreSQL only: a statement-level AFTER trigger per tracked table calling
  ``pg_notify('sesscache_change', '{"table": ..., "txid": ...}')`` once per
  statement; PostgreSQL delivers it at commit (and folds equal payloads of
  one transaction into one), which wakes the followers at once.

Plain SQL naming only today's columns keeps working: every added column has a
server-side default and the triggers fill in the rest.

:func:`install` creates or upgrades all of it, idempotently and safely when
several servers start at once: on PostgreSQL inside one transaction holding a
transaction-level advisory lock (``CREATE TABLE IF NOT EXISTS``,
``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, ``CREATE OR REPLACE FUNCTION``,
``DROP TRIGGER IF EXISTS`` / ``CREATE TRIGGER``); on SQLite inside one
``BEGIN IMMEDIATE`` transaction (the database's write lock). Functions and
triggers are only recreated when the stored fingerprint differs from the
generated DDL or a trigger is missing, so a normal start takes no table locks.
:func:`sesscache.db.prepare_database` calls it.

Reading and retention: :class:`Change` is one logged row, :func:`read_changes`
reads them, :func:`prune` deletes old ones (bounded number and age) and
raises ``pruned_through``. :mod:`sesscache.feed` follows the log.

SQLite caveat: ``PRAGMA recursive_triggers`` must stay off (SQLite's
default): the version trigger updates the row it fires on.
"""

# ruff: noqa: S608 - SQL is generated from the constant spec below; values are bound parameters.

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, text

#: The log table and the one-row state table.
CHANGE_TABLE = "sesscache_change"
STATE_TABLE = "sesscache_change_state"

#: The LISTEN/NOTIFY channel (PostgreSQL).
CHANNEL = "sesscache_change"

#: Key of the PostgreSQL advisory lock held while installing the change log.
INSTALL_LOCK_KEY = 0x5E55C4A6

#: Bumped when the generated DDL changes shape, to force a reinstall.
_DDL_FORMAT = 1

Dialect = Literal["sqlite", "postgresql"]


class Op(enum.StrEnum):
    """What a change did to its row."""

    INSERT = "I"
    UPDATE = "U"
    DELETE = "D"


@dataclass(frozen=True, slots=True)
class Bump:
    """A parent whose version a change of this table bumps: ``table.id = row.<via>``."""

    table: str
    via: str


@dataclass(frozen=True, slots=True)
class TrackedTable:
    """One tracked table: its key, the columns a change records, what it bumps.

    ``columns`` always starts with ``key``. ``version`` names the table's
    version column, maintained by triggers. ``bumps`` lists parents whose
    version a change of this table increments.
    """

    name: str
    columns: tuple[str, ...]
    key: str = "id"
    version: str | None = None
    bumps: tuple[Bump, ...] = ()
    reference: bool = False

    def __post_init__(self) -> None:
        if self.columns[:1] != (self.key,):
            raise ValueError(f"{self.name}: columns must start with the key {self.key!r}")
        if self.version is not None and self.version not in self.columns:
            raise ValueError(f"{self.name}: the version column must be recorded")


#: The single source of truth: the tables the cache reads and what a change records.
#: ``reference`` tables (postal code, city, country) are invalidated coarsely
#: (see :mod:`sesscache.precision`).
TRACKED: tuple[TrackedTable, ...] = (
    TrackedTable("country", ("id", "name"), reference=True),
    TrackedTable("city", ("id", "name", "country_id"), reference=True),
    TrackedTable("postal_code", ("id", "code", "city_id"), reference=True),
    TrackedTable(
        "address",
        ("id", "person_id", "street", "postal_code_id"),
        bumps=(Bump("person", "person_id"),),
    ),
    TrackedTable("person", ("id", "name", "version"), version="version"),
)

TRACKED_BY_NAME: Mapping[str, TrackedTable] = {table.name: table for table in TRACKED}


# -- the generated DDL -------------------------------------------------------------


def ddl(dialect: Dialect) -> tuple[str, ...]:
    """Every statement that (re)creates the functions and triggers, in order.

    The tables and the version column are created separately by
    :func:`install` (they are created once, never replaced).
    """
    if dialect == "sqlite":
        return tuple(statement for table in TRACKED for statement in _sqlite_triggers(table))
    if dialect == "postgresql":
        return _postgres_ddl()
    raise ValueError(f"unsupported dialect {dialect!r}")


def trigger_names(dialect: Dialect) -> frozenset[str]:
    """The names of every trigger :func:`ddl` creates."""
    names: set[str] = set()
    for table in TRACKED:
        if dialect == "sqlite":
            names.update(f"sesscache_{table.name}_{event}" for event in ("ai", "au", "ad"))
            continue
        names.update((f"sesscache_{table.name}_log", f"sesscache_{table.name}_notify"))
        if table.version is not None:
            names.add(f"sesscache_{table.name}_version")
    return frozenset(names)


def fingerprint(dialect: Dialect) -> str:
    """A digest of the generated DDL, stored to tell whether a reinstall is needed."""
    digest = hashlib.sha256(f"{_DDL_FORMAT}\n".encode())
    for statement in ddl(dialect):
        digest.update(statement.encode())
    return digest.hexdigest()[:32]


_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _sqlite_json(table: TrackedTable, row: str, version: str | None = None) -> str:
    parts = []
    for column in table.columns:
        value = f"{row}.{column}"
        if version is not None and column == table.version:
            value = version
        parts.append(f"'{column}', {value}")
    return f"json_object({', '.join(parts)})"


def _sqlite_log(table: TrackedTable, op: Op, old: str, new: str, row: str) -> str:
    return (
        f"INSERT INTO {CHANGE_TABLE} (table_name, op, row_id, old_row, new_row, committed_at) "
        f"VALUES ('{table.name}', '{op.value}', {row}.{table.key}, {old}, {new}, {_SQLITE_NOW});"
    )


def _sqlite_bumps(table: TrackedTable, rows: tuple[str, ...]) -> str:
    statements = []
    for bump in table.bumps:
        parent = TRACKED_BY_NAME[bump.table]
        assert parent.version is not None
        keys = ", ".join(f"{row}.{bump.via}" for row in rows)
        statements.append(
            f"UPDATE {parent.name} SET {parent.version} = {parent.version} + 1 "
            f"WHERE {parent.key} IN ({keys});"
        )
    return " ".join(statements)


def _sqlite_triggers(table: TrackedTable) -> tuple[str, ...]:
    name = table.name
    insert = (
        f"CREATE TRIGGER sesscache_{name}_ai AFTER INSERT ON {name} BEGIN "
        f"{_sqlite_log(table, Op.INSERT, 'NULL', _sqlite_json(table, 'NEW'), 'NEW')} "
        f"{_sqlite_bumps(table, ('NEW',))} END"
    )
    version_fix = ""
    new_json = _sqlite_json(table, "NEW")
    if table.version is not None:
        v = table.version
        # Bump unless the statement set the version itself (recursive triggers
        # are off, so this UPDATE does not fire this trigger again).
        version_fix = (
            f"UPDATE {name} SET {v} = OLD.{v} + 1 "
            f"WHERE {table.key} = NEW.{table.key} AND NEW.{v} IS OLD.{v}; "
        )
        new_json = _sqlite_json(
            table, "NEW", f"CASE WHEN NEW.{v} IS OLD.{v} THEN OLD.{v} + 1 ELSE NEW.{v} END"
        )
    update = (
        f"CREATE TRIGGER sesscache_{name}_au AFTER UPDATE ON {name} BEGIN "
        f"{version_fix}"
        f"{_sqlite_log(table, Op.UPDATE, _sqlite_json(table, 'OLD'), new_json, 'NEW')} "
        f"{_sqlite_bumps(table, ('OLD', 'NEW'))} END"
    )
    delete = (
        f"CREATE TRIGGER sesscache_{name}_ad AFTER DELETE ON {name} BEGIN "
        f"{_sqlite_log(table, Op.DELETE, _sqlite_json(table, 'OLD'), 'NULL', 'OLD')} "
        f"{_sqlite_bumps(table, ('OLD',))} END"
    )
    return (insert, update, delete)


def _pg_json(table: TrackedTable, row: str) -> str:
    parts = ", ".join(f"'{column}', {row}.{column}" for column in table.columns)
    return f"jsonb_build_object({parts})"


def _pg_log(table: TrackedTable, op: Op, old: str, new: str, row: str) -> str:
    return (
        f"INSERT INTO {CHANGE_TABLE} (table_name, op, row_id, old_row, new_row) "
        f"VALUES ('{table.name}', '{op.value}', {row}.{table.key}, {old}, {new});"
    )


def _pg_bumps(table: TrackedTable, rows: tuple[str, ...]) -> str:
    statements = []
    for bump in table.bumps:
        parent = TRACKED_BY_NAME[bump.table]
        assert parent.version is not None
        keys = ", ".join(f"{row}.{bump.via}" for row in rows)
        statements.append(
            f"UPDATE {parent.name} SET {parent.version} = {parent.version} + 1 "
            f"WHERE {parent.key} IN ({keys});"
        )
    return "\n    ".join(statements)


def _postgres_ddl() -> tuple[str, ...]:
    statements = [
        "CREATE OR REPLACE FUNCTION sesscache_notify() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        f"  PERFORM pg_notify('{CHANNEL}', json_build_object("
        "'table', TG_TABLE_NAME, 'txid', pg_current_xact_id()::text)::text);\n"
        "  RETURN NULL;\n"
        "END $$",
    ]
    for table in TRACKED:
        name = table.name
        function = f"sesscache_log_{name}"
        statements.append(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "  IF TG_OP = 'INSERT' THEN\n"
            f"    {_pg_log(table, Op.INSERT, 'NULL', _pg_json(table, 'NEW'), 'NEW')}\n"
            f"    {_pg_bumps(table, ('NEW',))}\n"
            "  ELSIF TG_OP = 'UPDATE' THEN\n"
            f"    {_pg_log(table, Op.UPDATE, _pg_json(table, 'OLD'), _pg_json(table, 'NEW'), 'NEW')}\n"  # noqa: E501
            f"    {_pg_bumps(table, ('OLD', 'NEW'))}\n"
            "  ELSE\n"
            f"    {_pg_log(table, Op.DELETE, _pg_json(table, 'OLD'), 'NULL', 'OLD')}\n"
            f"    {_pg_bumps(table, ('OLD',))}\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
        statements.append(f"DROP TRIGGER IF EXISTS sesscache_{name}_log ON {name}")
        statements.append(
            f"CREATE TRIGGER sesscache_{name}_log AFTER INSERT OR UPDATE OR DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
        statements.append(f"DROP TRIGGER IF EXISTS sesscache_{name}_notify ON {name}")
        statements.append(
            f"CREATE TRIGGER sesscache_{name}_notify AFTER INSERT OR UPDATE OR DELETE ON {name} "
            "FOR EACH STATEMENT EXECUTE FUNCTION sesscache_notify()"
        )
        if table.version is not None:
            v = table.version
            statements.append(
                f"CREATE OR REPLACE FUNCTION sesscache_version_{name}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                f"  IF NEW.{v} IS NOT DISTINCT FROM OLD.{v} THEN NEW.{v} := OLD.{v} + 1; END IF;\n"
                "  RETURN NEW;\n"
                "END $$"
            )
            statements.append(f"DROP TRIGGER IF EXISTS sesscache_{name}_version ON {name}")
            statements.append(
                f"CREATE TRIGGER sesscache_{name}_version BEFORE UPDATE ON {name} "
                f"FOR EACH ROW EXECUTE FUNCTION sesscache_version_{name}()"
            )
    return tuple(statements)


# -- tables ---------------------------------------------------------------------


def _table_ddl(dialect: Dialect) -> tuple[str, ...]:
    if dialect == "sqlite":
        return (
            f"CREATE TABLE IF NOT EXISTS {CHANGE_TABLE} ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "table_name TEXT NOT NULL, "
            "op TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')), "
            "row_id INTEGER NOT NULL, "
            "old_row TEXT, "
            "new_row TEXT, "
            f"committed_at REAL NOT NULL DEFAULT {_SQLITE_NOW})",
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), "
            "pruned_through INTEGER NOT NULL DEFAULT 0, "
            "epoch TEXT NOT NULL, "
            "prunes INTEGER NOT NULL DEFAULT 0, "
            "pruned_at REAL, "
            "prune_horizon TEXT, "
            "fingerprint TEXT)",
        )
    return (
        f"CREATE TABLE IF NOT EXISTS {CHANGE_TABLE} ("
        "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "txid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
        "table_name text NOT NULL, "
        "op char(1) NOT NULL CHECK (op IN ('I', 'U', 'D')), "
        "row_id bigint NOT NULL, "
        "old_row jsonb, "
        "new_row jsonb, "
        "committed_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        f"CREATE INDEX IF NOT EXISTS {CHANGE_TABLE}_txid ON {CHANGE_TABLE} (txid)",
        f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
        "id integer PRIMARY KEY CHECK (id = 1), "
        "pruned_through bigint NOT NULL DEFAULT 0, "
        "epoch text NOT NULL, "
        "prunes bigint NOT NULL DEFAULT 0, "
        "pruned_at double precision, "
        "prune_horizon xid8, "
        "fingerprint text)",
    )


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What :func:`install` did: ``added_version`` (the column was missing),
    ``triggers`` (functions and triggers were (re)created)."""

    added_version: bool
    triggers: bool


def dialect_of(connection: Connection) -> Dialect:
    """The connection's dialect, if it is one the change log supports."""
    name = connection.dialect.name
    if name == "sqlite":
        return "sqlite"
    if name == "postgresql":
        return "postgresql"
    raise ValueError(f"the change log supports SQLite and PostgreSQL, not {name}")


def install(connection: Connection) -> InstallResult:
    """Create or upgrade the change log, version column and triggers; idempotent.

    Runs inside the caller's transaction (commit it afterwards). The tracked
    tables must exist already. On PostgreSQL this takes a transaction-level
    advisory lock first; on SQLite it begins an ``IMMEDIATE`` transaction
    when none is open, so concurrent installers queue instead of racing.
    """
    dialect = dialect_of(connection)
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INSTALL_LOCK_KEY})
    else:
        raw = connection.connection.driver_connection
        if raw is not None and not raw.in_transaction:
            # pysqlite opens transactions only before DML; take the write lock now.
            raw.execute("BEGIN IMMEDIATE")
    for statement in _table_ddl(dialect):
        connection.execute(text(statement))
    connection.execute(
        text(
            f"INSERT INTO {STATE_TABLE} (id, pruned_through, epoch) "
            "VALUES (1, 0, :epoch) ON CONFLICT (id) DO NOTHING"
        ),
        {"epoch": secrets.token_hex(8)},
    )
    added_version = _add_version_columns(connection, dialect)
    wanted = fingerprint(dialect)
    stored = connection.execute(
        text(f"SELECT fingerprint FROM {STATE_TABLE} WHERE id = 1")
    ).scalar()
    present = _installed_triggers(connection, dialect)
    if stored == wanted and present == trigger_names(dialect):
        return InstallResult(added_version=added_version, triggers=False)
    _drop_triggers(connection, dialect, present)
    for statement in ddl(dialect):
        connection.execute(text(statement))
    connection.execute(
        text(f"UPDATE {STATE_TABLE} SET fingerprint = :fingerprint WHERE id = 1"),
        {"fingerprint": wanted},
    )
    return InstallResult(added_version=added_version, triggers=True)


def _add_version_columns(connection: Connection, dialect: Dialect) -> bool:
    added = False
    for table in TRACKED:
        if table.version is None:
            continue
        if dialect == "postgresql":
            exists = connection.execute(
                text(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = :table AND column_name = :column"
                ),
                {"table": table.name, "column": table.version},
            ).first()
            if exists is None:
                connection.execute(
                    text(
                        f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS "
                        f"{table.version} integer NOT NULL DEFAULT 1"
                    )
                )
                added = True
        else:
            columns = {
                row[1] for row in connection.execute(text(f"PRAGMA table_info({table.name})"))
            }
            if table.version not in columns:
                connection.execute(
                    text(
                        f"ALTER TABLE {table.name} ADD COLUMN "
                        f"{table.version} INTEGER NOT NULL DEFAULT 1"
                    )
                )
                added = True
    return added


def _installed_triggers(connection: Connection, dialect: Dialect) -> frozenset[str]:
    if dialect == "sqlite":
        rows = connection.execute(
            text(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'sesscache_%'"
            )
        )
    else:
        rows = connection.execute(
            text(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE NOT t.tgisinternal AND t.tgname LIKE 'sesscache_%' "
                "AND c.relnamespace = current_schema()::regnamespace"
            )
        )
    return frozenset(str(row[0]) for row in rows)


def _drop_triggers(connection: Connection, dialect: Dialect, names: frozenset[str]) -> None:
    if dialect == "sqlite":
        for name in sorted(names):
            connection.execute(text(f'DROP TRIGGER IF EXISTS "{name}"'))
        return
    rows = connection.execute(
        text(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND t.tgname LIKE 'sesscache_%' "
            "AND c.relnamespace = current_schema()::regnamespace"
        )
    ).all()
    for name, table in rows:
        connection.execute(text(f'DROP TRIGGER IF EXISTS "{name}" ON "{table}"'))


# -- reading the log --------------------------------------------------------------


def decode_row(value: Any) -> dict[str, Any] | None:
    """A logged row as a dict: SQLite stores JSON text, psycopg returns jsonb decoded."""
    if value is None:
        return None
    decoded = json.loads(value) if isinstance(value, str | bytes) else value
    if not isinstance(decoded, dict):
        raise ValueError(f"a logged row must be a JSON object, got {type(decoded).__name__}")
    return decoded


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one row of a tracked table.

    ``old`` / ``new``: the row's recorded columns before and after (``None``
    for an insert's ``old`` and a delete's ``new``). ``committed_at``: seconds
    since the epoch (see above). ``txid``: the PostgreSQL
    transaction id (``None`` on SQLite).
    """

    id: int
    table: str
    op: Op
    row_id: int
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None
    committed_at: float
    txid: int | None = None


#: The columns every reader selects first, in :func:`change_from_row`'s order;
#: PostgreSQL readers add ``committed_at`` as epoch seconds and ``txid``.
LOG_COLUMNS = "id, table_name, op, row_id, old_row, new_row"
PG_LOG_COLUMNS = f"{LOG_COLUMNS}, extract(epoch FROM committed_at)::float8, txid::text"


def change_from_row(row: Sequence[Any], committed_at: float, txid: int | None) -> Change:
    """A :class:`Change` from a row selected with :data:`LOG_COLUMNS` first."""
    return Change(
        id=int(row[0]),
        table=str(row[1]),
        op=Op(str(row[2]).strip()),
        row_id=int(row[3]),
        old=decode_row(row[4]),
        new=decode_row(row[5]),
        committed_at=committed_at,
        txid=txid,
    )


# -- retention ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune` did: rows ``deleted``, the new ``pruned_through``,
    and whether it ``ran`` (False: nothing beyond the limits, or too soon after
    the previous prune; the state is then untouched)."""

    deleted: int
    pruned_through: int
    ran: bool = True


def prune(
    connection: Connection,
    *,
    keep: int | None = 100_000,
    max_age: float | None = None,
    min_interval: float = 10.0,
    now: float | None = None,
) -> PruneResult:
    """Delete old changes: keep at most ``keep`` rows and none older than ``max_age`` seconds.

    Runs in the caller's transaction (commit it afterwards); safe to run from
    several servers at once: a prune within ``min_interval`` seconds of the
    previous one does nothing. Records the highest id it may have deleted in
    ``pruned_through`` (it only grows) and counts prunes, so followers that had
    not read that far report a retention gap (:mod:`sesscache.feed`).

    On PostgreSQL a prune only deletes rows of transactions that had finished
    when the previous prune ran (its snapshot's ``xmin``, kept as
    ``prune_horizon``): a follower that reads between two prunes has seen
    them, even when they committed late with small ids. So the first prune of
    a database deletes nothing there; it sets the horizon.
    """
    if keep is not None and keep < 0:
        raise ValueError(f"keep must not be negative, got {keep}")
    dialect = dialect_of(connection)
    moment = time.time() if now is None else now
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    state = connection.execute(
        text(
            f"SELECT pruned_through, pruned_at, CAST(prune_horizon AS TEXT) FROM {STATE_TABLE} "
            f"WHERE id = 1{lock}"
        )
    ).one()
    pruned_through, pruned_at, horizon = int(state[0]), state[1], state[2]
    if pruned_at is not None and moment - float(pruned_at) < min_interval:
        return PruneResult(deleted=0, pruned_through=pruned_through, ran=False)
    cutoffs: list[int] = []
    if keep is not None:
        value = connection.execute(
            text(f"SELECT id FROM {CHANGE_TABLE} ORDER BY id DESC LIMIT 1 OFFSET :keep"),
            {"keep": keep},
        ).scalar()
        if value is not None:
            cutoffs.append(int(value))
    if max_age is not None:
        condition = "committed_at < :limit"
        if dialect == "postgresql":
            condition = "committed_at < to_timestamp(:limit)"
        value = connection.execute(
            text(f"SELECT max(id) FROM {CHANGE_TABLE} WHERE {condition}"),
            {"limit": moment - max_age},
        ).scalar()
        if value is not None:
            cutoffs.append(int(value))
    cutoff = max(cutoffs, default=None)
    if cutoff is None:  # nothing beyond the limits: leave the state (and followers) alone
        return PruneResult(deleted=0, pruned_through=pruned_through, ran=False)
    deleted = 0
    if dialect == "postgresql":
        new_horizon = connection.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        ).scalar()
        if horizon is not None:
            deleted = connection.execute(
                text(
                    f"DELETE FROM {CHANGE_TABLE} "
                    "WHERE id <= :cutoff AND txid < CAST(:horizon AS xid8)"
                ),
                {"cutoff": cutoff, "horizon": horizon},
            ).rowcount
        else:
            cutoff = None
        connection.execute(
            text(
                f"UPDATE {STATE_TABLE} SET prunes = prunes + 1, pruned_at = :now, "
                "prune_horizon = CAST(:horizon AS xid8), "
                "pruned_through = GREATEST(pruned_through, COALESCE(:cutoff, 0)) WHERE id = 1"
            ),
            {"now": moment, "horizon": new_horizon, "cutoff": cutoff},
        )
    else:
        deleted = connection.execute(
            text(f"DELETE FROM {CHANGE_TABLE} WHERE id <= :cutoff"), {"cutoff": cutoff}
        ).rowcount
        connection.execute(
            text(
                f"UPDATE {STATE_TABLE} SET prunes = prunes + 1, pruned_at = :now, "
                "pruned_through = MAX(pruned_through, COALESCE(:cutoff, 0)) WHERE id = 1"
            ),
            {"now": moment, "cutoff": cutoff},
        )
    through = connection.execute(
        text(f"SELECT pruned_through FROM {STATE_TABLE} WHERE id = 1")
    ).scalar()
    return PruneResult(deleted=int(deleted or 0), pruned_through=int(through or 0))


def read_changes(connection: Connection, *, after: int = 0, limit: int = 1000) -> list[Change]:
    """The committed changes with ids above ``after`` visible to ``connection``, by id."""
    dialect = dialect_of(connection)
    if dialect == "postgresql":
        rows = connection.execute(
            text(
                f"SELECT {PG_LOG_COLUMNS} FROM {CHANGE_TABLE} WHERE id > :after "
                "ORDER BY id LIMIT :limit"
            ),
            {"after": after, "limit": limit},
        ).all()
        return [change_from_row(row, float(row[6]), int(row[7])) for row in rows]
    rows = connection.execute(
        text(
            f"SELECT {LOG_COLUMNS}, committed_at FROM {CHANGE_TABLE} WHERE id > :after "
            "ORDER BY id LIMIT :limit"
        ),
        {"after": after, "limit": limit},
    ).all()
    return [change_from_row(row, float(row[6]), None) for row in rows]
