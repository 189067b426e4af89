"""Following the change log: every committed change, once, in commit order, or a gap.

A :class:`ChangeFollower` reads ``sesscache_change`` (see
:mod:`sesscache.changes`) on a dedicated connection of its own and a thread
of its own, and calls the consumer back:

- ``on_gap(FeedGap)`` when it cannot account for every change: at
  :meth:`~ChangeFollower.start` (:attr:`GapReason.START`: first start or
  restart), when the log was pruned past changes it had not read yet
  (:attr:`GapReason.RETENTION`), when its connection was lost and is back
  (:attr:`GapReason.CONNECTION_LOST`), when the log was recreated
  (:attr:`GapReason.LOG_RESET`) and when ``on_changes`` raised
  (:attr:`GapReason.CONSUMER_ERROR`). The consumer must then drop
  everything it cannot vouch for. After a gap the follower stands at "now":
  every change that commits after the snapshot it took for the gap is
  delivered, including late commits of transactions that were open then.
- ``on_changes(list[Change])`` with changes in delivery order: the id order of
  what became visible since the last read. Changes to one row always arrive in
  commit order (a second writer of a row waits for the first one's commit,
  so its change gets the bigger id and becomes visible later).
- ``on_disconnect(str)`` (optional) as soon as a read fails: from then on, until
  the ``on_gap(CONNECTION_LOST)`` that follows the reconnection, changes may
  be missed.

**Threading contract.** Callbacks run on the follower's thread, one at a time,
never concurrently; the first one after :meth:`~ChangeFollower.start` is
``on_gap(START)``. Keep them short (an asyncio server hands the work to its
loop with ``loop.call_soon_threadsafe``). :attr:`~ChangeFollower.position`,
:attr:`~ChangeFollower.head`, :meth:`~ChangeFollower.lag` and
:attr:`~ChangeFollower.connected` may be read from any thread.
:meth:`~ChangeFollower.stop` joins the thread and must not be called from a
callback. An exception from ``on_changes`` is logged and becomes a
``CONSUMER_ERROR`` gap; one from ``on_gap`` or ``on_disconnect`` is logged.

**SQLite** (a database file, not ``:memory:``): every ``poll_interval`` the
follower asks ``PRAGMA data_version`` (no I/O: it changes when another
connection commits) and only then reads ``WHERE id > head``. SQLite has one
writer at a time and allocates ids inside it, so id order is commit order.

**PostgreSQL**: the dedicated psycopg connection LISTENs on
:data:`sesscache.changes.CHANNEL`, so a commit wakes it at once; it also reads
every ``fallback_interval`` in case a notification was lost. Ids come from a
sequence, allocated before commit, so a change with a smaller id can become
visible after a bigger one. Each read runs in one REPEATABLE READ snapshot
``S`` (``pg_current_snapshot()``) and reads ``WHERE id > head`` plus the
*late* rows: rows at or below the head of every transaction that was
uncertain in the previous read's snapshot ``P`` (in ``P``'s ``xip``, or at or
above ``P``'s ``xmax``, which PostgreSQL does not list) and has finished in
``S`` (below ``S``'s ``xmin``, or below its ``xmax`` and not in its ``xip``),
selected by the logged ``txid``. Why that finds every late row exactly once:
a row is invisible in ``P`` exactly when its transaction is uncertain in
``P``; such a row at or below the head was never delivered, and becomes
visible (all of its transaction's rows at once) in the first snapshot where
its transaction has finished. Snapshots are cluster-wide, and LISTEN needs a
session-level connection: point the follower past a transaction-pooling
proxy, at the server itself. Not on a hot standby (see positions).

**Positions.** :attr:`~ChangeFollower.head` is the biggest id delivered.
:attr:`~ChangeFollower.position` is the change id the follower is complete
through: every change with an id at or below it has been delivered (or was
visible at the last gap, or will never commit). On SQLite it equals
``head``. On PostgreSQL, after a read the follower takes one xid
(``pg_current_xact_id()``, in its own tiny transaction): every transaction
that could still add a row at or below the head got its xid before it, so
once a snapshot's ``xmin`` passes it, the position moves up to that head. A
long transaction, in any database of the cluster, holds the position back,
never delivery. After a gap the position starts at the gap's head;
transactions open at that moment are still delivered when they commit.

**Retention.** :func:`sesscache.changes.prune` deletes old changes (keeping a
bounded number and age, at most once per ``min_interval``), raises
``pruned_through`` and counts prunes in ``sesscache_change_state``; on
PostgreSQL it only deletes rows of transactions that had finished by the
previous prune. A follower whose head is below ``pruned_through``, or which
sees two prunes between two of its reads, reports a
:attr:`GapReason.RETENTION` gap.

**Lag.** For every delivered change the follower records ``delivered_at -
committed_at`` (seconds; ``committed_at`` is when the row was written, see
:mod:`sesscache.changes`); :meth:`~ChangeFollower.lag` gives p50 / p99 of the
most recent :attr:`FeedSettings.lag_samples`.
"""

# ruff: noqa: S608 - SQL is built from module constants only; values are bound parameters.

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import select
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from sqlalchemy import make_url
from sqlalchemy.engine import URL

from sesscache.changes import (
    CHANGE_TABLE,
    CHANNEL,
    LOG_COLUMNS,
    PG_LOG_COLUMNS,
    STATE_TABLE,
    Change,
    change_from_row,
)

log = logging.getLogger(__name__)


class GapReason(enum.StrEnum):
    """Why a follower cannot account for every change."""

    START = "start"
    RETENTION = "retention"
    CONNECTION_LOST = "connection_lost"
    LOG_RESET = "log_reset"
    CONSUMER_ERROR = "consumer_error"


@dataclass(frozen=True, slots=True)
class FeedGap:
    """A gap: changes before ``position`` may have been missed; invalidate conservatively.

    ``position``: where the follower stands now (changes after it will be
    delivered). ``previous``: its position before the gap (``None`` at start).
    ``at``: when (seconds since the epoch). ``detail``: a human sentence.
    """

    reason: GapReason
    position: int
    previous: int | None
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """Tuning of a :class:`ChangeFollower`.

    ``poll_interval``: seconds between ``PRAGMA data_version`` checks (SQLite).
    ``fallback_interval``: seconds between reads without a notification
    (PostgreSQL), and between full reads on SQLite. ``batch``: changes read per
    query. ``reconnect_min`` / ``reconnect_max``: back-off bounds after a
    failure. ``lag_samples``: how many recent lags :meth:`ChangeFollower.lag`
    keeps. ``connect_timeout``: seconds (PostgreSQL) or busy timeout (SQLite).
    """

    poll_interval: float = 0.02
    fallback_interval: float = 1.0
    batch: int = 1000
    reconnect_min: float = 0.1
    reconnect_max: float = 2.0
    lag_samples: int = 10_000
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Lag:
    """Commit-to-delivery lag over the recent samples, in seconds (``None`` without samples)."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None


class LagRecorder:
    """A bounded, thread-safe record of recent lags."""

    def __init__(self, samples: int) -> None:
        self._samples: deque[float] = deque(maxlen=samples)
        self._lock = threading.Lock()
        self._total = 0

    def record(self, lags: Sequence[float]) -> None:
        with self._lock:
            self._samples.extend(lags)
            self._total += len(lags)

    def snapshot(self) -> Lag:
        with self._lock:
            values = sorted(self._samples)
            total = self._total
        if not values:
            return Lag(count=total, p50=None, p99=None, max=None)
        return Lag(
            count=total,
            p50=percentile(values, 0.50),
            p99=percentile(values, 0.99),
            max=values[-1],
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of an ascending, non-empty sequence."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


# -- sources: one dedicated connection, read in consistent snapshots -------------


@dataclass(slots=True)
class _Read:
    changes: list[Change] = field(default_factory=list)
    gap: GapReason | None = None
    detail: str = ""
    more: bool = False


class _Source(Protocol):
    errors: tuple[type[BaseException], ...]

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def dispose(self) -> None: ...
    def reset(self) -> int: ...
    def read(self, force: bool) -> _Read: ...
    def wait(self, timeout: float) -> bool: ...
    def wake(self) -> None: ...
    @property
    def head(self) -> int: ...
    @property
    def position(self) -> int: ...


class _SqliteSource:
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: str, settings: FeedSettings) -> None:
        self._path = path
        self._settings = settings
        self._connection: sqlite3.Connection | None = None
        self._version: int | None = None
        self._last_full = 0.0
        self._head = 0
        self._epoch: str | None = None
        self._wake = threading.Event()

    @property
    def head(self) -> int:
        return self._head

    @property
    def position(self) -> int:
        return self._head

    def connect(self) -> None:
        self.close()
        if not os.path.exists(self._path):
            raise OSError(f"no SQLite database at {self._path}")
        connection = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._settings.connect_timeout,
        )
        self._connection = connection
        self._version = None
        self._wake.clear()

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None

    def dispose(self) -> None:
        self.close()

    def _require(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.OperationalError("not connected")
        return self._connection

    def _state(self, connection: sqlite3.Connection) -> tuple[int, str]:
        row = connection.execute(
            f"SELECT pruned_through, epoch FROM {STATE_TABLE} WHERE id = 1"
        ).fetchone()
        if row is None:
            raise sqlite3.OperationalError(f"{STATE_TABLE} is empty: is the change log installed?")
        return int(row[0]), str(row[1])

    def reset(self) -> int:
        connection = self._require()
        connection.execute("BEGIN")
        try:
            pruned, epoch = self._state(connection)
            top = connection.execute(f"SELECT max(id) FROM {CHANGE_TABLE}").fetchone()
        finally:
            connection.execute("COMMIT")
        self._head = max(pruned, int(top[0]) if top and top[0] is not None else 0)
        self._epoch = epoch
        return self._head

    def read(self, force: bool) -> _Read:
        connection = self._require()
        version = int(connection.execute("PRAGMA data_version").fetchone()[0])
        now = time.monotonic()
        if (
            not force
            and version == self._version
            and now - self._last_full < self._settings.fallback_interval
        ):
            return _Read()
        self._version = version
        self._last_full = now
        connection.execute("BEGIN")
        try:
            pruned, epoch = self._state(connection)
            rows = connection.execute(
                f"SELECT {LOG_COLUMNS}, committed_at FROM {CHANGE_TABLE} "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (self._head, self._settings.batch),
            ).fetchall()
        finally:
            connection.execute("COMMIT")
        if epoch != self._epoch:
            return _Read(gap=GapReason.LOG_RESET, detail="the change log was recreated")
        if pruned > self._head:
            return _Read(
                gap=GapReason.RETENTION,
                detail=f"changes through {pruned} were pruned; the follower was at {self._head}",
            )
        changes = [change_from_row(row, float(row[6]), None) for row in rows]
        if changes:
            self._head = changes[-1].id
        return _Read(changes=changes, more=len(rows) == self._settings.batch)

    def wait(self, timeout: float) -> bool:
        return self._wake.wait(min(timeout, self._settings.poll_interval))

    def wake(self) -> None:
        self._wake.set()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A PostgreSQL snapshot (``pg_current_snapshot()``): ``xmin:xmax:xip``."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, value: str) -> Snapshot:
        xmin, xmax, xip = value.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def finished(self, txid: int) -> bool:
        """Whether ``txid`` had committed or aborted when this snapshot was taken."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.xip)


class _PostgresSource:
    errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)

    def __init__(self, params: Mapping[str, Any], settings: FeedSettings) -> None:
        self._params = dict(params)
        self._settings = settings
        self._connection: psycopg.Connection[Any] | None = None
        self._head = 0
        self._position = 0
        self._epoch: str | None = None
        self._pruned = 0
        self._prunes = 0
        # The snapshot of the previous read: what was still uncertain then.
        self._snapshot = Snapshot(0, 0, frozenset())
        # (head, xid): every id <= head is final once every xid <= xid has finished.
        self._probe: tuple[int, int] | None = None
        self._probe_wait = settings.poll_interval
        self._notified = False
        self._last_read = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def head(self) -> int:
        return self._head

    @property
    def position(self) -> int:
        return self._position

    def connect(self) -> None:
        self.close()
        connection = psycopg.connect(
            **self._params,
            autocommit=True,
            connect_timeout=max(1, round(self._settings.connect_timeout)),
        )
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        connection.add_notify_handler(self._on_notify)
        connection.execute(f"LISTEN {CHANNEL}")
        self._connection = connection

    def _on_notify(self, _notify: psycopg.Notify) -> None:
        self._notified = True

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                self._connection.close()
            self._connection = None

    def dispose(self) -> None:
        self.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _require(self) -> psycopg.Connection[Any]:
        if self._connection is None:
            raise psycopg.OperationalError("not connected")
        return self._connection

    def _state(self, connection: psycopg.Connection[Any]) -> tuple[Snapshot, int, int, str]:
        row = connection.execute(
            f"SELECT pg_current_snapshot()::text, pruned_through, prunes, epoch "
            f"FROM {STATE_TABLE} WHERE id = 1"
        ).fetchone()
        if row is None:
            raise psycopg.OperationalError(f"{STATE_TABLE} is empty: is the change log installed?")
        return Snapshot.parse(str(row[0])), int(row[1]), int(row[2]), str(row[3])

    def reset(self) -> int:
        connection = self._require()
        with connection.transaction():
            snapshot, pruned, prunes, epoch = self._state(connection)
            top = connection.execute(f"SELECT max(id) FROM {CHANGE_TABLE}").fetchone()
        self._head = max(pruned, int(top[0]) if top and top[0] is not None else 0)
        self._position = self._head
        self._probe = None
        self._epoch = epoch
        self._pruned = pruned
        self._prunes = prunes
        self._snapshot = snapshot
        self._last_read = time.monotonic()
        return self._head

    def read(self, force: bool) -> _Read:
        connection = self._require()
        self._notified = False
        self._last_read = time.monotonic()
        head_before = self._head
        previous = self._snapshot
        with connection.transaction():
            snapshot, pruned, prunes, epoch = self._state(connection)
            # Transactions uncertain at the previous read (in its xip, or at or
            # above its xmax) and finished now: their rows at or below the head
            # became visible since, and were never delivered.
            finished = [str(x) for x in previous.xip if snapshot.finished(x)]
            late: list[Any] = []
            if finished or previous.xmax < snapshot.xmax:
                late = connection.execute(
                    f"SELECT {PG_LOG_COLUMNS} FROM {CHANGE_TABLE} WHERE id <= %s AND ("
                    "txid = ANY(%s::text[]::xid8[]) OR (txid >= %s::text::xid8 "
                    "AND txid < %s::text::xid8 AND txid <> ALL(%s::text[]::xid8[]))) ORDER BY id",
                    (
                        head_before,
                        finished,
                        str(previous.xmax),
                        str(snapshot.xmax),
                        [str(x) for x in snapshot.xip],
                    ),
                ).fetchall()
            rows = connection.execute(
                f"SELECT {PG_LOG_COLUMNS} FROM {CHANGE_TABLE} WHERE id > %s ORDER BY id LIMIT %s",
                (head_before, self._settings.batch),
            ).fetchall()
        if epoch != self._epoch:
            return _Read(gap=GapReason.LOG_RESET, detail="the change log was recreated")
        if pruned > head_before:
            return _Read(
                gap=GapReason.RETENTION,
                detail=f"changes through {pruned} were pruned; the follower was at {head_before}",
            )
        if prunes - self._prunes >= 2:
            # prune() only deletes rows of transactions finished before the
            # previous prune: one prune between two reads cannot take a late row.
            return _Read(
                gap=GapReason.RETENTION,
                detail=f"{prunes - self._prunes} prunes ran between two reads of the follower",
            )
        self._pruned = pruned
        self._prunes = prunes
        self._snapshot = snapshot
        changes = [change_from_row(row, float(row[6]), int(row[7])) for row in (*late, *rows)]
        if rows:
            self._head = int(rows[-1][0])
        self._advance(connection, snapshot)
        return _Read(changes=changes, more=len(rows) == self._settings.batch)

    def _advance(self, connection: psycopg.Connection[Any], snapshot: Snapshot) -> None:
        """Move the complete-through position on (see the module docstring)."""
        if self._probe is not None:
            if snapshot.xmin <= self._probe[1]:
                # Still waiting: check again soon, backing off up to the fallback interval.
                self._probe_wait = min(self._probe_wait * 2, self._settings.fallback_interval)
                return
            self._position = self._probe[0]
            self._probe = None
        if self._position < self._head:
            # Every transaction that could still add a row at or below the head
            # got its xid before this one: once all below it finished, we are
            # complete through the head. (This consumes one xid.)
            row = connection.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert row is not None
            self._probe = (self._head, int(row[0]))
            self._probe_wait = self._settings.poll_interval

    def wait(self, timeout: float) -> bool:
        """Wait for a notification, a wake-up or the fallback interval; True when woken."""
        if self._notified:
            return False
        interval = self._settings.fallback_interval
        if self._probe is not None:  # the position waits for a read: come back soon
            interval = self._probe_wait
        remaining = interval - (time.monotonic() - self._last_read)
        if remaining <= 0:
            return False
        fds: list[int] = [self._wake_r]
        if self._connection is not None:
            fds.append(self._connection.fileno())
        readable, _, _ = select.select(fds, [], [], min(timeout, remaining))
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 64):
                    pass
            return True
        return False

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")


def _source_for(url: URL, settings: FeedSettings) -> _Source:
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError("the change feed needs a SQLite database file, not :memory:")
        return _SqliteSource(str(url.database), settings)
    if backend == "postgresql":
        params: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
        for key, value in url.query.items():
            params[key] = value if isinstance(value, str) else value[-1]
        return _PostgresSource(params, settings)
    raise ValueError(f"the change feed supports SQLite and PostgreSQL, not {backend}")


# -- the follower ---------------------------------------------------------------------


@dataclass(slots=True)
class _Loop:
    """The follower thread's own state between steps."""

    pending_gap: tuple[GapReason, str] | None
    previous: int | None = None
    backoff: float = 0.1
    connected_once: bool = False
    force: bool = True


class ChangeFollower:
    """Follow the change log of the database at ``url`` on a thread of its own.

    See the module docstring for the callbacks' contract, positions and gaps.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        on_changes: Callable[[list[Change]], None],
        on_gap: Callable[[FeedGap], None],
        on_disconnect: Callable[[str], None] | None = None,
        settings: FeedSettings | None = None,
        name: str = "sesscache-feed",
    ) -> None:
        self._settings = settings or FeedSettings()
        self._source = _source_for(make_url(url), self._settings)
        self._on_changes = on_changes
        self._on_gap = on_gap
        self._on_disconnect = on_disconnect
        self._name = name
        self._lag = LagRecorder(self._settings.lag_samples)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._gaps: dict[GapReason, int] = dict.fromkeys(GapReason, 0)
        self._delivered = 0
        self._lock = threading.Lock()
        self._position = 0
        self._head = 0

    # -- state, readable from any thread ------------------------------------------

    @property
    def position(self) -> int:
        """The change id the follower is complete through (see the module docstring)."""
        with self._lock:
            return self._position

    @property
    def head(self) -> int:
        """The biggest change id delivered (or the head at the last gap)."""
        with self._lock:
            return self._head

    @property
    def connected(self) -> bool:
        """Whether the follower's connection is up."""
        return self._connected

    @property
    def delivered(self) -> int:
        """How many changes were delivered since construction."""
        with self._lock:
            return self._delivered

    def gaps(self) -> dict[GapReason, int]:
        """How many gaps of each reason were reported."""
        with self._lock:
            return dict(self._gaps)

    def lag(self) -> Lag:
        """Commit-to-delivery lag of the recent changes."""
        return self._lag.snapshot()

    # -- life cycle -------------------------------------------------------------

    def start(self) -> ChangeFollower:
        """Start the thread; its first callback is ``on_gap(START)``. Returns self."""
        if self._thread is not None:
            raise RuntimeError("the follower is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the connection (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("stop() must not be called from a follower callback")
        self._stop.set()
        self._source.wake()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("change follower %s did not stop within %.1fs", self._name, timeout)
            return
        self._thread = None

    def close(self) -> None:
        """Stop and release every resource."""
        self.stop()
        self._source.dispose()

    def __enter__(self) -> ChangeFollower:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        loop = _Loop(pending_gap=(GapReason.START, "the follower started"))
        loop.backoff = self._settings.reconnect_min
        try:
            while not self._stop.is_set():
                try:
                    self._step(loop)
                except self._source.errors as error:
                    self._lost(loop, _first_line(error))
        finally:
            self._connected = False
            self._source.close()

    def _step(self, loop: _Loop) -> None:
        """Connect, report a pending gap, or read and deliver once (then wait)."""
        source = self._source
        if not self._connected:
            source.connect()
            self._connected = True
            loop.force = True
            loop.backoff = self._settings.reconnect_min
            loop.connected_once = True
        if loop.pending_gap is not None:
            reason, detail = loop.pending_gap
            position = source.reset()
            self._publish(source)
            loop.pending_gap = None
            self._gap(reason, detail, position, loop.previous)
            loop.force = True
            return
        result = source.read(loop.force)
        loop.force = result.more  # a full batch: read on at once
        if result.gap is not None:
            loop.previous = source.position
            loop.pending_gap = (result.gap, result.detail)
            return
        if result.changes and not self._deliver(result.changes):
            loop.previous = source.position
            loop.pending_gap = (GapReason.CONSUMER_ERROR, "on_changes raised")
        self._publish(source)
        if not result.more:
            source.wait(self._settings.fallback_interval)

    def _lost(self, loop: _Loop, reason: str) -> None:
        """The database failed: close, remember the gap, back off."""
        was_connected = self._connected
        if was_connected or not loop.connected_once:
            log.warning("change feed %s: database lost (%s)", self._name, reason)
        self._connected = False
        self._source.close()
        if loop.pending_gap is None or loop.pending_gap[0] is not GapReason.START:
            loop.previous = self._source.position
            loop.pending_gap = (GapReason.CONNECTION_LOST, f"connection lost: {reason}")
        if was_connected and self._on_disconnect is not None:
            self._call(self._on_disconnect, reason)
        self._stop.wait(loop.backoff)
        loop.backoff = min(loop.backoff * 2, self._settings.reconnect_max)

    def _publish(self, source: _Source) -> None:
        with self._lock:
            self._position = source.position
            self._head = source.head

    def _gap(self, reason: GapReason, detail: str, position: int, previous: int | None) -> None:
        with self._lock:
            self._gaps[reason] += 1
        gap = FeedGap(
            reason=reason, position=position, previous=previous, detail=detail, at=time.time()
        )
        log.info("change feed %s: gap (%s) at %d: %s", self._name, reason, position, detail)
        self._call(self._on_gap, gap)

    def _deliver(self, changes: list[Change]) -> bool:
        delivered_at = time.time()
        self._lag.record([max(0.0, delivered_at - change.committed_at) for change in changes])
        with self._lock:
            self._delivered += len(changes)
        return self._call(self._on_changes, changes)

    def _call(self, callback: Callable[[Any], None], argument: object) -> bool:
        try:
            callback(argument)
        except Exception:
            log.exception("change feed %s: callback %r raised", self._name, callback)
            return False
        return True


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
