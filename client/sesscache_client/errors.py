"""Exceptions raised by the sesscache client, and the one place gRPC errors become them.

Every call of :class:`~sesscache_client.Client`, :class:`~sesscache_client.AsyncClient`
and their sessions that fails with a gRPC status raises one of these, never a bare
:class:`grpc.RpcError` (the original error is chained as ``__cause__``).
:func:`from_rpc_error` does the mapping, the same for both clients.

Exception tree::

    SesscacheError          base: .code (grpc.StatusCode), .message (str),
    │                       .details (google.protobuf.Any details of the status)
    ├── InvalidArgument     INVALID_ARGUMENT; also a ValueError. .field_violations is
    │                       [(field, description), ...] from google.rpc.BadRequest.
    │                       Raised locally too, e.g. for a malformed session id.
    ├── NotFound            NOT_FOUND: a resource the request names (a person) does not
    │   │                   exist; .resource_type and .resource_name say which.
    │   └── SessionNotFound NOT_FOUND: the session the call needs does not exist.
    ├── AlreadyExists       ALREADY_EXISTS: a write would duplicate a unique value (a name).
    ├── Aborted             ABORTED: a write met a concurrent change or a stale etag; read
    │                       again, then retry.
    ├── Unavailable         UNAVAILABLE: server or its database unreachable; retryable.
    ├── DeadlineExceeded    DEADLINE_EXCEEDED: the call's timeout passed.
    ├── ResourceExhausted   RESOURCE_EXHAUSTED: the server is full.
    ├── Unauthenticated     UNAUTHENTICATED: token missing or not accepted.
    ├── PermissionDenied    PERMISSION_DENIED: token not allowed to do this.
    └── ServerError         any other status (INTERNAL, UNIMPLEMENTED, UNKNOWN, ...).

``str(error)`` is one line, ``"<CODE>: <message>"``, fit for a command line tool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import grpc
import grpc.aio
from google.protobuf import any_pb2, message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "SesscacheError",
    "SessionNotFound",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class SesscacheError(Exception):
    """A sesscache call failed; base of every error the client raises for a call."""

    #: The status code an instance gets when none is given.
    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    #: Whether the same call may succeed if simply tried again later.
    retryable: ClassVar[bool] = False

    code: grpc.StatusCode
    message: str
    details: tuple[any_pb2.Any, ...]

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[any_pb2.Any] = (),
    ) -> None:
        super().__init__(message)
        self.code = code if code is not None else self.default_code
        self.message = message
        self.details = tuple(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


class InvalidArgument(SesscacheError, ValueError):
    """INVALID_ARGUMENT: the request (or the session id) was rejected.

    ``field_violations`` lists ``(field, description)`` pairs, e.g.
    ``[("page_size", "must not be negative")]``, from the google.rpc.BadRequest
    detail; it is empty when the server sent none.
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT

    field_violations: list[tuple[str, str]]

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[any_pb2.Any] = (),
        field_violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.field_violations = list(field_violations)

    def __str__(self) -> str:
        if self.field_violations:
            text = "; ".join(
                f"{field}: {description}" for field, description in self.field_violations
            )
            return f"{self.code.name}: {text}"
        return super().__str__()


class NotFound(SesscacheError):
    """NOT_FOUND: what the request names does not exist.

    For a person (UpdatePerson, DeletePerson) the server names it with a
    google.rpc.ResourceInfo detail: ``resource_type`` "sesscache.v1.Person" and
    ``resource_name`` its id. A missing session is :class:`SessionNotFound`.
    """

    default_code = grpc.StatusCode.NOT_FOUND

    resource_type: str
    resource_name: str

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[any_pb2.Any] = (),
        resource_type: str = "",
        resource_name: str = "",
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.resource_type = resource_type
        self.resource_name = resource_name


class SessionNotFound(NotFound):
    """NOT_FOUND: the session the call needs does not exist on the server.

    Sessions live in the memory of one server process: a session is gone once it
    was ended, was reaped after being idle, or the server restarted. A query
    naming the same session id starts a new, empty session.
    """

    default_code = grpc.StatusCode.NOT_FOUND

    #: Appended to ``str(error)``: why a session the caller used may be gone.
    hint: ClassVar[str] = (
        "sessions live in the memory of one server process: a session is gone once it "
        "was ended, was reaped after being idle, or the server restarted"
    )

    session_id: str | None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[any_pb2.Any] = (),
        session_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.session_id = session_id

    def __str__(self) -> str:
        # Say which session and why it may be gone once: only what the server's
        # own message does not say already.
        named = self.session_id is None or self.session_id in self.message
        which = "" if named else f"session {self.session_id!r}: "
        explained = any(word in self.message for word in _EXPLAINED)
        why = "" if explained else f" ({self.hint})"
        return f"{self.code.name}: {which}{self.message}{why}"


#: Words of a NOT_FOUND message that already explains why a session is gone.
_EXPLAINED = ("restarted", "memory", "reaped")


class Unavailable(SesscacheError):
    """UNAVAILABLE: the server, or the database behind it, cannot be reached. Retry later.

    :attr:`connection_failed` tells the first (gRPC found no server to talk to)
    from the second (the server answered UNAVAILABLE itself).
    """

    default_code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    @property
    def connection_failed(self) -> bool:
        """Whether the client could not connect at all (refused, unresolvable, TLS)."""
        return _CONNECT_FAILURE.search(self.message) is not None

    @property
    def tls_failed(self) -> bool:
        """Whether the connection failed in the TLS handshake."""
        return _TLS_FAILURE.search(self.message) is not None


# gRPC's own texts for a channel that never reached a server (not a server's
# message): refused, unresolvable, reset or timed out while connecting.
_CONNECT_FAILURE = re.compile(
    r"failed to connect|connection refused|connect failed|dns resolution failed|"
    r"name resolution|unreachable|socket closed|connection reset|handshake|"
    r"no address|timeout occurred|errors resolving|lookup failed|domain name not found",
    re.IGNORECASE,
)
_TLS_FAILURE = re.compile(r"ssl|tls|handshake|certificate", re.IGNORECASE)


class DeadlineExceeded(SesscacheError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(SesscacheError):
    """RESOURCE_EXHAUSTED: the server is full (too many sessions or calls)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(SesscacheError):
    """UNAUTHENTICATED: the server wants a bearer token, or did not accept the one sent."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SesscacheError):
    """PERMISSION_DENIED: the token is valid but not allowed to make this call."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(SesscacheError):
    """ALREADY_EXISTS: the write would give a second person the same name."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(SesscacheError):
    """ABORTED: the write met a concurrent change of the same person, or its etag is
    no longer the person's. Nothing was changed: read the person again, then retry."""

    default_code = grpc.StatusCode.ABORTED


class ServerError(SesscacheError):
    """Any other status: INTERNAL, UNIMPLEMENTED, UNKNOWN, CANCELLED, ..."""


_SIMPLE: dict[grpc.StatusCode, type[SesscacheError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Aborted,
}


def from_rpc_error(exc: grpc.RpcError, *, session_id: str | None = None) -> SesscacheError:
    """Map a failed gRPC call to the client's exception for its status code.

    ``session_id`` is the session the call was made in, if any; it only makes
    the message of :class:`SessionNotFound` more useful. The rich status
    (``grpc-status-details-bin``) is read as grpc_status reads it, from a sync or a
    grpc.aio error alike; a BadRequest detail
    becomes :attr:`InvalidArgument.field_violations`.
    """
    code = _code_of(exc)
    message = _message_of(exc, code)
    rich = _rich_status_of(exc)
    details: list[any_pb2.Any] = list(rich.details) if rich is not None else []

    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(
            message, code=code, details=details, field_violations=_field_violations(details)
        )
    if code is grpc.StatusCode.NOT_FOUND:
        resource = _resource_info(details)
        if resource is not None:
            return NotFound(
                message,
                code=code,
                details=details,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
            )
        return SessionNotFound(message, code=code, details=details, session_id=session_id)
    cls = _SIMPLE.get(code, ServerError)
    return cls(message, code=code, details=details)


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    # A bare grpc.RpcError (e.g. from a custom interceptor) need not have code().
    code_method = getattr(exc, "code", None)
    code = code_method() if callable(code_method) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _message_of(exc: grpc.RpcError, code: grpc.StatusCode) -> str:
    details_method = getattr(exc, "details", None)
    message = details_method() if callable(details_method) else None
    if isinstance(message, str) and message:
        return message
    return code.name.lower().replace("_", " ")


#: The trailing metadata key of the rich status (google.rpc.Status), as grpc_status reads it.
_DETAILS_KEY = "grpc-status-details-bin"


def _rich_status_of(exc: grpc.RpcError) -> status_pb2.Status | None:
    # A sync call's error is its grpc.Call; grpc.aio's AioRpcError has the same
    # code(), details() and trailing_metadata(), as plain methods: one reading for both.
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return None
    # (key, value) pairs: _Metadatum tuples (sync) or a grpc.aio.Metadata (async).
    trailing: Iterable[Any] = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except message.DecodeError:
            return None
        if status.code != exc.code().value[0] or status.message != exc.details():
            # The rich status contradicts the call's own code or message: ignore it
            # (grpc_status.rpc_status.from_call refuses it too).
            return None
        return status
    return None


def _field_violations(details: Sequence[any_pb2.Any]) -> list[tuple[str, str]]:
    violations: list[tuple[str, str]] = []
    for detail in details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):  # False for other detail types
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def _resource_info(details: Sequence[any_pb2.Any]) -> error_details_pb2.ResourceInfo | None:
    for detail in details:
        info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            return info
    return None
