"""A throwaway PostgreSQL server for the test suite.

:class:`PostgresServer` runs ``initdb`` into a fresh temporary directory and
starts ``postgres`` on 127.0.0.1 on a free TCP port, tuned for tests (no
fsync, trust authentication on loopback only). Tests can stop and start it
again on the same port and data directory to simulate an outage, and create an
isolated database each.

PostgreSQL refuses to run as root. When the tests run as root (as CI does) the
server programs run as the ``postgres`` OS user created by Debian's
``postgresql`` package, through ``runuser`` (or ``setpriv``).

``SESSCACHE_TEST_POSTGRES_URL`` points the suite at an existing server
instead; that server cannot be stopped or restarted (see
:attr:`PostgresServer.can_restart`).

:func:`start_or_skip` is the entry point for fixtures: it starts a server, or
skips the test when PostgreSQL is not installed - unless
:func:`postgres_required` says it must be there (``CI=true`` or
``SESSCACHE_REQUIRE_POSTGRES=1``), in which case the test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tests.support.required import required

__all__ = [
    "EXTERNAL_URL_ENV",
    "REQUIRE_ENV",
    "PostgresError",
    "PostgresServer",
    "PostgresUnavailableError",
    "StopMode",
    "postgres_required",
    "start_or_skip",
]

EXTERNAL_URL_ENV = "SESSCACHE_TEST_POSTGRES_URL"
"""Environment variable naming an existing server to use instead of starting one."""

REQUIRE_ENV = "SESSCACHE_REQUIRE_POSTGRES"
"""Environment variable that, set to ``1``, turns a missing PostgreSQL into a failure."""

StopMode = Literal["smart", "fast", "immediate"]

DEFAULT_USER = "postgres"
"""The database superuser created by ``initdb``."""

OS_USER_WHEN_ROOT = "postgres"
"""The OS account the server runs as when the tests run as root."""

_HOST = "127.0.0.1"
_DRIVER = "postgresql+psycopg"
_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_INITDB_TIMEOUT = 120.0
_PG_CTL_TIMEOUT = 60
_CONNECT_TIMEOUT = 10
_START_ATTEMPTS = 3
# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux).
_MAX_SOCKET_DIR_LEN = 80
_INSTALL_HINT = "install it with `apt-get install postgresql`"

# Appended to postgresql.conf: durability off for speed, connections for tests.
_SETTINGS = {
    "listen_addresses": _HOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

# Watchdog: when the test process dies without cleaning up (even on SIGKILL or
# os._exit), its end of the pipe closes, `cat` returns and the server is
# stopped and its directory removed. Arguments: base directory, stop command.
_WATCHDOG_SCRIPT = """\
base=$1
shift
cat >/dev/null 2>&1
if [ -f "$base/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1; fi
rm -rf -- "$base"
"""


class PostgresError(RuntimeError):
    """A PostgreSQL server could not be set up, started or stopped."""


class PostgresUnavailableError(PostgresError):
    """The PostgreSQL server programs are not installed."""


def postgres_required() -> bool:
    """Whether a missing PostgreSQL must fail the tests instead of skipping them.

    True on CI (``CI=true``, any case) or when ``SESSCACHE_REQUIRE_POSTGRES=1``.
    """
    return required(REQUIRE_ENV)


def start_or_skip() -> PostgresServer:
    """Return a started server for a fixture, or skip / fail the requesting test.

    Uses the server named by ``SESSCACHE_TEST_POSTGRES_URL`` when set (and
    fails if it cannot be reached). Otherwise starts a throwaway server; when
    PostgreSQL is not installed, fails if :func:`postgres_required`, else skips.
    Any other start-up error fails. The caller owns the result and must call
    :meth:`PostgresServer.cleanup` (or use it as a context manager).
    """
    external = os.environ.get(EXTERNAL_URL_ENV, "").strip()
    if external:
        try:
            server = PostgresServer.from_url(external)
            server.start()
        except PostgresError as exc:
            pytest.fail(f"{EXTERNAL_URL_ENV} is set but unusable: {exc}", pytrace=False)
        return server

    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailableError as exc:
        server.cleanup()
        if postgres_required():
            pytest.fail(
                f"{exc}; PostgreSQL is required here (CI=true or {REQUIRE_ENV}=1)",
                pytrace=False,
            )
        pytest.skip(f"{exc} (set {EXTERNAL_URL_ENV} to use an existing server)")
    except PostgresError as exc:
        server.cleanup()
        pytest.fail(f"could not start a test PostgreSQL server: {exc}", pytrace=False)
    return server


class PostgresServer:
    """A PostgreSQL cluster on 127.0.0.1 for tests, or an existing server.

    ``PostgresServer()`` manages a throwaway cluster: :meth:`start` creates and
    starts it, :meth:`stop` / :meth:`start_again` / :meth:`restart` simulate an
    outage keeping the port and the data, :meth:`cleanup` stops it and deletes
    its directory. :meth:`from_url` wraps an existing server instead, which
    only supports the database helpers. Use it as a context manager, or call
    :meth:`cleanup`; an ``atexit`` hook and a watchdog process stop a forgotten
    or orphaned server.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        user: str = DEFAULT_USER,
        watchdog: bool = True,
    ) -> None:
        """Prepare (but do not start) a throwaway server.

        ``bindir`` defaults to :meth:`find_binaries`; ``user`` is the database
        superuser; ``watchdog`` starts a helper process that stops the server
        if this process dies without cleaning up.
        """
        self._bindir = bindir
        self._user = user
        self._use_watchdog = watchdog
        self._external: URL | None = None
        self._base: Path | None = None
        self._port: int | None = None
        self._running = False
        self._initialised = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False
        self._created: list[str] = []

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Wrap an existing server, given a SQLAlchemy or libpq ``postgresql://`` URL."""
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise PostgresError(f"not a valid database URL: {exc}") from None
        if parsed.get_backend_name() not in {"postgresql", "postgres"}:
            raise PostgresError(f"not a PostgreSQL URL: {parsed!r}")
        server = cls(user=parsed.username or DEFAULT_USER, watchdog=False)
        server._external = parsed.set(drivername=_DRIVER)
        return server

    # -- discovery ---------------------------------------------------------

    @staticmethod
    def find_binaries() -> Path | None:
        """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, if any.

        Tries ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``
        (Debian's layout, not on ``PATH``), then ``initdb`` on ``PATH``.
        """
        pg_config = shutil.which("pg_config")
        if pg_config is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=10,
                )
                bindir = Path(out.stdout.strip())
                if _has_server_programs(bindir):
                    return bindir
        for bindir in sorted(_DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True):
            if _has_server_programs(bindir):
                return bindir
        initdb = shutil.which("initdb")
        if initdb is not None:
            for bindir in (Path(initdb).resolve().parent, Path(initdb).parent):
                if _has_server_programs(bindir):
                    return bindir
        return None

    # -- properties ----------------------------------------------------------

    @property
    def is_external(self) -> bool:
        """Whether this wraps an existing server rather than a throwaway one."""
        return self._external is not None

    @property
    def can_restart(self) -> bool:
        """Whether :meth:`stop`, :meth:`start_again` and :meth:`restart` work."""
        return self._external is None

    @property
    def running(self) -> bool:
        """Whether the server is (believed to be) accepting connections."""
        return self._running

    @property
    def host(self) -> str:
        """The host name or address to connect to."""
        if self._external is not None:
            return self._external.host or "localhost"
        return _HOST

    @property
    def port(self) -> int:
        """The TCP port; fixed for the life of a throwaway server."""
        if self._external is not None:
            return self._external.port or 5432
        if self._port is None:
            raise PostgresError("the server has not been started")
        return self._port

    @property
    def user(self) -> str:
        """The database user the helpers connect as (a superuser when throwaway)."""
        return self._user

    @property
    def directory(self) -> Path | None:
        """The temporary directory (data, socket, log) of a throwaway server."""
        return self._base

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self._require_base() / "data"

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self._require_base() / "postgres.log"

    @property
    def bindir(self) -> Path | None:
        """The directory of the server programs, once found."""
        return self._bindir

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed and start the server; wait until it is ready.

        Raises :class:`PostgresUnavailableError` when PostgreSQL is not
        installed and :class:`PostgresError` on any other failure. For an
        external server, only checks that it answers.
        """
        if self._external is not None:
            self._running = True
            try:
                self.version()
            except psycopg.Error as exc:
                self._running = False
                raise PostgresError(f"cannot connect to {self._safe_url()}: {exc}") from exc
            return
        if self._running:
            raise PostgresError("the server is already running")
        if not self._initialised:
            if not self._atexit_registered:
                atexit.register(self.cleanup)
                self._atexit_registered = True
            self._initdb()
            self._start_watchdog()
        if self._port is not None:
            self._pg_ctl_start()
            return
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._port = _free_port()
            try:
                self._pg_ctl_start()
            except PostgresError:
                # Another process may have taken the port between probe and bind.
                if attempt == _START_ATTEMPTS or not self._port_conflict():
                    self._port = None
                    raise
            else:
                return

    def start_again(self) -> None:
        """Start a stopped server on its old port and data directory."""
        self._require_restartable()
        if not self._initialised or self._port is None:
            raise PostgresError("start_again() needs a server that was started before")
        self.start()

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (``pg_ctl stop -m MODE``), keeping its data and port."""
        self._require_restartable()
        if not self._running:
            return
        self._pg_ctl("stop", "-m", mode)
        self._running = False

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop and start the server again on the same port and data directory."""
        self.stop(mode)
        self.start_again()

    def cleanup(self) -> None:
        """Stop the server and delete its directory; safe to call more than once.

        For an external server, drops the databases made by :meth:`create_database`.
        """
        if self._external is not None:
            for name in reversed(self._created):
                with contextlib.suppress(psycopg.Error):
                    self.drop_database(name)
            self._created.clear()
            self._running = False
            return
        if self._running or (self._base is not None and self._pid_file_exists()):
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except PostgresError:
                self._kill_postmaster()
        self._running = False
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        self._initialised = False
        self._port = None
        self._stop_watchdog()
        if self._atexit_registered:
            atexit.unregister(self.cleanup)
            self._atexit_registered = False

    def __enter__(self) -> Self:
        """Start the server unless it is running already."""
        if not self._running:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Clean up, whatever happened."""
        self.cleanup()

    def __repr__(self) -> str:
        """Show where the server is and whether it runs."""
        state = "running" if self._running else "stopped"
        return f"<PostgresServer {self._safe_url()} {state}>"

    # -- databases -------------------------------------------------------------

    def url(self, dbname: str | None = None) -> str:
        """A SQLAlchemy URL ``postgresql+psycopg://USER@HOST:PORT/DBNAME``.

        ``dbname`` defaults to ``postgres`` (or the external URL's database).
        """
        return self._url(dbname).render_as_string(hide_password=False)

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string for psycopg, for the same database as :meth:`url`."""
        url = self._url(dbname)
        params: dict[str, str | int | None] = {
            "host": url.host,
            "port": url.port,
            "user": url.username,
            "password": url.password,
            "dbname": url.database,
            "connect_timeout": _CONNECT_TIMEOUT,
        }
        for key, value in url.query.items():
            params[key] = value if isinstance(value, str) else value[-1]
        return make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (dropping any old one); return its URL."""
        with self._admin_connection() as conn:
            conn.execute(self._drop_sql(conn, name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if self._external is not None and name not in self._created:
            self._created.append(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        with self._admin_connection() as conn:
            conn.execute(self._drop_sql(conn, name))
        if name in self._created:
            self._created.remove(name)

    def version(self) -> str:
        """The server version, e.g. ``"15.18"``."""
        with self._admin_connection() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        if row is None:  # pragma: no cover - SHOW always returns a row
            raise PostgresError("SHOW server_version returned nothing")
        return str(row[0]).split()[0]

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        if self._base is None:
            return ""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------

    def _url(self, dbname: str | None) -> URL:
        if self._external is not None:
            base = self._external
            return base.set(database=dbname or base.database or "postgres")
        return URL.create(
            _DRIVER,
            username=self._user,
            host=_HOST,
            port=self.port,
            database=dbname or "postgres",
        )

    def _safe_url(self) -> str:
        if self._external is not None:
            return self._external.render_as_string(hide_password=True)
        if self._port is None:
            return f"{_DRIVER}://{self._user}@{_HOST}"
        return self._url(None).render_as_string(hide_password=True)

    def _admin_connection(self) -> psycopg.Connection[TupleRow]:
        if not self._running:
            raise PostgresError("the server is not running")
        return psycopg.connect(self.conninfo(), autocommit=True)

    @staticmethod
    def _drop_sql(conn: psycopg.Connection[TupleRow], name: str) -> sql.Composed:
        drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
        if conn.info.server_version >= 130000:
            return sql.Composed([drop, sql.SQL(" WITH (FORCE)")])
        return sql.Composed([drop])

    def _require_restartable(self) -> None:
        if not self.can_restart:
            raise PostgresError(
                f"cannot stop or restart the external server {self._safe_url()} "
                f"(from {EXTERNAL_URL_ENV})"
            )

    def _require_base(self) -> Path:
        if self._base is None:
            raise PostgresError("the server has no directory (not started, or cleaned up)")
        return self._base

    def _require_bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = self.find_binaries()
        if self._bindir is None or not _has_server_programs(self._bindir):
            raise PostgresUnavailableError(
                f"PostgreSQL server programs ({', '.join(_REQUIRED_PROGRAMS)}) not found; "
                + _INSTALL_HINT
            )
        return self._bindir

    def _as_server_user(self) -> list[str]:
        """The command prefix that runs a program as the server's OS user."""
        if os.geteuid() != 0:
            return []
        if shutil.which("runuser"):
            return ["runuser", "-u", OS_USER_WHEN_ROOT, "--"]
        if shutil.which("setpriv"):
            return [
                "setpriv",
                f"--reuid={OS_USER_WHEN_ROOT}",
                f"--regid={OS_USER_WHEN_ROOT}",
                "--init-groups",
                "--",
            ]
        raise PostgresError("running as root needs `runuser` or `setpriv` to drop privileges")

    def _make_base(self) -> Path:
        parent = Path(tempfile.gettempdir())
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(OS_USER_WHEN_ROOT)
            except KeyError:
                raise PostgresError(
                    f"PostgreSQL refuses to run as root and there is no "
                    f"{OS_USER_WHEN_ROOT!r} OS user to run it as; {_INSTALL_HINT}"
                ) from None
            if not _traversable_by_others(parent):
                parent = Path("/tmp")
        base = Path(tempfile.mkdtemp(prefix="sesscache-pg-", dir=parent))
        if owner is not None:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        return base

    def _initdb(self) -> None:
        bindir = self._require_bindir()
        prefix = self._as_server_user()
        if self._base is not None:  # left over from a failed attempt
            shutil.rmtree(self._base, ignore_errors=True)
        self._base = self._make_base()
        self._run(
            [
                *prefix,
                str(bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                self._user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            what="initdb",
            timeout=_INITDB_TIMEOUT,
        )
        settings = dict(_SETTINGS)
        socket_dir = self._base / "sock"
        if len(str(socket_dir)) <= _MAX_SOCKET_DIR_LEN:
            socket_dir.mkdir()
            if prefix:
                shutil.chown(socket_dir, OS_USER_WHEN_ROOT, OS_USER_WHEN_ROOT)
            settings["unix_socket_directories"] = str(socket_dir)
        else:
            settings["unix_socket_directories"] = ""  # TCP only
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# sesscache test server\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_conf_quote(value)}\n")
        self._initialised = True

    def _pg_ctl(self, *args: str) -> None:
        bindir = self._require_bindir()
        self._run(
            [
                *self._as_server_user(),
                str(bindir / "pg_ctl"),
                *args,
                "--pgdata",
                str(self.data_dir),
                "--wait",
                "--timeout",
                str(_PG_CTL_TIMEOUT),
            ],
            what=f"pg_ctl {args[0]}",
            timeout=_PG_CTL_TIMEOUT + 15,
        )

    def _pg_ctl_start(self) -> None:
        self._pg_ctl("start", "--log", str(self.log_file), "-o", f"-p {self.port}")
        self._running = True

    def _run(self, cmd: list[str], *, what: str, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            result = subprocess.run(
                cmd,
                cwd=self._require_base(),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(
                f"{what} timed out after {timeout:g}s\n{self.log_tail()}".rstrip()
            ) from exc
        except OSError as exc:
            raise PostgresError(f"{what} could not run: {exc}") from exc
        if result.returncode != 0:
            details = "\n".join(
                part
                for part in (
                    f"$ {shlex.join(cmd)}",
                    result.stdout.strip(),
                    result.stderr.strip(),
                    f"-- server log ({self.log_file}):\n{self.log_tail()}"
                    if self.log_tail()
                    else "",
                )
                if part
            )
            raise PostgresError(f"{what} failed with exit code {result.returncode}\n{details}")

    def _port_conflict(self) -> bool:
        log = self.log_tail(20)
        return "could not bind" in log or "already in use" in log

    def _pid_file_exists(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def _kill_postmaster(self) -> None:
        """Last resort when ``pg_ctl stop`` failed: SIGKILL the postmaster.

        Only if the PID in ``postmaster.pid`` still belongs to a ``postgres``
        process, so that a stale file cannot make us kill something else.
        """
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8")
            pid = int(text.splitlines()[0])
            comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
            if comm in {"postgres", "postmaster"}:
                os.kill(pid, signal.SIGKILL)

    def _start_watchdog(self) -> None:
        if not self._use_watchdog or self._watchdog is not None:
            return
        stop = [
            *self._as_server_user(),
            str(self._require_bindir() / "pg_ctl"),
            "stop",
            "-m",
            "immediate",
            "--pgdata",
            str(self.data_dir),
        ]
        self._watchdog = subprocess.Popen(
            ["sh", "-c", _WATCHDOG_SCRIPT, "sesscache-pg-watchdog", str(self._base), *stop],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of reach of the terminal's Ctrl-C
        )

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        stdin: IO[bytes] | None = watchdog.stdin
        if stdin is not None:
            stdin.close()
        try:
            watchdog.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


def _has_server_programs(bindir: Path) -> bool:
    return all(
        (bindir / name).is_file() and os.access(bindir / name, os.X_OK)
        for name in _REQUIRED_PROGRAMS
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin``: ``9.6`` < ``15``."""
    name = bindir.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return (-1,)
    return tuple(int(part) for part in name.split("."))


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from ``/`` to ``path`` can be entered by anyone."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@contextlib.contextmanager
def table_locked(conninfo: str, table: str = "person") -> Iterator[psycopg.Connection[TupleRow]]:
    """Hold ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` in an open transaction.

    Every statement on ``table`` waits meanwhile: a database that is slow for
    whoever touches that table, and only for them.
    """
    with psycopg.connect(conninfo) as connection:
        connection.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
        )
        try:
            yield connection
        finally:
            connection.rollback()


def waiting_on_lock(conninfo: str, table: str = "person") -> int:
    """How many backends wait for a lock on ``table``."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            (table,),
        ).fetchone()
    assert row is not None
    return int(row[0])
