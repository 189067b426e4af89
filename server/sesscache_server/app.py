"""Building and running the server: ``prepare()``, ``start()``, ``serve()``, ``main()``.

One shape, as in grpc's examples: the database is made ready first (waiting
for it with back-off, creating and seeding the schema once), then the aio
server starts with the SessionCache service, the standard health service and
server reflection, and serves until SIGTERM or SIGINT. Then health turns
NOT_SERVING, new calls are refused, calls in flight get ``grace`` seconds
to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.metadata
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from dogpile.cache.backends.redis import RedisBackend
from dogpile.cache.region import CacheRegion
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError
from sqlalchemy.orm import sessionmaker

from sesscache import __version__, changes, db
from sesscache.backend import SharedMemoryBackend
from sesscache.caching import QueryCache
from sesscache.feed import FeedSettings
from sesscache.freshness import Freshness, ObserverPair
from sesscache.precision import names_sort_by_codepoint
from sesscache.regions import SHARED_REGION, RegionSettings, clear_shared, make_regions
from sesscache.registry import SessionRegistry
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server import auth, config, memory, reflection, webconsole
from sesscache_server.calls import AccessLog, CallWrapper, Label, add_service
from sesscache_server.gateway import Gateway
from sesscache_server.health import DrainingHealthServicer
from sesscache_server.http import HttpServer
from sesscache_server.inspection import Inspector
from sesscache_server.keys import ServerKeys
from sesscache_server.metrics import Metrics
from sesscache_server.paging import PageTokens
from sesscache_server.persons import PersonService
from sesscache_server.servicer import SessionCacheServicer

log = logging.getLogger("sesscache.server")

#: Worker threads running database work are named after this.
DB_THREAD_PREFIX = "sesscache-db"

#: The "session" events of the shared region are reported under.
SHARED_SCOPE = ("", "")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SessionCache"].full_name


def prepare(settings: config.Settings) -> Engine:
    """The engine, once the database answers and holds the schema and fixtures.

    Raises :class:`sesscache.db.DatabaseUnavailable` when the database cannot
    be reached within ``db_startup_attempts``.
    """
    url = make_url(settings.effective_database_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(
        url,
        db.PoolSettings(
            size=settings.pool_size,
            max_overflow=settings.pool_max_overflow,
            timeout=settings.pool_timeout,
            pre_ping=settings.pool_pre_ping,
            recycle=settings.pool_recycle,
            connect_timeout=settings.db_connect_timeout,
        ),
    )
    try:
        db.wait_for_database(
            engine,
            attempts=settings.db_startup_attempts,
            max_backoff=settings.db_startup_max_backoff,
        )
        db.prepare_database(engine, persons=settings.seed_persons)
    except BaseException:
        engine.dispose()
        raise
    return engine


@dataclass
class Running:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    health: DrainingHealthServicer
    registry: SessionRegistry
    executor: ThreadPoolExecutor
    engine: Engine
    inspector: Inspector
    servicer: SessionCacheServicer
    metrics: Metrics | None = None
    http: HttpServer | None = None
    access: AccessLog | None = None
    freshness: Freshness | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float) -> None:
        """Drain: NOT_SERVING, refuse new calls, let calls in flight finish within ``grace``.

        Calls still running after ``grace`` are cancelled, and database work
        still running in threads then is abandoned (not waited for): the
        server stops within its grace period even if the database hangs.
        """
        await self.health.enter_graceful_shutdown()
        self.inspector.events.close()
        for task in self.tasks:
            task.cancel()
        stopping = asyncio.create_task(self.server.stop(grace))
        await asyncio.wait([stopping], timeout=grace)
        self.servicer.abandon_database_work()
        await stopping
        if self.access is not None:
            self.access.close()  # the lines of the last calls, and of any cancelled later
        if self.freshness is not None:
            await self.freshness.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.registry.close_all()
        self.engine.dispose()
        if self.http is not None:
            await self.http.stop()


async def start(  # noqa: PLR0915
    settings: config.Settings, engine: Engine, *, access_stream: TextIO | None = None
) -> Running:
    """Start serving on ``settings.listen`` (port 0 picks a free port).

    ``access_stream``: where the access log writes its lines itself (formatted
    as the server's logging does), instead of through :mod:`logging`.
    """
    tokens_by_digest = auth.load_tokens(settings.auth_tokens_file, settings.auth_tokens)
    keys = ServerKeys(settings.effective_secret())
    # With authentication on, a session id is a capability: logs and listings
    # show a keyed hash of it instead.
    label = keys.session_label if tokens_by_digest else None
    inspector = Inspector(label=label)
    factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
    executor = ThreadPoolExecutor(settings.db_workers, thread_name_prefix=DB_THREAD_PREFIX)
    registry = SessionRegistry(
        factory,
        limits=settings.limits(),
        observer=inspector,
        label=inspector.label,
        closer=executor.submit,
        handle=keys.session_handle,
    )
    regions = _regions(settings, registry, inspector)
    freshness = _freshness(settings, engine, registry, regions[SHARED_REGION], executor)
    if freshness is not None:
        registry.observer = ObserverPair(inspector, freshness)
    query_cache = QueryCache(regions)
    query_cache.listen(factory)
    tokens = PageTokens(keys.page_tokens)
    servicer = SessionCacheServicer(
        registry,
        PersonService(registry, query_cache, tokens, follows_changes=freshness is not None),
        tokens,
        executor,
        regions=regions,
        inspector=inspector,
        watch_buffer=settings.watch_buffer,
        max_watchers=settings.max_watchers,
        max_watchers_per_principal=settings.max_watchers_per_principal,
        max_response_bytes=settings.max_response_bytes,
        info=server_info(settings, engine),
        freshness=freshness,
    )

    http_listen = settings.effective_http_listen()
    metrics = Metrics(inspector, registry) if http_listen else None
    access = _access_log(label, metrics, access_stream)
    server = grpc_server(settings)
    wrapper = CallWrapper(tokens=tokens_by_digest, access=access, database=engine.url)
    add_service(server, wrapper, servicer, pb.DESCRIPTOR.services_by_name["SessionCache"])
    health_servicer = DrainingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable(
        server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    )
    try:
        credentials = server_credentials(settings)
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except (RuntimeError, OSError) as error:
        executor.shutdown()
        if address_in_use(settings.listen):
            raise OSError(
                f"{settings.listen} is already in use (another sesscache server?); "
                "stop it or choose another --listen"
            ) from None
        raise OSError(f"cannot listen on {settings.listen}: {error}") from None
    if freshness is not None:
        # Its first gap (start) is applied before any call is served.
        await freshness.start()
    await server.start()
    http: HttpServer | None = None
    if metrics is not None:
        try:
            http = await webconsole.start_http(
                settings, metrics, health_servicer, Gateway(servicer, wrapper)
            )
        except (OSError, ValueError):  # already "cannot serve HTTP on HOST:PORT: ..."
            await server.stop(0)
            executor.shutdown()
            raise
        log.info("metrics on %s/metrics", http.url)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Running(
        server, port, health_servicer, registry, executor, engine, inspector, servicer, metrics
    )
    running.http = http
    running.access = access
    running.freshness = freshness
    if freshness is not None:
        running.tasks.append(asyncio.create_task(_prune_changes(settings, engine)))
    running.tasks.append(asyncio.create_task(_upkeep(registry, list(regions.values()))))
    running.tasks.append(asyncio.create_task(access.run()))
    return running


def server_info(settings: config.Settings, engine: Engine) -> pb.ServerInfo:
    """What GetServerInfo tells about this process (but its uptime)."""
    info = pb.ServerInfo(
        version=__version__,
        python_version=f"{platform.python_version()} ({platform.python_implementation()})",
        library_versions={name: _installed(name) for name in LIBRARIES},
        database_kind=engine.dialect.name,
        database_url=_safe_url(engine),
        settings=config.described(settings),
        replica=f"{socket.gethostname()}:{os.getpid()}",
    )
    info.started.FromNanoseconds(time.time_ns())
    return info


#: Distributions whose versions GetServerInfo reports.
LIBRARIES = (
    "grpcio",
    "protobuf",
    "SQLAlchemy",
    "dogpile.cache",
    "aiohttp",
    "psycopg",
    "redis",
    "prometheus-client",
)


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _regions(
    settings: config.Settings, registry: SessionRegistry, inspector: Inspector
) -> dict[str, CacheRegion]:
    """The session-local and shared regions, their removals reported to ``inspector``."""
    backend, arguments = settings.shared_region()
    regions = make_regions(
        registry.current_session,
        RegionSettings(
            local_expiration=_expiration(settings.local_expiration),
            shared_backend=backend,
            shared_arguments=arguments,
            shared_expiration=_expiration(settings.shared_region_expiration),
        ),
    )
    shared = regions[SHARED_REGION].backend
    if isinstance(shared, SharedMemoryBackend):
        shared.store.on_removal = lambda entry, removal: inspector.entry_removed(
            SHARED_SCOPE, entry, removal
        )
    return regions


def client_gone(record: logging.LogRecord) -> bool:
    """grpc logs a write to a stream whose client just went away as an ERROR with a
    traceback: a watcher closing its stream is no error. Such records become one
    debug line (a logging filter on grpc's logger)."""
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ == "ExecuteBatchError" and record.levelno >= logging.ERROR:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args, record.exc_info = (
            "a stream's client went away while it was written to: %s",
            (record.getMessage(),),
            None,
        )
    return True


def _access_log(label: Label | None, metrics: Metrics | None, stream: TextIO | None) -> AccessLog:
    """The access log, feeding the latency histogram when metrics are on."""
    observe = metrics.observe if metrics is not None else None
    access = AccessLog(label=label, observe=observe, stream=stream)
    if metrics is not None:
        metrics.flushers.append(access.flush)
    return access


def grpc_server(settings: config.Settings) -> grpc.aio.Server:
    """The aio server with the settings' limits on connections and calls (no
    interceptors: see :mod:`sesscache_server.calls`)."""
    return grpc.aio.server(
        options=[
            # gRPC turns SO_REUSEPORT on by default: a second server on a taken
            # port would start and share its connections at random.
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )


def address_in_use(listen: str) -> bool:
    """Whether HOST:PORT is taken: a plain bind, as gRPC's does without SO_REUSEPORT."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (only probed, never served)
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return False
    for family, kind, protocol, _, address in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def server_credentials(settings: config.Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, or None for plaintext."""
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    chain = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _expiration(seconds: float) -> float | None:
    return None if seconds < 0 else seconds


#: Sessions ended since the last trim that make the upkeep give memory back.
TRIM_AFTER_SESSIONS = 64
#: Seconds after which a quiet server gives back what any ended session left.
RELEASE_AT_LEAST_EVERY = 30.0


def idle(registry: SessionRegistry) -> bool:
    """Whether the registry holds little: a burst of sessions has ended."""
    return registry.entries <= TRIM_AFTER_SESSIONS and len(registry) <= TRIM_AFTER_SESSIONS


def _freshness(
    settings: config.Settings,
    engine: Engine,
    registry: SessionRegistry,
    shared: CacheRegion,
    executor: ThreadPoolExecutor,
) -> Freshness | None:
    """The change feed's side of this server, unless it is off or the database is
    in memory (nobody else can write it)."""
    in_memory = engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
    if not settings.change_feed or in_memory:
        return None
    with engine.connect() as connection:
        codepoint = names_sort_by_codepoint(connection)

    def clear(change_id: int | None) -> None:
        # One replica acts per change on a shared Redis; each clears its own memory.
        backend = shared.backend
        if isinstance(backend, RedisBackend) and change_id is not None:
            claim = f"{CLAIM_PREFIX}{change_id}"
            if not backend.writer_client.set(claim, b"1", nx=True, ex=CLAIM_TTL):
                return
        try:
            clear_shared(shared)
        except Exception as error:  # Redis down: its entries expire on their own
            log.warning("cannot clear the shared region: %s", error)

    return Freshness(
        registry,
        engine.url,
        settings=FeedSettings(poll_interval=settings.change_poll_interval),
        timeout=settings.freshness_timeout,
        clear_shared=clear,
        executor=executor.submit,
        codepoint_names=codepoint,
    )


#: Redis keys claiming a change for one replica's shared-region clear, and their life.
CLAIM_PREFIX = "sesscache:claim:"
CLAIM_TTL = 600
#: Seconds between prunes of the change log.
PRUNE_EVERY = 30.0


async def _prune_changes(settings: config.Settings, engine: Engine) -> None:
    """Now and then: prune the change log (every replica may; all of it is harmless)."""
    age = None if settings.change_retention_age < 0 else settings.change_retention_age

    def prune() -> None:
        with engine.begin() as connection:
            changes.prune(connection, keep=settings.change_retention, max_age=age)

    while True:
        await asyncio.sleep(PRUNE_EVERY)
        try:
            await asyncio.to_thread(prune)
        except Exception as error:  # the database is away: next time
            log.warning("cannot prune the change log: %s", error)


async def _upkeep(registry: SessionRegistry, regions: list[CacheRegion]) -> None:
    """Now and then: end idle sessions, drop expired entries, give freed memory back."""
    timeout = registry.limits.idle_timeout
    interval = 30.0 if timeout is None else max(0.05, min(timeout / 4, 30.0))
    trimmed_at = registry.sessions_ended
    released = time.monotonic()
    while True:
        await asyncio.sleep(min(interval, 5.0))
        registry.reap()
        for region in regions:
            if isinstance(region.backend, SharedMemoryBackend):
                region.backend.sweep()  # Redis expires its own keys
        ended = registry.sessions_ended - trimmed_at
        quiet = idle(registry)
        if (
            ended >= 16 * TRIM_AFTER_SESSIONS
            or (ended >= TRIM_AFTER_SESSIONS and quiet)
            or (ended and quiet and time.monotonic() - released >= RELEASE_AT_LEAST_EVERY)
        ):
            # A burst is over: collect the cycles its sessions left (ORM objects
            # refer to each other) and hand the freed pages back.
            trimmed_at = registry.sessions_ended
            released = time.monotonic()
            memory.release()


async def serve(
    settings: config.Settings, engine: Engine, *, access_stream: TextIO | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, then drain; return the exit status."""
    try:
        running = await start(settings, engine, access_stream=access_stream)
    except (OSError, ValueError) as error:  # port taken, unreadable TLS or token file
        log.error("%s", error)
        engine.dispose()
        return 1
    host = settings.listen.rsplit(":", 1)[0]
    log.info("sesscache serving on %s:%d (database %s)", host, running.port, _safe_url(engine))
    memory.settle()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining calls in flight for up to %.1fs", settings.grace)
    await running.stop(settings.grace)
    log.info("stopped")
    return 0


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sesscache_server``: parse settings, prepare the database, serve."""
    settings = config.load(argv)
    memory.limit_arenas()  # before any thread starts
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The format names no thread or process: a record need not look them up
    # (a third of what a record of the access log costs).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("grpc._cython.cygrpc").addFilter(client_gone)
    try:
        engine = prepare(settings)
    except db.DatabaseUnavailable as error:
        log.error("giving up: %s", error)
        return 1
    except (ArgumentError, NoSuchModuleError) as error:
        log.error("bad database URL %r: %s", settings.effective_database_url(), error)
        return 2
    except DatabaseError as error:
        corrupt = db.corrupt_database(error, make_url(settings.effective_database_url()))
        if corrupt is None:
            raise
        log.error("giving up: %s", corrupt)
        return 1
    code = 0
    with contextlib.suppress(KeyboardInterrupt):
        # The access log's lines go to stderr as the logging set up above
        # would write them, in batches (see sesscache_server.calls.AccessLog).
        code = asyncio.run(serve(settings, engine, access_stream=sys.stderr))
    # Idle workers exit as soon as they see the executor's shutdown; give them a
    # moment, so that only threads still running database work count below.
    deadline = time.monotonic() + 0.2
    for thread in [t for t in threading.enumerate() if t.name.startswith(DB_THREAD_PREFIX)]:
        thread.join(max(0.0, deadline - time.monotonic()))
    abandoned = [t for t in threading.enumerate() if t.name.startswith(DB_THREAD_PREFIX)]
    if abandoned:
        # Database work still running past the grace period (a hung database):
        # do not wait for it at interpreter exit.
        log.warning("exiting with %d database calls still running", len(abandoned))
        logging.shutdown()
        os._exit(code)
    return code
