"""How every ``sesscache.v1`` call is served: one wrapper per method, built once.

:func:`method_handlers` turns each RPC of the servicer into a gRPC method
handler when the server is built, so a call meets no interceptor chain and
builds no handler of its own. The wrapper around each method, top to bottom:

1. the request is parsed from its bytes (bytes that are not a message of the
   method's request type are INVALID_ARGUMENT; grpc's own failure would be
   UNKNOWN);
2. with authentication on, the bearer token names the caller
   (:mod:`sesscache_server.auth`), else the call is UNAUTHENTICATED;
3. the call's :class:`CallRecord` is made current (the servicer fills in the
   session and cache status);
4. the servicer's method runs; an exception becomes a status in one place
   (:func:`sesscache_server.errors.to_status`);
5. the record goes to the :class:`AccessLog`: one info line per call on the
   ``sesscache.access`` logger and one latency observation, both done off the
   call's path, in batches (:meth:`AccessLog.flush`, at least every
   :data:`FLUSH_INTERVAL` seconds and when the server stops).

The health and reflection services are registered as they are: open to
every caller, not logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc.aio import AbortError
from sqlalchemy.engine import URL

from sesscache_server import auth
from sesscache_server.errors import InvalidArgument, Unauthenticated, to_status

log = logging.getLogger("sesscache.access")

if TYPE_CHECKING:  # grpc-stubs' generics do not exist at run time
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
    StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]

#: Seconds between two flushes of the access log, at most.
FLUSH_INTERVAL = 0.1

#: Calls kept for the next flush before one is forced on the call's path.
MAX_PENDING = 4096


async def abort(context: Context, error: BaseException, *, database: URL | None = None) -> None:
    """End the call with the status for ``error`` (raises ``AbortError``)."""
    # grpc-stubs lags grpc.aio here: abort_with_status exists since grpcio 1.38.
    await context.abort_with_status(  # type: ignore[attr-defined]
        to_status(error, database=database)
    )


@dataclass(slots=True)
class CallRecord:
    """What the access log says about a call; the servicer fills in the details."""

    method: str
    session: str = "-"
    principal: str = ""
    cache_status: str = "-"


#: How a session appears in log lines: given (principal, session id).
Label = Callable[[tuple[str, str]], str]

#: Told (method, status, cache status, seconds) for each call, in batches.
Observer = Callable[[str, str, str, float], None]

_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "sesscache_call", default=None
)


def current_call() -> CallRecord | None:
    """The record of the call being served (None outside a wrapped call)."""
    return _current.get()


class AccessLog:
    """The access log and latency observations of finished calls, batched.

    :meth:`add` only appends to a list; :meth:`flush` writes the lines and
    tells the observer. :meth:`run` flushes every ``interval`` seconds until
    cancelled, then once more, so nothing is lost when the server stops.

    Lines are records of the ``sesscache.access`` logger (info level), or,
    given a ``stream`` (the server's stderr, see :func:`sesscache_server.app.main`),
    written to it directly in one write per flush, formatted as the server's
    logging formats a record (``TIME INFO sesscache.access: ...``): a third of
    the cost. The logger's level decides in both cases.
    """

    def __init__(
        self,
        *,
        label: Label | None = None,
        observe: Observer | None = None,
        interval: float = FLUSH_INTERVAL,
        stream: TextIO | None = None,
    ) -> None:
        self.label: Label = label or (lambda key: key[1])
        self.observe = observe
        self.interval = interval
        self.stream = stream
        self._pending: list[tuple[CallRecord, str, float, float]] = []
        self._second = -1
        self._stamp = ""
        #: Set by :meth:`close`: from then on each call's line is written at once.
        self.closed = False
        #: Batches that could not be written (a broken stderr, say): dropped, counted.
        self.failed_batches = 0

    @property
    def enabled(self) -> bool:
        """Whether calls need recording at all (info logging on, or an observer)."""
        return self.observe is not None or log.isEnabledFor(logging.INFO)

    def add(self, record: CallRecord, status: str, elapsed: float) -> None:
        pending = self._pending
        pending.append((record, status, elapsed, time.time()))
        if len(pending) >= MAX_PENDING or self.closed:
            self.flush()

    def close(self) -> None:
        """Flush, and write what comes after (calls cancelled at shutdown) at once."""
        self.closed = True
        self.flush()

    def flush(self) -> None:
        """Write every pending line and observation now. Never raises: a batch
        that cannot be written is dropped and counted (:attr:`failed_batches`),
        so logging never fails a call or a shutdown."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self._write(pending)
        except Exception as error:  # a closed or broken stream, an observer's bug
            self.failed_batches += 1
            if self.failed_batches == 1:
                log.warning("access log lines dropped (%s); counting, not repeating", error)

    def _write(self, pending: list[tuple[CallRecord, str, float, float]]) -> None:
        observe = self.observe
        if observe is not None:
            for record, status, elapsed, _ in pending:
                observe(record.method, status, record.cache_status, elapsed)
        if not log.isEnabledFor(logging.INFO):
            return
        label = self.label
        if self.stream is not None:
            lines = []
            for record, status, elapsed, ended in pending:
                session = (
                    label((record.principal, record.session)) if record.session != "-" else "-"
                )
                lines.append(
                    f"{self._time(ended)} INFO {log.name}: {record.method} session={session} "
                    f"status={status} cache={record.cache_status} "
                    f"duration_ms={elapsed * 1000:.2f}\n"
                )
            self.stream.write("".join(lines))
            self.stream.flush()
            return
        for record, status, elapsed, ended in pending:
            session = label((record.principal, record.session)) if record.session != "-" else "-"
            line = log.makeRecord(
                log.name,
                logging.INFO,
                __file__,
                0,
                "%s session=%s status=%s cache=%s duration_ms=%.2f",
                (record.method, session, status, record.cache_status, elapsed * 1000),
                None,
            )
            line.created = ended
            line.msecs = (ended - int(ended)) * 1000
            log.handle(line)

    def _time(self, when: float) -> str:
        """``when`` as logging's default ``asctime`` (``2026-12-01 23:59:59,123``)."""
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((when - second) * 1000):03d}"

    async def run(self) -> None:
        """Flush periodically until cancelled; flush the rest on the way out."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.flush()
        finally:
            self.flush()


def _decode(deserialize: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return deserialize(raw)
    except Exception:
        raise InvalidArgument.field(
            "request", "is not a valid protobuf message of this method's request type"
        ) from None


def _cancelled(context: Context) -> str:
    """The status of a call cancelled under the server: past its deadline, or not."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _status_of(context: Context) -> str:
    code = context.code()
    return "OK" if code is None else getattr(code, "name", str(code))


class CallWrapper:
    """Builds the wrapper of each method: parse, authenticate, record, map errors, log.

    ``tokens``: ``{sha256(token): Principal}``; None (or empty) turns
    authentication off. ``access``: where finished calls go (None: nowhere).
    ``database``: the server's database, named in messages about it.
    """

    def __init__(
        self,
        *,
        tokens: Mapping[str, auth.Principal] | None = None,
        access: AccessLog | None = None,
        database: URL | None = None,
    ) -> None:
        self.tokens = dict(tokens) if tokens else None
        self.access = access
        self.database = database

    def _enter_record(self, method: str) -> tuple[CallRecord | None, float]:
        """Make the call's record current (None when nothing is recorded)."""
        access = self.access
        if access is None or not access.enabled:
            return None, 0.0
        record = CallRecord(method)
        # Each call runs in a task with a context of its own: nothing to reset.
        _current.set(record)
        return record, time.perf_counter()

    def _authenticate(self, context: Context) -> None:
        """Name the caller from its bearer token (authentication on), else refuse."""
        if self.tokens is not None:
            principal = auth.authenticate(self.tokens, context.invocation_metadata())
            if isinstance(principal, Unauthenticated):
                raise principal
            auth.set_current(principal)

    def unary(
        self, method: str, behavior: UnaryBehavior, deserialize: Callable[[bytes], Any]
    ) -> Callable[[bytes, Context], Awaitable[Any]]:
        """The served form of a unary method taking the request's bytes."""

        async def call(raw: bytes, context: Context) -> Any:
            record, started = self._enter_record(method)
            status = None
            try:
                self._authenticate(context)
                return await behavior(_decode(deserialize, raw), context)
            except asyncio.CancelledError:
                status = _cancelled(context)
                raise
            except Exception as error:
                await self._fail(context, error)
            finally:
                self._done(record, context, started, status)

        return call

    def stream(
        self, method: str, behavior: StreamBehavior, deserialize: Callable[[bytes], Any]
    ) -> Callable[[bytes, Context], AsyncIterator[Any]]:
        """The served form of a server-streaming method taking the request's bytes."""

        async def call(raw: bytes, context: Context) -> AsyncIterator[Any]:
            record, started = self._enter_record(method)
            status = None
            try:
                self._authenticate(context)
                async for response in behavior(_decode(deserialize, raw), context):
                    yield response
            except asyncio.CancelledError:
                status = _cancelled(context)
                raise
            except Exception as error:
                await self._fail(context, error)
            finally:
                self._done(record, context, started, status)

        return call

    async def _fail(self, context: Context, error: Exception) -> None:
        """End the call with the status for ``error`` (an abort stays as it is)."""
        if isinstance(error, AbortError):
            raise error
        await abort(context, error, database=self.database)

    def _done(
        self, record: CallRecord | None, context: Context, started: float, status: str | None
    ) -> None:
        if record is not None and self.access is not None:
            status = status or _status_of(context)
            self.access.add(record, status, time.perf_counter() - started)

    def method_handlers(self, servicer: object, service: ServiceDescriptor) -> dict[str, Handler]:
        """A handler for each method of ``service``, served by ``servicer``'s method of
        the same name (a servicer lacking one fails here, at start-up)."""
        handlers: dict[str, Handler] = {}
        for method in service.methods:
            behavior = getattr(servicer, method.name)
            request = GetMessageClass(method.input_type)
            response = GetMessageClass(method.output_type)
            if method.client_streaming:
                raise TypeError(f"{method.full_name}: client streaming is not served")
            if method.server_streaming:
                if not inspect.isasyncgenfunction(behavior):
                    raise TypeError(f"{method.full_name} must be an async generator")
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                    self.stream(method.name, behavior, request.FromString),
                    response_serializer=response.SerializeToString,
                )
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self.unary(method.name, behavior, request.FromString),
                    response_serializer=response.SerializeToString,
                )
        return handlers


def add_service(
    server: grpc.aio.Server, wrapper: CallWrapper, servicer: object, service: ServiceDescriptor
) -> None:
    """Serve ``service`` on ``server`` through ``wrapper`` (handlers built once, here)."""
    handlers = wrapper.method_handlers(servicer, service)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Known methods are found without a lookup through the generic handler.
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        service.full_name, handlers
    )
