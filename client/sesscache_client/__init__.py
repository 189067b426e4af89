"""sesscache client: a thin, typed Python client for the sesscache gRPC service.

``Client`` connects to a server; ``Client.session()`` gives a ``Session`` whose calls
share one server-side ORM session and cache. Sessions and the client also inspect
the cache: statistics, invalidation, sessions, and live events (``EventStream``).
``AsyncClient`` (grpc.aio) has the same calls as coroutines, with ``AsyncSession``
and ``AsyncEventStream``. ``RetryPolicy`` and ``Keepalive`` are client options;
``CacheStatus``, ``CacheEventType``, ``PersonView`` and ``CacheEntryOrder`` name
the ints of the proto's enum fields.
Failed calls raise the exceptions of ``sesscache_client.errors`` (all subclasses of
``SesscacheError``). ``sesscache`` (or ``python -m sesscache_client``) is the command line
tool (see ``sesscache_client.cli``).
"""

from sesscache_client._client import (
    ALL_REGIONS,
    DEFAULT_PORT,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    LOCAL_REGION,
    SERVICE_NAME,
    SESSION_ID_METADATA_KEY,
    SHARED_REGION,
    AsyncClient,
    AsyncEventStream,
    AsyncSession,
    AsyncWatch,
    CacheEntryOrder,
    CacheEventType,
    CacheStatus,
    Client,
    EntryOrderArg,
    EventStream,
    EventTypeArg,
    Keepalive,
    MissReason,
    PersonView,
    PersonViewArg,
    RetryPolicy,
    Session,
    cache_digest,
    enum_name,
    new_session_id,
    validate_session_id,
    with_default_port,
)
from sesscache_client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    SesscacheError,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

__version__ = "0.1.0"

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_PORT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "LOCAL_REGION",
    "SERVICE_NAME",
    "SESSION_ID_METADATA_KEY",
    "SHARED_REGION",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncSession",
    "AsyncWatch",
    "CacheEntryOrder",
    "CacheEventType",
    "CacheStatus",
    "Client",
    "DeadlineExceeded",
    "EntryOrderArg",
    "EventStream",
    "EventTypeArg",
    "InvalidArgument",
    "Keepalive",
    "MissReason",
    "NotFound",
    "PermissionDenied",
    "PersonView",
    "PersonViewArg",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerError",
    "SesscacheError",
    "Session",
    "SessionNotFound",
    "Unauthenticated",
    "Unavailable",
    "cache_digest",
    "enum_name",
    "from_rpc_error",
    "new_session_id",
    "validate_session_id",
    "with_default_port",
]
