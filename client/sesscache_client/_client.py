"""The typed sesscache client, sync (:class:`Client`) and asyncio (:class:`AsyncClient`).

A thin layer over the generated ``sesscache.v1`` stubs: it builds requests from
keyword arguments, sends the ``session-id`` and ``authorization`` metadata, applies
a default timeout, and turns every :class:`grpc.RpcError` into a
:mod:`sesscache_client.errors` exception. Responses are the generated proto messages.

Every call is described once (:mod:`sesscache_client._surface`) and run by either
transport (:mod:`sesscache_client._sync`, :mod:`sesscache_client._aio`); this
module gathers the names. Example::

    with Client("127.0.0.1:50051") as client, client.session() as session:
        page = session.query_persons(name_first="person 10", name_last="person 20")
        print(CacheStatus(page.cache_status), [p.name for p in page.persons])  # MISS
        print([entry.key for entry in session.list_cache_keys()])

    async with AsyncClient("127.0.0.1:50051") as client, client.session() as session:
        page = await session.query_persons(name="person 10")

Inspection: ``get_stats``, ``reset_stats``, the ``invalidate_*`` methods and
``clear_cache`` (each returns the entries removed), ``watch`` (live events, an
:class:`EventStream`); server-wide and admin calls are on the client
(``server_stats``, ``list_sessions``, ``end_idle_sessions``, ``watch_all``, ...)::

    with session.watch(types=["hit", "miss"]) as events:
        session.query_persons(name="person 10")
        print(CacheEventType(next(events).type))    # MISS
    print(session.get_stats().session.hit_ratio)

Enum fields of the generated messages read as plain ints (``page.cache_status``
is ``2``), as protobuf's Python API has them; the enums of
:mod:`sesscache_client._enums` (``CacheStatus(2)`` is ``<CacheStatus.MISS: 2>``)
and :func:`enum_name` (``CACHE_STATUS_MISS``) name them, and ``repr(page)`` shows
names too.
"""

from sesscache_client._aio import AsyncClient, AsyncEventStream, AsyncSession, AsyncWatch
from sesscache_client._common import (
    ALL_REGIONS,
    DEFAULT_PORT,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    LOCAL_REGION,
    SERVICE_NAME,
    SESSION_ID_METADATA_KEY,
    SHARED_REGION,
    EntryOrderArg,
    EventTypeArg,
    PersonViewArg,
    cache_digest,
    enum_name,
    new_session_id,
    validate_session_id,
    with_default_port,
)
from sesscache_client._enums import (
    CacheEntryOrder,
    CacheEventType,
    CacheStatus,
    MissReason,
    PersonView,
)
from sesscache_client._options import Keepalive, RetryPolicy
from sesscache_client._sync import Client, EventStream, Session

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_PORT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "LOCAL_REGION",
    "SERVICE_NAME",
    "SESSION_ID_METADATA_KEY",
    "SHARED_REGION",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncSession",
    "AsyncWatch",
    "CacheEntryOrder",
    "CacheEventType",
    "CacheStatus",
    "Client",
    "EntryOrderArg",
    "EventStream",
    "EventTypeArg",
    "Keepalive",
    "MissReason",
    "PersonView",
    "PersonViewArg",
    "RetryPolicy",
    "Session",
    "cache_digest",
    "enum_name",
    "new_session_id",
    "validate_session_id",
    "with_default_port",
]
