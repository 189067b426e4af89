"""What the sync and the async client share: constants, argument checks, request builders.

Nothing here talks to a server: these turn the typed keyword arguments of the
client methods into ``sesscache.v1`` requests (and refuse bad ones locally with
:class:`~sesscache_client.errors.InvalidArgument`).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Literal, TypeAlias

from google.protobuf import duration_pb2, message

from sesscache_client._enums import CacheEntryOrder, CacheEventType, PersonView
from sesscache_client.errors import InvalidArgument
from sesscache_client.v1 import sesscache_pb2

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_PORT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "LOCAL_REGION",
    "SERVICE_NAME",
    "SESSION_ID_METADATA_KEY",
    "SHARED_REGION",
    "EntryOrderArg",
    "EventTypeArg",
    "PersonViewArg",
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
PersonViewArg: TypeAlias = Literal["basic", "full"] | PersonViewValue | PersonView | None
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
EntryOrderArg: TypeAlias = (
    Literal["stored", "hits", "size"] | EntryOrderValue | CacheEntryOrder | None
)
_ORDERS: dict[str, EntryOrderValue] = {
    "stored": sesscache_pb2.CACHE_ENTRY_ORDER_STORED,
    "hits": sesscache_pb2.CACHE_ENTRY_ORDER_HITS,
    "size": sesscache_pb2.CACHE_ENTRY_ORDER_SIZE,
}

EventTypeValue: TypeAlias = sesscache_pb2.CacheEventType.ValueType
#: A cache event type: its lower-case name ("hit", "session_end", ...) or a
#: ``CacheEventType`` value.
EventTypeArg: TypeAlias = (
    Literal["hit", "miss", "store", "invalidate", "evict", "expire", "session_end"]
    | EventTypeValue
    | CacheEventType
)
_EVENT_TYPES: dict[str, EventTypeValue] = {
    name.removeprefix("CACHE_EVENT_TYPE_").lower(): value
    for name, value in sesscache_pb2.CacheEventType.items()
    if value != sesscache_pb2.CACHE_EVENT_TYPE_UNSPECIFIED
}


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
    return sesscache_pb2.PersonView.ValueType(view)


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
    return sesscache_pb2.CacheEntryOrder.ValueType(order_by)


def event_type_values(types: Iterable[EventTypeArg]) -> list[EventTypeValue]:
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
            values.append(sesscache_pb2.CacheEventType.ValueType(value))
    return values


def keys_request(
    *, page_size: int, region: str, entity: str, order_by: EntryOrderArg, session: str = ""
) -> sesscache_pb2.ListCacheKeysRequest:
    return sesscache_pb2.ListCacheKeysRequest(
        page_size=page_size,
        region=region,
        entity=entity,
        order_by=_order_value(order_by),
        session=session,
    )


def query_request(
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


def duration(seconds: float, field: str) -> duration_pb2.Duration:
    if not math.isfinite(seconds):
        raise InvalidArgument(
            f"invalid {field} {seconds!r}", field_violations=[(field, "must be a finite number")]
        )
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
