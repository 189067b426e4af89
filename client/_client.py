"""The typed, synchronous sesscache client: :class:`Client` and :class:`Session`.

A thin layer over the generated ``sesscache.v1`` stubs: it builds requests from
keyword arguments, sends the ``session-id`` and ``authorization`` metadata, applies
a default timeout, and turns every :class:`grpc.RpcError` into a
:mod:`client.errors` exception. Responses are the generated proto messages.

Example::

    with Client("127.0.0.1:50051") as client, client.session() as session:
        page = session.query_persons(name_first="person 10", name_last="person 20")
        print(page.cache_status, [p.name for p in page.persons])
        print([entry.key for entry in session.list_cache_keys()])
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Literal, Self, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.errors import (
    InvalidArgument,
    SesscacheError,
    SessionNotFound,
    Unavailable,
    from_rpc_error,
)
from sesscache.v1 import sesscache_pb2, sesscache_pb2_grpc

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "SERVICE_NAME",
    "SESSION_ID_METADATA_KEY",
    "Client",
    "PersonViewArg",
    "Session",
    "new_session_id",
    "validate_session_id",
]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
#: The gRPC service name, as registered with the health service.
SERVICE_NAME: str = sesscache_pb2.DESCRIPTOR.services_by_name["SessionCache"].full_name
SESSION_ID_METADATA_KEY = "session-id"
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}")

PersonViewValue: TypeAlias = sesscache_pb2.PersonView.ValueType
#: How much of each person to return: "basic", "full", a ``PersonView`` value, or
#: ``None`` for the server's default (full).
PersonViewArg: TypeAlias = Literal["basic", "full"] | PersonViewValue | None
_VIEWS: dict[str, PersonViewValue] = {
    "basic": sesscache_pb2.PERSON_VIEW_BASIC,
    "full": sesscache_pb2.PERSON_VIEW_FULL,
}

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Metadata: TypeAlias = tuple[tuple[str, str], ...]


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if it is 1-128 characters of [A-Za-z0-9._~-].

    Raises :class:`InvalidArgument` (a ValueError) otherwise, like the server would.
    """
    if not isinstance(session_id, str) or _SESSION_ID_RE.fullmatch(session_id) is None:
        description = "must be 1 to 128 characters of [A-Za-z0-9._~-]"
        raise InvalidArgument(
            f"invalid session id {session_id!r}: {description}",
            field_violations=[(SESSION_ID_METADATA_KEY, f"{description}, got {session_id!r}")],
        )
    return session_id


def new_session_id() -> str:
    """A random, valid session id (22 URL-safe characters, 128 bits)."""
    # token_urlsafe uses [A-Za-z0-9_-], a subset of the characters a session id allows.
    return validate_session_id(secrets.token_urlsafe(16))


def _view_value(view: PersonViewArg) -> PersonViewValue:
    if view is None:
        return sesscache_pb2.PERSON_VIEW_UNSPECIFIED
    if isinstance(view, str):
        try:
            return _VIEWS[view]
        except KeyError:
            raise InvalidArgument(
                f"invalid view {view!r}", field_violations=[("view", "must be 'basic' or 'full'")]
            ) from None
    return view


def _query_request(
    *,
    name: str,
    name_first: str,
    name_last: str,
    ids: Sequence[int],
    bypass_cache: bool,
    page_size: int,
    page_token: str,
    view: PersonViewArg,
) -> sesscache_pb2.QueryPersonsRequest:
    request = sesscache_pb2.QueryPersonsRequest(
        name=name,
        ids=list(ids),
        bypass_cache=bypass_cache,
        page_size=page_size,
        page_token=page_token,
        view=_view_value(view),
    )
    if name_first or name_last:
        request.name_range.first = name_first
        request.name_range.last = name_last
    return request


class Client:
    """A connection to one sesscache server.

    ``target`` is ``host:port``. ``timeout`` (seconds, ``None`` for none) applies to
    every call. Pass ``channel`` to use your own :class:`grpc.Channel` (the client
    then never closes it, and the TLS arguments must not be given). ``token`` is
    sent as ``authorization: Bearer <token>`` on every call. Giving any of
    ``root_certificates`` (PEM CA bundle; ``None`` means the system roots),
    ``private_key`` and ``certificate_chain`` (PEM, both or neither, for mutual
    TLS) makes the connection TLS; otherwise it is plaintext.

    Use as a context manager, or call :meth:`close`. A client (like its channel)
    may be shared by threads.
    """

    target: str
    timeout: float | None

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain must be given together")
        tls = root_certificates is not None or private_key is not None
        if channel is not None and tls:
            raise ValueError("give either channel or TLS material, not both")
        self.target = target
        self.timeout = timeout
        self._tls = tls
        self._auth: _Metadata = ()
        if token is not None:
            if not token or not token.isascii() or not token.isprintable() or " " in token:
                # Never echo the token itself.
                raise ValueError("token must be non-empty printable ASCII without spaces")
            self._auth = (("authorization", f"Bearer {token}"),)
        if channel is not None:
            self._channel = channel
            self._owns_channel = False
        else:
            if tls:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=root_certificates,
                    private_key=private_key,
                    certificate_chain=certificate_chain,
                )
                self._channel = grpc.secure_channel(target, credentials)
            else:
                self._channel = grpc.insecure_channel(target)
            self._owns_channel = True
        self._stub = sesscache_pb2_grpc.SessionCacheStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Client(target={self.target!r}, timeout={self.timeout!r}, "
            f"tls={self._tls}, token={'set' if self._auth else 'unset'})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop using the client; close the channel if the client created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_channel:
            self._channel.close()

    def session(self, session_id: str | None = None) -> Session:
        """A handle on the server session ``session_id`` (a new random id if ``None``).

        Nothing is sent yet: the server creates the session on its first query.
        Used as a context manager, the session is ended on exit.
        """
        if session_id is None:
            session_id = new_session_id()
        return Session(self, validate_session_id(session_id))

    def query_persons(
        self,
        *,
        name: str = "",
        name_first: str = "",
        name_last: str = "",
        ids: Sequence[int] = (),
        bypass_cache: bool = False,
        page_size: int = 0,
        page_token: str = "",
        view: PersonViewArg = None,
    ) -> sesscache_pb2.QueryPersonsResponse:
        """One page of persons, in a throwaway session of this call alone (no ``session-id``).

        See :meth:`Session.query_persons` for the arguments.
        """
        request = _query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return self._call(self._stub.QueryPersons, request, None)

    def iter_persons(
        self,
        *,
        name: str = "",
        name_first: str = "",
        name_last: str = "",
        ids: Sequence[int] = (),
        bypass_cache: bool = False,
        page_size: int = 0,
        page_token: str = "",
        view: PersonViewArg = None,
    ) -> Iterator[sesscache_pb2.Person]:
        """Every matching person, following pages, each page in a throwaway session."""
        request = _query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return self._iter_persons(request, None)

    def health(self, service: str = "") -> str:
        """The serving status of ``service`` ("" is the whole server) as a name.

        One of "SERVING", "NOT_SERVING", "UNKNOWN", or "SERVICE_UNKNOWN" when the
        server does not know the service. Uses the standard grpc.health.v1 service.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._call(self._health.Check, request, None)
        except SessionNotFound:
            # Health answers NOT_FOUND for a service it does not know.
            return "SERVICE_UNKNOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # Internals shared with Session.

    def _metadata(self, session_id: str | None) -> _Metadata:
        if session_id is None:
            return self._auth
        return ((SESSION_ID_METADATA_KEY, session_id), *self._auth)

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        session_id: str | None,
    ) -> _Resp:
        if self._closed:
            raise RuntimeError("the client is closed")
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata(session_id))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id=session_id) from exc

    def _iter_persons(
        self, request: sesscache_pb2.QueryPersonsRequest, session_id: str | None
    ) -> Iterator[sesscache_pb2.Person]:
        while True:
            response = self._call(self._stub.QueryPersons, request, session_id)
            yield from response.persons
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


class Session:
    """One server session (one ORM Session and its cache), named by :attr:`id`.

    Get one from :meth:`Client.session`. Every call sends ``session-id: <id>``.
    The server creates the session on the first query that names it; calling a
    method after :meth:`end` therefore starts a new, empty session of the same id.

    As a context manager the session is ended on exit. If the block raised, any
    error from ending is suppressed so the original error propagates. If the
    block succeeded, :class:`SessionNotFound` and :class:`Unavailable` from ending
    are suppressed (the session is gone already, or the server cannot be reached
    and will reap the idle session itself); other errors propagate.
    """

    id: str
    client: Client

    def __init__(self, client: Client, session_id: str) -> None:
        self.client = client
        self.id = validate_session_id(session_id)

    def __repr__(self) -> str:
        return f"Session(id={self.id!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Never mask the block's own error; otherwise only a session already gone.
        suppressed = (SesscacheError,) if exc is not None else (SessionNotFound, Unavailable)
        with contextlib.suppress(*suppressed):
            self.end()

    def query_persons(
        self,
        *,
        name: str = "",
        name_first: str = "",
        name_last: str = "",
        ids: Sequence[int] = (),
        bypass_cache: bool = False,
        page_size: int = 0,
        page_token: str = "",
        view: PersonViewArg = None,
    ) -> sesscache_pb2.QueryPersonsResponse:
        """One page of the persons matching every filter given, ordered by id.

        ``name`` is an exact name; ``name_first``/``name_last`` an inclusive range of
        names (an empty bound is open); ``ids`` only these ids. ``bypass_cache``
        neither reads nor writes the cache. ``page_size`` 0 is the server's default;
        ``page_token`` is a previous response's ``next_page_token``. ``view`` is
        "basic" (no addresses), "full", a ``PersonView`` value, or ``None``.
        """
        request = _query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return self.client._call(self.client._stub.QueryPersons, request, self.id)

    def iter_persons(
        self,
        *,
        name: str = "",
        name_first: str = "",
        name_last: str = "",
        ids: Sequence[int] = (),
        bypass_cache: bool = False,
        page_size: int = 0,
        page_token: str = "",
        view: PersonViewArg = None,
    ) -> Iterator[sesscache_pb2.Person]:
        """Every matching person, following ``next_page_token`` (each page is cached)."""
        request = _query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return self.client._iter_persons(request, self.id)

    def list_cache_keys(self, *, page_size: int = 0) -> list[sesscache_pb2.CacheEntry]:
        """Every entry of this session's cache, oldest first, following all pages.

        Raises :class:`SessionNotFound` when the session does not exist.
        """
        entries: list[sesscache_pb2.CacheEntry] = []
        request = sesscache_pb2.ListCacheKeysRequest(page_size=page_size)
        while True:
            response = self.client._call(self.client._stub.ListCacheKeys, request, self.id)
            entries.extend(response.entries)
            if not response.next_page_token:
                return entries
            request.page_token = response.next_page_token

    def end(self) -> sesscache_pb2.EndSessionResponse:
        """End the session: the server drops its ORM Session and cache.

        Succeeds with ``existed`` false when the session did not exist.
        """
        request = sesscache_pb2.EndSessionRequest()
        return self.client._call(self.client._stub.EndSession, request, self.id)
