"""Server interceptors, one per concern.

:class:`AccessLogInterceptor` writes one info line per call: method, session,
status, cache status and duration. :class:`ErrorInterceptor` is where
exceptions become statuses (see :mod:`sesscache_server.errors`). Both wrap unary and
server-streaming handlers; bidirectional ones (server reflection) pass
through untouched.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc.aio import AbortError
from sqlalchemy.engine import URL

from sesscache_server.errors import InvalidArgument, to_status

log = logging.getLogger("sesscache.access")

if TYPE_CHECKING:  # grpc-stubs' generics do not exist at run time
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
    UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
    StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]


async def abort(context: Context, error: BaseException, *, database: URL | None = None) -> None:
    """End the call with the status for ``error`` (raises ``AbortError``)."""
    # grpc-stubs lags grpc.aio here: abort_with_status exists since grpcio 1.38.
    await context.abort_with_status(  # type: ignore[attr-defined]
        to_status(error, database=database)
    )


#: Told (method, status, cache status, seconds) at the end of each call.
Observer = Callable[[str, str, str, float], None]


@dataclass(slots=True)
class CallRecord:
    """What the access log says about a call; the servicer fills in the details."""

    method: str
    session: str = "-"
    principal: str = ""
    cache_status: str = "-"


#: How a session appears in log lines: given (principal, session id).
Label = Callable[[tuple[str, str]], str]


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "sesscache_call", default=None
)


def current_call() -> CallRecord | None:
    """The record of the call being served, when access logging is on."""
    return _current.get()


_KEEP: Any = object()


def wrap_handler(
    handler: Handler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
    *,
    request_deserializer: Any = _KEEP,
) -> Handler:
    """``handler`` with its unary or server-streaming behaviour transformed.

    ``request_deserializer``: replaces the handler's (None: the behaviour
    gets the request's raw bytes).
    """
    if request_deserializer is _KEEP:
        request_deserializer = handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(cast("UnaryBehavior", handler.unary_unary)),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        if not inspect.isasyncgenfunction(handler.unary_stream):
            # A stream that answers with context.write() (grpc's health Watch):
            # the wrappers iterate async generators only, so serve it as it is.
            return handler
        return grpc.unary_stream_rpc_method_handler(
            stream(cast("StreamBehavior", handler.unary_stream)),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _decode(deserialize: Callable[[bytes], Any] | None, raw: Any) -> Any:
    """The request from its bytes; INVALID_ARGUMENT when they do not parse."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception:
        raise InvalidArgument.field(
            "request", "is not a valid protobuf message of this method's request type"
        ) from None


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns exceptions raised by handlers into rich statuses.

    It also parses requests itself, so bytes that are not a valid message are
    INVALID_ARGUMENT (grpc's own deserialization failure would be UNKNOWN).
    ``database``: the server's database, named in messages about it.
    """

    def __init__(self, *, database: URL | None = None) -> None:
        self.database = database

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        deserialize = handler.request_deserializer
        database = self.database
        return wrap_handler(
            handler,
            lambda behavior: self._unary(behavior, deserialize, database),
            lambda behavior: self._stream(behavior, deserialize, database),
            request_deserializer=None,
        )

    @staticmethod
    def _unary(behavior: UnaryBehavior, deserialize: Any, database: URL | None) -> UnaryBehavior:
        async def unary(raw: Any, context: Context) -> Any:
            try:
                return await behavior(_decode(deserialize, raw), context)
            except AbortError:
                raise
            except Exception as error:
                await abort(context, error, database=database)

        return unary

    @staticmethod
    def _stream(behavior: StreamBehavior, deserialize: Any, database: URL | None) -> StreamBehavior:
        async def stream(raw: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(_decode(deserialize, raw), context):
                    yield response
            except AbortError:
                raise
            except Exception as error:
                await abort(context, error, database=database)

        return stream


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """One log line per call, at info level on the ``sesscache.access`` logger.

    ``label``: how to name a session in the line (with authentication on, a
    keyed hash instead of the id: a session id is a capability worth not
    leaking); by default its id.
    """

    def __init__(self, *, label: Label | None = None, observe: Observer | None = None) -> None:
        self.label: Label = label or (lambda key: key[1])
        self.observe = observe

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return wrap_handler(
            handler,
            lambda behavior: self._unary(method, behavior, self.label, self.observe),
            lambda behavior: self._stream(method, behavior, self.label, self.observe),
        )

    @staticmethod
    def _unary(
        method: str, behavior: UnaryBehavior, label: Label, observe: Observer | None
    ) -> UnaryBehavior:
        async def unary(request: Any, context: Context) -> Any:
            record = CallRecord(method)
            # Each call runs in a task of its own, with a context of its own: the
            # record is set for this call only, with nothing to reset.
            _current.set(record)
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                _log(record, context, started, label, observe)

        return unary

    @staticmethod
    def _stream(
        method: str, behavior: StreamBehavior, label: Label, observe: Observer | None
    ) -> StreamBehavior:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            record = CallRecord(method)
            # Not reset: a stream cancelled by its client is closed from another
            # context, where resetting would raise (the call's own task ends anyway).
            _current.set(record)
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                _log(record, context, started, label, observe)

        return stream


def _log(
    record: CallRecord, context: Context, started: float, label: Label, observe: Observer | None
) -> None:
    elapsed = time.perf_counter() - started
    logging_on = log.isEnabledFor(logging.INFO)
    if not logging_on and observe is None:
        return
    code = context.code()
    status = "OK" if code is None else getattr(code, "name", str(code))
    if observe is not None:
        observe(record.method, status, record.cache_status, elapsed)
    if not logging_on:
        return
    log.info(
        "%s session=%s status=%s cache=%s duration_ms=%.2f",
        record.method,
        label((record.principal, record.session)) if record.session != "-" else "-",
        status,
        record.cache_status,
        elapsed * 1000,
    )
