"""Service errors, and the one place that maps exceptions to gRPC statuses.

Handlers raise a :class:`ServiceError` subclass (or let a database or
registry error through); :func:`to_status` turns any exception into the
``grpc.Status`` a client sees, with ``google.rpc.BadRequest`` field
violations where a field is at fault. Nothing a client can send ends as
INTERNAL or UNKNOWN: an exception that is not understood here is logged
with its traceback and reported as INTERNAL with a generic message, and is
a bug to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import URL

from sesscache import db
from sesscache.core import SessionNotFound
from sesscache.registry import RegistryFull

log = logging.getLogger(__name__)

#: Characters of a client's value an error message quotes at most.
QUOTE_LIMIT = 64
#: Bounds on what a status carries, so trailers stay far below every client's limit
#: (grpc-js stalls its whole connection on trailers above its 8 KiB default).
MAX_MESSAGE = 1024
MAX_VIOLATIONS = 12
MAX_DESCRIPTION = 300
MAX_FIELD = 100


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value`` for an error message: its repr, cut to ``limit`` characters.

    ``quote("x" * 5000)`` is ``'xxxx...' (5000 characters)``: a client's value
    is never echoed in full.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServiceError(Exception):
    """An error with the status code a client should see."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """One or more request fields (or metadata) are wrong.

    ``violations``: (field, description) pairs; the message lists them.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[tuple[str, str]]) -> None:
        every = list(violations)
        self.violations = [
            (_bounded(field, MAX_FIELD), _bounded(text, MAX_DESCRIPTION))
            for field, text in every[:MAX_VIOLATIONS]
        ]
        if len(every) > MAX_VIOLATIONS:
            self.violations.append(("request", f"{len(every) - MAX_VIOLATIONS} more violations"))
        super().__init__("; ".join(f"{field}: {text}" for field, text in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([(field, description)])


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceNotFound(NotFound):
    """A resource the request names (not a session) does not exist: the status
    carries a ``google.rpc.ResourceInfo`` detail, e.g. ``sesscache.v1.Person`` 12."""

    def __init__(self, message: str, *, resource_type: str, resource_name: str) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ServiceError):
    """A write met a concurrent change (or a stale etag): read again, then retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


def translate(error: BaseException, *, database: URL | None = None) -> ServiceError:
    """The :class:`ServiceError` a client should see for ``error``.

    ``database``: the server's database, named in messages about it.
    """
    if isinstance(error, ServiceError):
        return error
    corrupt = db.corrupt_database(error, database)
    if corrupt is not None:
        return FailedPrecondition(corrupt)
    if db.is_disconnect(error):
        return Unavailable(
            "the database is unavailable right now; cached results of existing sessions are "
            "still served; retry later"
        )
    if isinstance(error, RegistryFull):
        return ResourceExhausted(str(error))
    if isinstance(error, SessionNotFound):
        return NotFound(no_session(error.session_id))
    log.error("unexpected error while serving a call", exc_info=error)
    return ServiceError("internal error; the server log has the details")


def no_session(session_id: str) -> str:
    """Why a named session is not there, for NOT_FOUND."""
    return (
        f"no session {quote(session_id)} on this server: it was never used, was ended or "
        "reaped, or the server restarted (sessions live in server memory)"
    )


def to_status(error: BaseException, *, database: URL | None = None) -> grpc.Status:
    """The rich gRPC status for ``error`` (see :func:`translate`)."""
    service_error = translate(error, database=database)
    status = status_pb2.Status(
        code=_CODES[service_error.code], message=_bounded(service_error.message, MAX_MESSAGE)
    )
    if isinstance(service_error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=text)
                    for field, text in service_error.violations
                ]
            )
        )
        status.details.append(detail)
    if isinstance(service_error, ResourceNotFound):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ResourceInfo(
                resource_type=service_error.resource_type,
                resource_name=_bounded(service_error.resource_name, MAX_FIELD),
            )
        )
        status.details.append(detail)
    return rpc_status.to_status(status)


_CODES = {
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
}
