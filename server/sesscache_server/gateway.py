"""JSON transcoding of ``sesscache.v1.SessionCache`` over HTTP (grpc-gateway style).

``POST /api/sesscache.v1.SessionCache/<Method>`` with a JSON body (the request
message in the proto3 JSON mapping, ``google.protobuf.json_format``) calls the
servicer's own handler for every unary method of the service, and answers the
response message as JSON. The methods are the handlers the server's
:class:`~sesscache_server.calls.CallWrapper` builds from the service
descriptor, the very ones the gRPC server serves, so a new RPC is transcoded
without a line here, and every call is parsed, authenticated, logged and has
its errors mapped as a gRPC call: validation, limits and rights are the gRPC
ones.

The call's metadata is made from the HTTP request: ``Authorization`` (``Bearer
TOKEN``) and ``Session-Id`` headers become the ``authorization`` and
``session-id`` metadata. A refused call answers ``{"code", "message",
"details"}`` (``code`` is the gRPC status name, ``details`` the status
details, e.g. a ``google.rpc.BadRequest``) with the HTTP status grpc-gateway
gives that code (:data:`HTTP_STATUS`).

:class:`HttpContext` is the ``grpc.aio.ServicerContext`` a call sees.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import AbortError

from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.calls import CallWrapper
from sesscache_server.validation import SESSION_ID_KEY

if TYPE_CHECKING:
    from sesscache_server.calls import Handler, StreamBehavior, UnaryBehavior

    _ContextBase = grpc.aio.ServicerContext[Any, Any]
else:
    _ContextBase = grpc.aio.ServicerContext

SERVICE = pb.DESCRIPTOR.services_by_name["SessionCache"]
#: The URL path of a method: PREFIX + its name.
PREFIX = f"/api/{SERVICE.full_name}/"
AUTHORIZATION_KEY = "authorization"

#: The HTTP status of each gRPC status code, as grpc-gateway maps them.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
#: Characters of a client's input an error message quotes at most.
QUOTE_LIMIT = 64
_DETAILS_KEY = "grpc-status-details-bin"


# -- the methods -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC of the service: its served handler (and the one without access log), and
    its request type."""

    name: str
    handler: Handler
    quiet: Handler
    request: type[Message]
    streaming: bool


def methods(servicer: object, wrapper: CallWrapper) -> dict[str, Method]:
    """Every method of the service, by name, with the handlers ``wrapper`` builds for
    ``servicer`` (as the gRPC server's), and the same without the access log."""
    served = wrapper.method_handlers(servicer, SERVICE)
    unlogged = CallWrapper(tokens=wrapper.tokens, access=None, database=wrapper.database)
    quiet = unlogged.method_handlers(servicer, SERVICE)
    return {
        descriptor.name: Method(
            descriptor.name,
            served[descriptor.name],
            quiet[descriptor.name],
            message_factory.GetMessageClass(descriptor.input_type),
            descriptor.server_streaming,
        )
        for descriptor in SERVICE.methods
    }


# -- errors ------------------------------------------------------------------------


@dataclass
class CallError(Exception):
    """A call refused with a gRPC status: what the HTTP client gets as JSON."""

    code: grpc.StatusCode
    message: str
    details: tuple[dict[str, Any], ...] = ()
    #: The HTTP status, when not the one of ``code`` (413, 415).
    status: int | None = None

    @property
    def http_status(self) -> int:
        return self.status or HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict[str, Any]:
        return {"code": self.code.name, "message": self.message, "details": list(self.details)}

    @classmethod
    def bad_field(cls, field: str, description: str) -> CallError:
        violation = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            ]
        )
        detail = json_format.MessageToDict(violation)
        detail = {"@type": "type.googleapis.com/google.rpc.BadRequest", **detail}
        return cls(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", (detail,))


def short(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (a client's input is never echoed in full)."""
    return text if len(text) <= limit else text[:limit] + "..."


_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]*)" at "([^"]*)"')
_BAD_VALUE = re.compile(r"Failed to parse (\S+) field: (.*)", re.DOTALL)
_AT_PATH = re.compile(r" at ([A-Za-z_][\w.\[\]]*)\.?$")


def parse_request(body: bytes, request_type: type[Message]) -> Message:
    """The request message from a JSON body ("" is the empty request).

    Raises :class:`CallError` INVALID_ARGUMENT naming the field at fault (or
    ``body`` when it is not a JSON object), with a short message.
    """
    message = request_type()
    if not body.strip():
        return message
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise CallError.bad_field("body", f"is not valid JSON ({reason})") from None
    if not isinstance(document, dict):
        raise CallError.bad_field("body", "must be a JSON object (the request message)")
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise _parse_error(str(error)) from None
    return message


def _parse_error(text: str) -> CallError:
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown is not None:
        path = unknown.group(2).partition(".")[2]
        field = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        return CallError.bad_field(short(field), "unknown field")
    bad = _BAD_VALUE.search(text)
    if bad is not None:
        field, reason = bad.group(1), bad.group(2)
        at = _AT_PATH.search(reason)
        if at is not None:
            reason = reason[: at.start()]
            field = at.group(1).rstrip(".").partition(".")[2] or field
        return CallError.bad_field(short(field), short(reason.rstrip("."), 120))
    return CallError.bad_field("body", "is not a valid request message")


def _status_details(trailing: Sequence[tuple[str, Any]]) -> tuple[dict[str, Any], ...]:
    for key, value in trailing:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            return tuple(json_format.MessageToDict(detail) for detail in status.details)
    return ()


# -- the context -------------------------------------------------------------------


class HttpContext(_ContextBase):
    """What a servicer handler sees of an HTTP call: the ``grpc.aio.ServicerContext``
    it uses, over an HTTP request.

    ``gone`` tells whether the HTTP client went away; ``on_initial_metadata``
    is awaited when the handler sends its initial metadata (a stream starts).
    """

    def __init__(
        self,
        metadata: Sequence[tuple[str, str]],
        peer: str,
        *,
        gone: Callable[[], bool] = lambda: False,
        on_initial_metadata: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self._gone = gone
        self._on_initial_metadata = on_initial_metadata
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._finished = False
        self._callbacks: list[Callable[[Any], None]] = []

    # -- what the call tells ---------------------------------------------------------

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Any:
        return {}

    def time_remaining(self) -> Any:
        return None

    def done(self) -> bool:
        return self._finished or self._gone()

    def cancelled(self) -> bool:
        return self._gone()

    def add_done_callback(self, callback: Any) -> None:
        self._callbacks.append(callback)

    # -- what the handler sets --------------------------------------------------------

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._code, self._details = code, details
        self._trailing = tuple(trailing_metadata or ())
        raise AbortError

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata or ())

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._on_initial_metadata is not None:
            callback, self._on_initial_metadata = self._on_initial_metadata, None
            await callback()

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    async def read(self) -> Any:
        raise RuntimeError("the HTTP gateway has no client-streaming calls")

    async def write(self, message: Any) -> None:
        raise RuntimeError("the HTTP gateway streams what handlers yield")

    # -- the outcome ------------------------------------------------------------------

    def error(self) -> CallError | None:
        """The status the handler set, when it is not OK."""
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        return CallError(self._code, self._details, _status_details(self._trailing))

    def finish(self) -> None:
        self._finished = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


# -- calls ---------------------------------------------------------------------------


class Gateway:
    """Calls the servicer's handlers as the gRPC server does (see :func:`methods`).

    Calls the server makes on its own behalf (the periodic statistics of a live
    stream, ``quiet=True``) skip the access log, and so the call metrics.
    """

    def __init__(self, servicer: object, wrapper: CallWrapper) -> None:
        self.methods = methods(servicer, wrapper)

    @staticmethod
    def _request(handler: Handler, request: Message) -> Any:
        deserialize = handler.request_deserializer
        raw = request.SerializeToString()
        return raw if deserialize is None else deserialize(raw)

    async def unary(
        self, name: str, request: Message, context: HttpContext, *, quiet: bool = False
    ) -> Message:
        """The response of unary method ``name``; raises :class:`CallError`."""
        method = self.methods[name]
        handler = method.quiet if quiet else method.handler
        behavior = cast("UnaryBehavior | None", handler.unary_unary)
        assert behavior is not None, name
        try:
            response = await behavior(self._request(handler, request), context)
        except AbortError:
            response = None
        finally:
            context.finish()
        error = context.error()
        if error is not None:
            raise error
        assert isinstance(response, Message), name
        return response

    async def stream(
        self, name: str, request: Message, context: HttpContext
    ) -> AsyncIterator[Message]:
        """The messages of server-streaming method ``name``; raises :class:`CallError`."""
        handler = self.methods[name].handler
        behavior = cast("StreamBehavior | None", handler.unary_stream)
        assert behavior is not None, name
        messages = behavior(self._request(handler, request), context)
        try:
            async for message in messages:
                yield message
        except AbortError:
            pass
        finally:
            context.finish()
            if isinstance(messages, AsyncGenerator):
                await messages.aclose()
        error = context.error()
        if error is not None:
            raise error


def metadata_of(headers: Any, *, session: str | None = None) -> list[tuple[str, str]]:
    """The call metadata an HTTP request carries: its ``Authorization`` and
    ``Session-Id`` headers (each as many times as sent), or ``session``."""
    metadata = [(AUTHORIZATION_KEY, value) for value in headers.getall("Authorization", ())]
    if session is not None:
        metadata.append((SESSION_ID_KEY, session))
    else:
        metadata += [(SESSION_ID_KEY, value) for value in headers.getall("Session-Id", ())]
    return metadata


def to_json(message: Message) -> dict[str, Any]:
    """A response message in the proto3 JSON mapping, with the proto's field names and
    every field (zeros too), as the CLI's ``--json`` prints it."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


_PLAIN = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_TIMES = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
#: How each field of a flat message type is rendered, by type name (None: not flat).
_PLANS: dict[str, tuple[tuple[str, int, Any], ...] | None] = {}


def _plan(descriptor: Any) -> tuple[tuple[str, int, Any], ...] | None:
    """(name, kind, extra) per field when every field is a string, bool, integer or enum
    without presence, or a Timestamp or Duration: what :func:`to_json_fast` renders."""
    plan: list[tuple[str, int, Any]] = []
    for field in descriptor.fields:
        if field.is_repeated:
            return None
        if field.message_type is not None:
            if field.message_type.full_name not in _TIMES:
                return None
            plan.append((field.name, 3, None))
        elif field.has_presence:
            return None  # proto3 `optional`: printed only when set
        elif field.type in _PLAIN:
            plan.append((field.name, 0, None))
        elif field.type in _INT64:
            plan.append((field.name, 1, None))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            names = {value.number: value.name for value in field.enum_type.values}
            plan.append((field.name, 2, names))
        else:
            return None
    return tuple(plan)


def to_json_fast(message: Message) -> dict[str, Any]:
    """:func:`to_json` of ``message``, rendered without json_format's generic walk when the
    message is flat (the live events: one per cache hit); the same output."""
    descriptor = message.DESCRIPTOR
    name = descriptor.full_name
    if name not in _PLANS:
        _PLANS[name] = _plan(descriptor)
    plan = _PLANS[name]
    if plan is None:
        return to_json(message)
    result: dict[str, Any] = {}
    for field, kind, extra in plan:
        value = getattr(message, field)
        if kind == 0:
            result[field] = value
        elif kind == 1:
            result[field] = str(value)
        elif kind == 2:
            result[field] = extra.get(value, value)
        elif message.HasField(field):
            result[field] = value.ToJsonString()
    return result


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except (CallError, AbortError):
        pass
