"""Every RPC of the client, described once for both the sync and the asyncio client.

:class:`ClientCalls` holds the calls of a client (no ``session-id``; server-wide
and admin calls), :class:`SessionCalls` those of one session; both share
:class:`_Queries`. ``Client``/``AsyncClient`` and ``Session``/``AsyncSession``
inherit them and add a transport (see :mod:`sesscache_client._plan`), so each
method below is, for the sync classes, a plain call returning its result and, for
the async ones, a coroutine of the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from sesscache_client._common import (
    EntryOrderArg,
    EventTypeArg,
    PersonViewArg,
    duration,
    event_type_values,
    keys_request,
    query_request,
)
from sesscache_client._plan import Paging, Plan, Watch, method, paged, rpc, unary, watch
from sesscache_client.errors import InvalidArgument, SessionNotFound
from sesscache_client.v1 import sesscache_pb2 as pb

__all__ = ["METHODS", "RETRIED", "ClientCalls", "SessionCalls"]

_SERVICE = pb.DESCRIPTOR.services_by_name["SessionCache"]
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]

QUERY_PERSONS = method(
    _SERVICE, "QueryPersons", pb.QueryPersonsRequest, pb.QueryPersonsResponse, idempotent=True
)
LIST_CACHE_KEYS = method(
    _SERVICE, "ListCacheKeys", pb.ListCacheKeysRequest, pb.ListCacheKeysResponse, idempotent=True
)
GET_STATS = method(_SERVICE, "GetStats", pb.GetStatsRequest, pb.GetStatsResponse, idempotent=True)
LIST_SESSIONS = method(
    _SERVICE, "ListSessions", pb.ListSessionsRequest, pb.ListSessionsResponse, idempotent=True
)
GET_SERVER_INFO = method(
    _SERVICE, "GetServerInfo", pb.GetServerInfoRequest, pb.ServerInfo, idempotent=True
)
HEALTH_CHECK = method(
    _HEALTH,
    "Check",
    health_pb2.HealthCheckRequest,
    health_pb2.HealthCheckResponse,
    idempotent=True,
)
END_SESSION = method(_SERVICE, "EndSession", pb.EndSessionRequest, pb.EndSessionResponse)
END_SESSIONS = method(_SERVICE, "EndSessions", pb.EndSessionsRequest, pb.EndSessionsResponse)
RESET_STATS = method(_SERVICE, "ResetStats", pb.ResetStatsRequest, pb.ResetStatsResponse)
INVALIDATE = method(_SERVICE, "Invalidate", pb.InvalidateRequest, pb.InvalidateResponse)
WATCH_CACHE_EVENTS = method(_SERVICE, "WatchCacheEvents", pb.WatchCacheEventsRequest, pb.CacheEvent)
CREATE_PERSON = method(_SERVICE, "CreatePerson", pb.CreatePersonRequest, pb.Person)
UPDATE_PERSON = method(_SERVICE, "UpdatePerson", pb.UpdatePersonRequest, pb.Person)
DELETE_PERSON = method(_SERVICE, "DeletePerson", pb.DeletePersonRequest, pb.DeletePersonResponse)
EXPLAIN_CACHE_KEY = method(
    _SERVICE,
    "ExplainCacheKey",
    pb.ExplainCacheKeyRequest,
    pb.ExplainCacheKeyResponse,
    idempotent=True,
)

#: Every method the client calls.
METHODS = (
    QUERY_PERSONS,
    LIST_CACHE_KEYS,
    GET_STATS,
    LIST_SESSIONS,
    GET_SERVER_INFO,
    HEALTH_CHECK,
    END_SESSION,
    END_SESSIONS,
    RESET_STATS,
    INVALIDATE,
    WATCH_CACHE_EVENTS,
    CREATE_PERSON,
    UPDATE_PERSON,
    DELETE_PERSON,
    EXPLAIN_CACHE_KEY,
)
#: The (service, method) names a retry policy applies to: the idempotent reads.
RETRIED: tuple[tuple[str, str], ...] = tuple((m.service, m.name) for m in METHODS if m.idempotent)


def _entries(response: pb.ListCacheKeysResponse) -> Iterable[pb.CacheEntry]:
    return response.entries


def _persons(response: pb.QueryPersonsResponse) -> Iterable[pb.Person]:
    return response.persons


def _sessions(response: pb.ListSessionsResponse) -> Iterable[pb.SessionInfo]:
    return response.sessions


def _watch_spec(
    request: pb.WatchCacheEventsRequest, session_id: str | None, seconds: float | None
) -> Watch:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"duration must be positive or None, got {seconds!r}")
    return Watch(WATCH_CACHE_EVENTS, request, session_id, seconds)


def _removed(request: pb.InvalidateRequest, session_id: str | None) -> Plan[list[pb.CacheEntry]]:
    response = yield from unary(INVALIDATE, request, session_id)
    return list(response.removed)


class _Queries:
    """The calls a client and a session both make; a session sends its ``session-id``."""

    #: The ``session-id`` sent (``None``: a throwaway session of each call).
    _session_id: str | None = None

    @rpc
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
    ) -> Plan[pb.QueryPersonsResponse]:
        """One page of the persons matching every filter given, ordered by id.

        ``name`` is an exact name; ``name_first``/``name_last`` an inclusive range of
        names (an empty bound is open); ``ids`` only these ids. ``bypass_cache``
        neither reads nor writes the cache. ``page_size`` 0 is the server's default;
        ``page_token`` is a previous response's ``next_page_token``. ``view`` is
        "basic" (no addresses), "full", a ``PersonView`` value, or ``None``.
        On a client (not a session) the call runs in a throwaway session of its own.
        """
        request = query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return (yield from unary(QUERY_PERSONS, request, self._session_id))

    @paged
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
    ) -> Paging[Any, Any, pb.Person]:
        """Every matching person, following ``next_page_token`` (each page is cached).

        See :meth:`query_persons` for the arguments.
        """
        request = query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=bypass_cache,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return Paging(QUERY_PERSONS, request, self._session_id, _persons)

    @rpc
    def get_stats(self) -> Plan[pb.GetStatsResponse]:
        """Statistics. Of a session: ``.session`` and ``.server`` (raises
        :class:`SessionNotFound` when the session does not exist). Of a client: what
        the caller may see without a session, ``.server`` (admins) and ``.principal``
        (every session of the caller's principal)."""
        return (yield from unary(GET_STATS, pb.GetStatsRequest(), self._session_id))


class ClientCalls(_Queries):
    """The calls of a client: server-wide and admin ones (admin ones need the admin
    role when authentication is on)."""

    @rpc
    def health(self, service: str = "") -> Plan[str]:
        """The serving status of ``service`` ("" is the whole server) as a name.

        One of "SERVING", "NOT_SERVING", "UNKNOWN", or "SERVICE_UNKNOWN" when the
        server does not know the service. Uses the standard grpc.health.v1 service.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = yield from unary(HEALTH_CHECK, request, None)
        except SessionNotFound:
            # Health answers NOT_FOUND for a service it does not know.
            return "SERVICE_UNKNOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    @rpc
    def server_info(self) -> Plan[pb.ServerInfo]:
        """What the server is: version, uptime, libraries, database, settings (admins
        see the settings, secrets masked) and replica."""
        return (yield from unary(GET_SERVER_INFO, pb.GetServerInfoRequest(), None))

    @rpc
    def server_stats(self) -> Plan[pb.CacheStats]:
        """The server-wide cache statistics (every session, ended ones too, and the
        shared region's entries)."""
        response = yield from unary(GET_STATS, pb.GetStatsRequest(), None)
        return response.server

    @rpc
    def reset_server_stats(self) -> Plan[pb.CacheStats]:
        """Reset the server-wide counters (admin); return them as they were."""
        response = yield from unary(RESET_STATS, pb.ResetStatsRequest(server=True), None)
        return response.before

    @rpc
    def invalidate_shared_region(self) -> Plan[list[pb.CacheEntry]]:
        """Remove every entry of the shared ``default`` region (admin); return them.

        With the region in Redis, the entries returned carry their Redis keys only.
        """
        return (yield from _removed(pb.InvalidateRequest(shared_region=True), None))

    @rpc
    def list_sessions(self, *, page_size: int = 0) -> Plan[list[pb.SessionInfo]]:
        """Every live session (admin), least recently active first, following all pages."""
        request = pb.ListSessionsRequest(page_size=page_size)
        return (yield from Paging(LIST_SESSIONS, request, None, _sessions).collect())

    @rpc
    def end_idle_sessions(self, min_idle: float) -> Plan[pb.EndSessionsResponse]:
        """End every session without a call for at least ``min_idle`` seconds (admin).

        Like Redis ``CLIENT KILL MAXAGE``. The server refuses ``min_idle <= 0`` with
        :class:`InvalidArgument`.
        """
        request = pb.EndSessionsRequest(min_idle=duration(min_idle, "min_idle"))
        return (yield from unary(END_SESSIONS, request, None))

    @rpc
    def list_cache_keys_of(
        self,
        handle: str,
        *,
        region: str = "",
        entity: str = "",
        order_by: EntryOrderArg = None,
        page_size: int = 0,
    ) -> Plan[list[pb.CacheEntry]]:
        """The cache entries of another session (admin), named by its ``handle``
        (``SessionInfo.handle`` from :meth:`list_sessions`).

        See ``Session.list_cache_keys`` for the other arguments.
        """
        if not handle:
            raise InvalidArgument(
                "a session handle is required", field_violations=[("session", "must not be empty")]
            )
        request = keys_request(
            page_size=page_size, region=region, entity=entity, order_by=order_by, session=handle
        )
        return (yield from Paging(LIST_CACHE_KEYS, request, None, _entries).collect())

    @watch
    def watch_all(
        self, *, types: Iterable[EventTypeArg] = (), duration: float | None = None
    ) -> Watch:
        """Live cache events of every session (admin). See ``Session.watch``."""
        request = pb.WatchCacheEventsRequest(all_sessions=True, types=event_type_values(types))
        return _watch_spec(request, None, duration)


class SessionCalls(_Queries):
    """The calls of one session: each sends ``session-id: <id>``."""

    id: str

    @rpc
    def list_cache_keys(
        self,
        *,
        page_size: int = 0,
        region: str = "",
        entity: str = "",
        order_by: EntryOrderArg = None,
    ) -> Plan[list[pb.CacheEntry]]:
        """Every entry of this session's cache, following all pages.

        ``region`` is "" or ``LOCAL_REGION`` (the session's own entries),
        ``SHARED_REGION`` (the shared ``default`` region) or ``ALL_REGIONS``
        (both). ``entity`` keeps only entries of that ORM entity, e.g. "Person".
        ``order_by`` is "stored" (the default: oldest first), "hits" (most first) or
        "size" (largest first). Listing is never an access: hits and last access stay.

        Raises :class:`SessionNotFound` when the session does not exist.
        """
        request = keys_request(page_size=page_size, region=region, entity=entity, order_by=order_by)
        return (yield from Paging(LIST_CACHE_KEYS, request, self.id, _entries).collect())

    @rpc
    def explain_cache_key(self, key_or_digest: str) -> Plan[pb.ExplainCacheKeyResponse]:
        """Whether this session's cache holds ``key_or_digest`` (a key, or an entry's
        digest) and, if not, why (``miss.reason``: never stored, evicted, expired,
        invalidated, changed...). Counts no hit. Raises :class:`SessionNotFound`."""
        request = pb.ExplainCacheKeyRequest(key=key_or_digest)
        return (yield from unary(EXPLAIN_CACHE_KEY, request, self.id))

    @rpc
    def reset_stats(self) -> Plan[pb.CacheStats]:
        """Reset this session's counters; return them as they were."""
        response = yield from unary(RESET_STATS, pb.ResetStatsRequest(), self.id)
        return response.before

    @rpc
    def invalidate_key(self, key_or_digest: str) -> Plan[list[pb.CacheEntry]]:
        """Remove one entry, named by its key or its digest, from this session's cache
        or (failing that) the shared region. Returns it, or ``[]`` if there was none."""
        return (yield from _removed(pb.InvalidateRequest(key=key_or_digest), self.id))

    @rpc
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
    ) -> Plan[list[pb.CacheEntry]]:
        """Remove the entry that :meth:`query_persons` with the same arguments would hit.

        Returns it, or ``[]`` if it was not cached.
        """
        query = query_request(
            name=name,
            name_first=name_first,
            name_last=name_last,
            ids=ids,
            bypass_cache=False,
            page_size=page_size,
            page_token=page_token,
            view=view,
        )
        return (yield from _removed(pb.InvalidateRequest(query=query), self.id))

    @rpc
    def clear_cache(self) -> Plan[list[pb.CacheEntry]]:
        """Remove every entry of this session's cache, keeping the session; return them."""
        return (yield from _removed(pb.InvalidateRequest(session_cache=True), self.id))

    @watch
    def watch(self, *, types: Iterable[EventTypeArg] = (), duration: float | None = None) -> Watch:
        """Live cache events of this session: an event stream of ``CacheEvent``.

        ``types`` keeps only those types (e.g. ``["hit", "miss"]``; empty: all).
        ``duration`` ends the stream after that many seconds (``None``: only
        ``cancel()`` or the server ends it). Once the stream is returned (awaited,
        for the async client) the server has subscribed: every later event is
        delivered, or counted in the ``lost`` field of the next one delivered if the
        reader fell behind. The session need not exist yet. The client's
        ``timeout`` does not apply.
        """
        request = pb.WatchCacheEventsRequest(types=event_type_values(types))
        return _watch_spec(request, self.id, duration)

    # -- writes (each one transaction, in this session) --------------------------

    @rpc
    def create_person(
        self, name: str, *, addresses: Sequence[tuple[str, str]] = ()
    ) -> Plan[pb.Person]:
        """Create a person named ``name``, with ``addresses`` as (street, postal code)
        pairs (known postal codes, e.g. "60601"); return it with its id and etag.

        Raises :class:`AlreadyExists` when another person has that name.
        """
        person = pb.Person(
            name=name,
            addresses=[pb.Address(street=street, postal_code=code) for street, code in addresses],
        )
        return (yield from unary(CREATE_PERSON, pb.CreatePersonRequest(person=person), self.id))

    @rpc
    def update_person(
        self,
        person_id: int,
        *,
        name: str | None = None,
        address_id: int | None = None,
        street: str | None = None,
        etag: str = "",
    ) -> Plan[pb.Person]:
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
        request = pb.UpdatePersonRequest(id=person_id, etag=etag, name=name)
        if address_id is not None and street is not None:
            request.address.CopyFrom(pb.AddressUpdate(id=address_id, street=street))
        return (yield from unary(UPDATE_PERSON, request, self.id))

    @rpc
    def delete_person(self, person_id: int, *, etag: str = "") -> Plan[pb.Person]:
        """Delete person ``person_id`` and its addresses; return it as it was.

        ``etag``: as for :meth:`update_person`. Raises :class:`NotFound` for an
        unknown person.
        """
        request = pb.DeletePersonRequest(id=person_id, etag=etag)
        deleted = yield from unary(DELETE_PERSON, request, self.id)
        return deleted.person

    @rpc
    def end(self) -> Plan[pb.EndSessionResponse]:
        """End the session: the server drops its ORM Session and cache.

        Succeeds with ``existed`` false when the session did not exist.
        """
        return (yield from unary(END_SESSION, pb.EndSessionRequest(), self.id))
