"""Server settings: every option is a command-line flag and an environment variable.

Each :class:`Settings` field ``some_option`` is read from ``--some-option``,
else from ``SESSCACHE_SOME_OPTION``, else its default. ``python -m sesscache_server
--help`` lists them all with their variables and defaults; the README
documents them. :func:`environment_variables` names every variable the
server reads (the docker-compose tests check the compose file against it).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from sesscache import __version__
from sesscache.registry import Limits

ENV_PREFIX = "SESSCACHE_"
#: Where the HTTP server (the web console, /metrics, /healthz) listens by default.
#: When that port is taken (another server on the machine), a free one is used.
DEFAULT_HTTP_LISTEN = "127.0.0.1:8051"


def _opt(help: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help}, **kwargs)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be told. See ``python -m sesscache_server --help``."""

    listen: str = _opt("address to listen on, HOST:PORT", default="127.0.0.1:50051")
    database_url: str = _opt(
        "SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host/db "
        "(default: a SQLite file in the data directory, created and seeded on first start)",
        default="",
    )
    data_dir: str = _opt("folder for the default SQLite database", default="data")
    seed_persons: int = _opt("fixture persons to seed (person 01 ...)", default=50)
    log_level: str = _opt("log level: debug, info, warning, error", default="info")
    grace: float = _opt("seconds in-flight calls get to finish on SIGTERM/SIGINT", default=10.0)
    db_workers: int = _opt("threads running database work", default=16)
    db_startup_attempts: int = _opt(
        "connection attempts at start-up before giving up (back-off doubles, capped)", default=30
    )
    db_startup_max_backoff: float = _opt("longest wait between start-up attempts, s", default=5.0)
    pool_size: int = _opt("database connections kept open", default=10)
    pool_max_overflow: int = _opt("extra connections allowed under load", default=10)
    pool_timeout: float = _opt("seconds a call waits for a free connection", default=5.0)
    pool_pre_ping: bool = _opt("test pooled connections before use", default=True)
    pool_recycle: int = _opt(
        "seconds after which a connection is replaced (-1: never)", default=1800
    )
    db_connect_timeout: int = _opt("seconds to establish a database connection", default=5)
    shared_region_backend: str = _opt(
        "dogpile.cache backend of the shared 'default' region",
        default="sesscache.memory",
    )
    shared_region_arguments: str = _opt(
        "JSON object of arguments for the shared region's backend", default="{}"
    )
    shared_region_expiration: float = _opt(
        "seconds shared-region entries stay fresh (-1: forever)", default=3600.0
    )
    redis_url: str = _opt(
        "shortcut: put the shared region in Redis at this URL (dogpile.cache.redis)", default=""
    )
    local_expiration: float = _opt(
        "seconds session-cache entries stay fresh (-1: until evicted or ended)", default=-1.0
    )
    max_sessions: int = _opt(
        "live sessions at most; when full, the least recently used idle session is ended "
        "(RESOURCE_EXHAUSTED only when every session is busy)",
        default=10_000,
    )
    session_idle_timeout: float = _opt(
        "seconds without a call after which a session is ended (-1: never)", default=1800.0
    )
    max_entries_per_session: int = _opt(
        "cache entries per session; the least recently used are evicted beyond it", default=1000
    )
    max_bytes_per_session: int = _opt(
        "approximate cache bytes per session; least recently used entries are evicted beyond it",
        default=8 * 1024 * 1024,
    )
    auth_tokens_file: str = _opt(
        "file of bearer tokens, one TOKEN=PRINCIPAL[:ROLE] per line (ROLE: writer or admin); "
        "enables authentication",
        default="",
    )
    auth_tokens: str = _opt(
        "bearer tokens, TOKEN=PRINCIPAL[:ROLE] (ROLE: writer or admin) separated by commas; "
        "enables authentication "
        "(prefer the variable or the file: flags show in process listings)",
        default="",
    )
    tls_cert: str = _opt("PEM server certificate (chain) file; enables TLS", default="")
    tls_key: str = _opt("PEM private key file of the server certificate", default="")
    tls_client_ca: str = _opt(
        "PEM CA bundle; when set, clients must present a certificate it signed", default=""
    )
    watch_buffer: int = _opt(
        "events kept per watched session (and for all-session watchers); a reader further "
        "behind loses the oldest",
        default=1000,
    )
    max_sessions_per_principal: int = _opt(
        "live sessions one principal may hold; at the quota its least recently used idle "
        "session is ended",
        default=10_000,
    )
    max_cache_bytes: int = _opt(
        "approximate bytes all session caches may hold together; beyond it the least recently "
        "used idle session of the principal holding the most bytes is ended",
        default=1024 * 1024 * 1024,
    )
    max_watchers: int = _opt("WatchCacheEvents streams open at once, server-wide", default=64)
    max_watchers_per_principal: int = _opt(
        "WatchCacheEvents streams one principal may have open at once", default=8
    )
    max_concurrent_streams: int = _opt(
        "concurrent calls (HTTP/2 streams) one client connection may have open", default=1000
    )
    max_concurrent_rpcs: int = _opt(
        "calls the server runs at once; more are refused with RESOURCE_EXHAUSTED", default=4096
    )
    max_request_bytes: int = _opt(
        "bytes one request message may have; larger ones are refused by gRPC with "
        "RESOURCE_EXHAUSTED before they are parsed",
        default=256 * 1024,
    )
    max_response_bytes: int = _opt(
        "bytes a listing or invalidation response may hold; longer pages end early and "
        "the next page token carries on",
        default=1024 * 1024,
    )
    http_listen: str = _opt(
        "serve the web console, /metrics and /healthz over HTTP at HOST:PORT ('off' or "
        "empty: no HTTP server; if the default port is taken, a free one)",
        default=DEFAULT_HTTP_LISTEN,
    )
    metrics_listen: str = _opt("alias of --http-listen (kept for existing set-ups)", default="")
    http_max_connections: int = _opt(
        "HTTP connections open at once; more are closed at once", default=256
    )
    http_idle_timeout: float = _opt(
        "seconds an HTTP connection may stay silent before it is closed", default=10.0
    )
    secret: str = _opt(
        "server secret: signs page tokens and keys the session-id hashes in logs and "
        "listings; set the same on replicas behind one proxy (default: random per process)",
        default="",
    )
    page_token_secret: str = _opt("alias of --secret (kept for existing set-ups)", default="")
    change_feed: bool = _opt(
        "follow the database's change log and invalidate what every committed change can "
        "affect, in every session (not for an in-memory SQLite database)",
        default=True,
    )
    change_poll_interval: float = _opt(
        "seconds between checks of a SQLite database for new changes", default=0.05
    )
    change_retention: int = _opt(
        "changes the log keeps (older ones are pruned by every server now and then)",
        default=100_000,
    )
    change_retention_age: float = _opt(
        "seconds a logged change is kept at most (-1: no age limit)", default=86_400.0
    )
    freshness_timeout: float = _opt(
        "seconds the change feed may stay lost before the server stops serving cached "
        "entries (it clears them and reads the database until the feed is back)",
        default=5.0,
    )

    # -- derived ----------------------------------------------------------------

    def limits(self) -> Limits:
        return Limits(
            max_sessions=self.max_sessions,
            max_sessions_per_principal=self.max_sessions_per_principal,
            max_cache_bytes=self.max_cache_bytes,
            idle_timeout=None if self.session_idle_timeout < 0 else self.session_idle_timeout,
            max_entries=self.max_entries_per_session,
            max_bytes=self.max_bytes_per_session,
        )

    def check(self) -> None:
        """Raise ValueError naming the first setting that makes no sense."""
        positive = (
            "db_workers",
            "db_startup_attempts",
            "pool_size",
            "max_sessions",
            "watch_buffer",
            "max_sessions_per_principal",
            "max_cache_bytes",
            "max_watchers",
            "max_watchers_per_principal",
            "max_concurrent_streams",
            "max_concurrent_rpcs",
            "max_request_bytes",
            "max_response_bytes",
            "http_max_connections",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_entries_per_session", "max_bytes_per_session", "pool_max_overflow"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.grace < 0:
            raise ValueError("grace must not be negative")
        if self.http_idle_timeout <= 0:
            raise ValueError("http_idle_timeout must be positive")
        for name in ("change_poll_interval", "freshness_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.change_retention < 0:
            raise ValueError("change_retention must not be negative")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        self.shared_region()

    def effective_http_listen(self) -> str:
        """Where the HTTP server listens ("": nowhere): ``http_listen``, else its alias
        ``metrics_listen`` when ``http_listen`` is left at its default or empty."""
        listen = self.http_listen
        if self.metrics_listen and listen in ("", DEFAULT_HTTP_LISTEN):
            listen = self.metrics_listen
        return "" if listen.strip().lower() == "off" else listen

    def effective_secret(self) -> str:
        """The server secret: ``secret``, else its alias ``page_token_secret`` ("": random)."""
        return self.secret or self.page_token_secret

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'sesscache.db'}"

    def shared_region(self) -> tuple[str, dict[str, Any]]:
        """(backend name, arguments) of the shared region."""
        if self.redis_url:
            # dogpile warns unless a distributed lock is also not thread-local: its
            # token must be releasable by whichever thread finishes the work.
            return "dogpile.cache.redis", {
                "url": self.redis_url,
                "distributed_lock": True,
                "thread_local_lock": False,
            }
        arguments = json.loads(self.shared_region_arguments)
        if not isinstance(arguments, dict):
            raise ValueError("shared_region_arguments must be a JSON object")
        return self.shared_region_backend, arguments


#: Settings whose values are secrets: shown as "***" when set.
SECRET_SETTINGS = frozenset({"auth_tokens", "secret", "page_token_secret"})


def described(settings: Settings) -> dict[str, str]:
    """Every setting as text, secrets masked, URLs without their passwords."""
    shown: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name in SECRET_SETTINGS:
            text = "***" if value else ""
        elif f.name in ("database_url", "redis_url") and value:
            text = mask_url(str(value))
        else:
            text = str(value)
        shown[f.name] = text
    return shown


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


def environment_variables() -> list[str]:
    """The name of every environment variable the server reads."""
    return [ENV_PREFIX + f.name.upper() for f in fields(Settings)]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: Any) -> Any:
    return {"int": int, "float": float, "bool": _parse_bool}.get(str(kind), str)


def parser() -> argparse.ArgumentParser:
    """The command-line parser; each flag's default comes from its variable."""
    result = argparse.ArgumentParser(
        prog="sesscache-server",
        description="sesscache gRPC server: ORM queries through a session-local cache.",
    )
    result.add_argument("--version", action="version", version=f"sesscache {__version__}")
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not MISSING else None
        result.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_converter(f.type),
            default=None,
            metavar=str(f.type).upper(),
            help=f"{f.metadata['help']} [env {env}; default {default!r}]",
        )
    return result


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment, then defaults.

    Raises SystemExit (via argparse) with a clear message on a bad value.
    """
    environ = os.environ if environ is None else environ
    argument_parser = parser()
    namespace = argument_parser.parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(namespace, f.name)
        if value is None:
            env = ENV_PREFIX + f.name.upper()
            if env in environ:
                try:
                    value = _converter(f.type)(environ[env])
                except ValueError as error:
                    argument_parser.error(f"{env}: {error}")
        if value is not None:
            values[f.name] = value
    settings = Settings(**values)
    try:
        settings.check()
    except ValueError as error:
        argument_parser.error(str(error))
    return settings
