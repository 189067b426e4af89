"""The typed, synchronous sesscache client: :class:`Client` and :class:`Session`.

A thin layer over the generated ``sesscache.v1`` stubs: it builds requests from
keyword arguments, sends the ``session-id`` and ``authorization`` metadata, applies
a default timeout, and turns every :class:`grpc.RpcError` into a
:mod:`sesscache_client.errors` exception. Responses are the generated proto messages.

Example::

    with Client("127.0.0.1:50051") as client, client.session() as session:
        page = session.query_persons(name_first="person 10", name_last="person 20")
        print(enum_name(page, "cache_status"), [p.name for p in page.persons])  # CACHE_STATUS_MISS
        print([entry.key for entry in session.list_cache_keys()])

Inspection: :meth:`Session.get_stats`, :meth:`Session.reset_stats`, the
``invalidate_*`` methods and :meth:`Session.clear_cache` (each returns the
entries removed), :meth:`Session.watch` (live events, an :class:`EventStream`);
server-wide and admin calls are on :class:`Client` (:meth:`Client.server_stats`,
:meth:`Client.list_sessions`, :meth:`Client.end_idle_sessions`,
:meth:`Client.watch_all`, ...)::

    with session.watch(types=["hit", "miss"]) as events:
        session.query_persons(name="person 10")
        print(enum_name(next(events), "type"))    # CACHE_EVENT_TYPE_MISS
    print(session.get_stats().session.hit_ratio)

Enum fields of the generated messages read as plain ints (``page.cache_status``
is ``2``), as protobuf's Python API has them; :func:`enum_name` gives the name
(``CACHE_STATUS_HIT``), and ``repr(page)`` shows names too.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, Self, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2, message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sesscache_client.errors import (
    InvalidArgument,
    SesscacheError,
    SessionNotFound,
    Unavailable,
    from_rpc_error,
)
from sesscache_client.v1 import sesscache_pb2, sesscache_pb2_grpc

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_PORT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "LOCAL_REGION",
    "SERVICE_NAME",
    "SESSION_ID_METADATA_KEY",
    "SHARED_REGION",
    "Client",
    "EntryOrderArg",
    "EventStream",
    "EventTypeArg",
    "PersonViewArg",
    "Session",
    "cache_digest",
    "enum_name",
    "new_session_id",
    "validate_session_id",
    "with_default_port",
]

DEFAULT_PORT = 50051
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"
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

#: ListCacheKeys regions: the session's own entries, the shared region, or both.
LOCAL_REGION = "local_session"
SHARED_REGION = "default"
ALL_REGIONS = "*"

EntryOrderValue: TypeAlias = sesscache_pb2.CacheEntryOrder.ValueType
#: The order of a cache listing: "stored" (oldest first), "hits" (most first), "size"
#: (largest first), a ``CacheEntryOrder`` value, or ``None`` (stored).
EntryOrderArg: TypeAlias = Literal["stored", "hits", "size"] | EntryOrderValue | None
_ORDERS: dict[str, EntryOrderValue] = {
    "stored": sesscache_pb2.CACHE_ENTRY_ORDER_STORED,
    "hits": sesscache_pb2.CACHE_ENTRY_ORDER_HITS,
    "size": sesscache_pb2.CACHE_ENTRY_ORDER_SIZE,
}

EventTypeValue: TypeAlias = sesscache_pb2.CacheEventType.ValueType
#: A cache event type: its lower-case name ("hit", "session_end", ...) or a
#: ``CacheEventType`` value.
EventTypeArg: TypeAlias = (
    Literal["hit", "miss", "store", "invalidate", "evict", "expire", "session_end"] | EventTypeValue
)
_EVENT_TYPES: dict[str, EventTypeValue] = {
    name.removeprefix("CACHE_EVENT_TYPE_").lower(): value
    for name, value in sesscache_pb2.CacheEventType.items()
    if value != sesscache_pb2.CACHE_EVENT_TYPE_UNSPECIFIED
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


def enum_name(msg: message.Message, field: str) -> str:
    """The name of the enum value in ``msg.<field>``, e.g. ``CACHE_STATUS_HIT``.

    Protobuf's Python API reads enum fields as ints; this is the name the proto
    gives the value (the number as text for a value the proto does not know).
    """
    descriptor = msg.DESCRIPTOR.fields_by_name[field]
    if descriptor.enum_type is None:
        raise TypeError(f"{msg.DESCRIPTOR.full_name}.{field} is not an enum field")
    number: int = getattr(msg, field)
    value = descriptor.enum_type.values_by_number.get(number)
    return value.name if value is not None else str(number)


def cache_digest(key: str) -> str:
    """The digest the server lists for cache ``key`` (``CacheEntry.digest``).

    The contract (``CacheEntry.digest`` in sesscache.proto: "a short, stable
    digest of key (hex)") is BLAKE2b of the UTF-8 key with a 6-byte digest, as
    12 hex characters; the server computes it the same way.
    """
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


# gRPC's name syntaxes (its naming doc): targets in them are passed on as they are.
_SCHEMES = re.compile(r"^(unix|unix-abstract|dns|ipv4|ipv6|vsock|xds|google-c2p):", re.I)


def with_default_port(target: str, port: int = DEFAULT_PORT) -> str:
    """``target`` with ``port`` added when it names a host without one.

    ``127.0.0.1`` -> ``127.0.0.1:50051``, ``localhost`` -> ``localhost:50051``,
    ``[::1]`` or ``::1`` -> ``[::1]:50051``; a target with a port, or in a gRPC
    name syntax (``unix:``, ``dns:``, ``ipv4:``, ...), is returned unchanged.
    (gRPC itself takes a bare host to mean port 443.)
    """
    if not target or _SCHEMES.match(target):
        return target
    if target.startswith("["):
        return target if "]:" in target else f"{target}:{port}"
    if target.count(":") >= 2:  # a bare IPv6 address: no port possible
        return f"[{target}]:{port}"
    if ":" in target:
        return target  # host:port, or a scheme such as unix:/path or dns:///host
    return f"{target}:{port}"


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


def _order_value(order_by: EntryOrderArg) -> EntryOrderValue:
    if order_by is None:
        return sesscache_pb2.CACHE_ENTRY_ORDER_UNSPECIFIED
    if isinstance(order_by, str):
        try:
            return _ORDERS[order_by]
        except KeyError:
            raise InvalidArgument(
                f"invalid order {order_by!r}",
                field_violations=[("order_by", "must be 'stored', 'hits' or 'size'")],
            ) from None
    return order_by


def _event_type_values(types: Iterable[EventTypeArg]) -> list[EventTypeValue]:
    values: list[EventTypeValue] = []
    for index, value in enumerate([types] if isinstance(types, str) else types):
        if isinstance(value, str):
            if value not in _EVENT_TYPES:
                names = ", ".join(_EVENT_TYPES)
                raise InvalidArgument(
                    f"invalid event type {value!r}",
                    field_violations=[(f"types[{index}]", f"must be one of {names}")],
                )
            values.append(_EVENT_TYPES[value])
        else:
            values.append(value)
    return values


def _keys_request(
    *, page_size: int, region: str, entity: str, order_by: EntryOrderArg, session: str = ""
) -> sesscache_pb2.ListCacheKeysRequest:
    return sesscache_pb2.ListCacheKeysRequest(
        page_size=page_size,
        region=region,
        entity=entity,
        order_by=_order_value(order_by),
        session=session,
    )


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

    # Server-wide inspection (admin ones need the admin role when authentication is on).

    def server_info(self) -> sesscache_pb2.ServerInfo:
        """What the server is: version, uptime, libraries, database, settings (admins
        see the settings, secrets masked) and replica."""
        return self._call(self._stub.GetServerInfo, sesscache_pb2.GetServerInfoRequest(), None)

    def get_stats(self) -> sesscache_pb2.GetStatsResponse:
        """The statistics this caller may see, without a session: ``.server`` (admins)
        and ``.principal`` (every session of the caller's principal)."""
        return self._call(self._stub.GetStats, sesscache_pb2.GetStatsRequest(), None)

    def server_stats(self) -> sesscache_pb2.CacheStats:
        """The server-wide cache statistics (every session, ended ones too, and the
        shared region's entries)."""
        request = sesscache_pb2.GetStatsRequest()
        return self._call(self._stub.GetStats, request, None).server

    def reset_server_stats(self) -> sesscache_pb2.CacheStats:
        """Reset the server-wide counters (admin); return them as they were."""
        request = sesscache_pb2.ResetStatsRequest(server=True)
        return self._call(self._stub.ResetStats, request, None).before

    def invalidate_shared_region(self) -> list[sesscache_pb2.CacheEntry]:
        """Remove every entry of the shared ``default`` region (admin); return them.

        With the region in Redis, the entries returned carry their Redis keys only.
        """
        request = sesscache_pb2.InvalidateRequest(shared_region=True)
        return list(self._call(self._stub.Invalidate, request, None).removed)

    def list_sessions(self, *, page_size: int = 0) -> list[sesscache_pb2.SessionInfo]:
        """Every live session (admin), least recently active first, following all pages."""
        sessions: list[sesscache_pb2.SessionInfo] = []
        request = sesscache_pb2.ListSessionsRequest(page_size=page_size)
        while True:
            response = self._call(self._stub.ListSessions, request, None)
            sessions.extend(response.sessions)
            if not response.next_page_token:
                return sessions
            request.page_token = response.next_page_token

    def end_idle_sessions(self, min_idle: float) -> sesscache_pb2.EndSessionsResponse:
        """End every session without a call for at least ``min_idle`` seconds (admin).

        Like Redis ``CLIENT KILL MAXAGE``. The server refuses ``min_idle <= 0`` with
        :class:`InvalidArgument`.
        """
        request = sesscache_pb2.EndSessionsRequest(min_idle=_duration(min_idle, "min_idle"))
        return self._call(self._stub.EndSessions, request, None)

    def list_cache_keys_of(
        self,
        handle: str,
        *,
        region: str = "",
        entity: str = "",
        order_by: EntryOrderArg = None,
        page_size: int = 0,
    ) -> list[sesscache_pb2.CacheEntry]:
        """The cache entries of another session (admin), named by its ``handle``
        (:attr:`SessionInfo.handle` from :meth:`list_sessions`).

        See :meth:`Session.list_cache_keys` for the other arguments.
        """
        if not handle:
            raise InvalidArgument(
                "a session handle is required", field_violations=[("session", "must not be empty")]
            )
        request = _keys_request(
            page_size=page_size, region=region, entity=entity, order_by=order_by, session=handle
        )
        return self._list_entries(request, None)

    def watch_all(
        self, *, types: Iterable[EventTypeArg] = (), duration: float | None = None
    ) -> EventStream:
        """Live cache events of every session (admin). See :meth:`Session.watch`."""
        request = sesscache_pb2.WatchCacheEventsRequest(
            all_sessions=True, types=_event_type_values(types)
        )
        return self._watch(request, None, duration)

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

    def _list_entries(
        self, request: sesscache_pb2.ListCacheKeysRequest, session_id: str | None
    ) -> list[sesscache_pb2.CacheEntry]:
        entries: list[sesscache_pb2.CacheEntry] = []
        while True:
            response = self._call(self._stub.ListCacheKeys, request, session_id)
            entries.extend(response.entries)
            if not response.next_page_token:
                return entries
            request.page_token = response.next_page_token

    def _invalidate(
        self, request: sesscache_pb2.InvalidateRequest, session_id: str | None
    ) -> list[sesscache_pb2.CacheEntry]:
        return list(self._call(self._stub.Invalidate, request, session_id).removed)

    def _watch(
        self,
        request: sesscache_pb2.WatchCacheEventsRequest,
        session_id: str | None,
        duration: float | None,
    ) -> EventStream:
        if self._closed:
            raise RuntimeError("the client is closed")
        if duration is not None and not duration > 0:
            raise ValueError(f"duration must be positive or None, got {duration!r}")
        call = self._stub.WatchCacheEvents(
            request, timeout=duration, metadata=self._metadata(session_id)
        )
        return EventStream(call, session_id=session_id, bounded=duration is not None)

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

    def list_cache_keys(
        self,
        *,
        page_size: int = 0,
        region: str = "",
        entity: str = "",
        order_by: EntryOrderArg = None,
    ) -> list[sesscache_pb2.CacheEntry]:
        """Every entry of this session's cache, following all pages.

        ``region`` is "" or :data:`LOCAL_REGION` (the session's own entries),
        :data:`SHARED_REGION` (the shared ``default`` region) or :data:`ALL_REGIONS`
        (both). ``entity`` keeps only entries of that ORM entity, e.g. "Person".
        ``order_by`` is "stored" (the default: oldest first), "hits" (most first) or
        "size" (largest first). Listing is never an access: hits and last access stay.

        Raises :class:`SessionNotFound` when the session does not exist.
        """
        request = _keys_request(
            page_size=page_size, region=region, entity=entity, order_by=order_by
        )
        return self.client._list_entries(request, self.id)

    def get_stats(self) -> sesscache_pb2.GetStatsResponse:
        """The statistics of this session (``.session``) and of the server (``.server``).

        Raises :class:`SessionNotFound` when the session does not exist.
        """
        request = sesscache_pb2.GetStatsRequest()
        return self.client._call(self.client._stub.GetStats, request, self.id)

    def reset_stats(self) -> sesscache_pb2.CacheStats:
        """Reset this session's counters; return them as they were."""
        request = sesscache_pb2.ResetStatsRequest()
        return self.client._call(self.client._stub.ResetStats, request, self.id).before

    def invalidate_key(self, key_or_digest: str) -> list[sesscache_pb2.CacheEntry]:
        """Remove one entry, named by its key or its digest, from this session's cache
        or (failing that) the shared region. Returns it, or ``[]`` if there was none."""
        request = sesscache_pb2.InvalidateRequest(key=key_or_digest)
        return self.client._invalidate(request, self.id)

    def invalidate_query(
        self,
        *,
        name: str = "",
        name_first: str = "",
        name_last: str = "",
        ids: Sequence[int] = (),
        page_size: int = 0,
        page_token: str = "",
        view: PersonViewArg = None,
    ) -> list[sesscache_pb2.CacheEntry]:
        """Remove the entry that :meth:`query_persons` with the same arguments would hit.

        Returns it, or ``[]`` if it was not cached.
        """
        query = _query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=False,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        request = sesscache_pb2.InvalidateRequest(query=query)
        return self.client._invalidate(request, self.id)

    def clear_cache(self) -> list[sesscache_pb2.CacheEntry]:
        """Remove every entry of this session's cache, keeping the session; return them."""
        request = sesscache_pb2.InvalidateRequest(session_cache=True)
        return self.client._invalidate(request, self.id)

    def watch(
        self, *, types: Iterable[EventTypeArg] = (), duration: float | None = None
    ) -> EventStream:
        """Live cache events of this session: an :class:`EventStream` of ``CacheEvent``.

        ``types`` keeps only those types (e.g. ``["hit", "miss"]``; empty: all).
        ``duration`` ends the stream after that many seconds (``None``: only
        :meth:`EventStream.cancel` or the server ends it). When this returns the
        server has subscribed: every later event is delivered, or counted in the
        ``lost`` field of the next one delivered if the reader fell behind.
        The session need not exist yet. The client's ``timeout`` does not apply.
        """
        request = sesscache_pb2.WatchCacheEventsRequest(types=_event_type_values(types))
        return self.client._watch(request, self.id, duration)

    # Writes: each in this session, one transaction; see the proto for the rules.

    def create_person(
        self, name: str, *, addresses: Sequence[tuple[str, str]] = ()
    ) -> sesscache_pb2.Person:
        """Create a person named ``name``, with ``addresses`` as (street, postal code)
        pairs (known postal codes, e.g. "60601"); return it with its id and etag.

        Raises :class:`AlreadyExists` when another person has that name.
        """
        person = sesscache_pb2.Person(
            name=name,
            addresses=[
                sesscache_pb2.Address(street=street, postal_code=code) for street, code in addresses
            ],
        )
        request = sesscache_pb2.CreatePersonRequest(person=person)
        return self.client._call(self.client._stub.CreatePerson, request, self.id)

    def update_person(
        self,
        person_id: int,
        *,
        name: str | None = None,
        address_id: int | None = None,
        street: str | None = None,
        etag: str = "",
    ) -> sesscache_pb2.Person:
        """Rename person ``person_id`` and/or set the ``street`` of its address
        ``address_id``; return the person as committed, with its new etag.

        ``etag`` (the person's, as last read) makes the change conditional: it
        raises :class:`Aborted` if the person changed since. Raises
        :class:`NotFound` for an unknown person.
        """
        if (address_id is None) != (street is None):
            raise InvalidArgument(
                "address_id and street go together",
                field_violations=[("address", "give both address_id and street")],
            )
        request = sesscache_pb2.UpdatePersonRequest(id=person_id, etag=etag, name=name)
        if address_id is not None and street is not None:
            request.address.CopyFrom(sesscache_pb2.AddressUpdate(id=address_id, street=street))
        return self.client._call(self.client._stub.UpdatePerson, request, self.id)

    def delete_person(self, person_id: int, *, etag: str = "") -> sesscache_pb2.Person:
        """Delete person ``person_id`` and its addresses; return it as it was.

        ``etag``: as for :meth:`update_person`. Raises :class:`NotFound` for an
        unknown person.
        """
        request = sesscache_pb2.DeletePersonRequest(id=person_id, etag=etag)
        return self.client._call(self.client._stub.DeletePerson, request, self.id).person

    def end(self) -> sesscache_pb2.EndSessionResponse:
        """End the session: the server drops its ORM Session and cache.

        Succeeds with ``existed`` false when the session did not exist.
        """
        request = sesscache_pb2.EndSessionRequest()
        return self.client._call(self.client._stub.EndSession, request, self.id)


def _duration(seconds: float, field: str) -> duration_pb2.Duration:
    if not math.isfinite(seconds):
        raise InvalidArgument(
            f"invalid {field} {seconds!r}", field_violations=[(field, "must be a finite number")]
        )
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


class EventStream:
    """The live events of a ``WatchCacheEvents`` call: an iterator of ``CacheEvent``.

    Returned by :meth:`Session.watch` and :meth:`Client.watch_all` once the server
    has subscribed. Iterating blocks until the next event. The stream ends
    (``StopIteration``) after :meth:`cancel` (callable from any thread, e.g. a
    timer), once its ``duration`` has passed, or when the server shuts down; any
    other failure raises a :mod:`sesscache_client.errors` exception. As a context manager it
    is cancelled on exit.

    A reader that falls behind loses events (the server never waits for it); the
    next event delivered says how many in its ``lost`` field, and :attr:`lost`
    sums them.
    """

    def __init__(
        self,
        call: grpc.CallIterator[sesscache_pb2.CacheEvent],
        *,
        session_id: str | None,
        bounded: bool,
    ) -> None:
        self._call = call
        self._iterator = iter(call)
        self._session_id = session_id
        self._bounded = bounded
        self._cancelled = threading.Event()
        #: Events delivered so far, and events the server reported lost.
        self.received = 0
        self.lost = 0
        # The server sends its headers once subscribed (or ends the call with an
        # error): wait for them, so errors surface here and no event is missed.
        try:
            call.initial_metadata()
            if not call.is_active() and call.code() is not grpc.StatusCode.OK:
                next(self._iterator)  # raises the call's error
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id=session_id) from exc

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "active" if self._call.is_active() else "ended"
        return f"EventStream({state}, received={self.received}, lost={self.lost})"

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> sesscache_pb2.CacheEvent:
        try:
            event = next(self._iterator)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.CANCELLED and self.cancelled:
                raise StopIteration from None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED and self._bounded:
                raise StopIteration from None
            raise from_rpc_error(exc, session_id=self._session_id) from exc
        self.received += 1
        self.lost += event.lost
        return event

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the stream: the server unsubscribes, iteration ends. Idempotent."""
        self._cancelled.set()
        self._call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
