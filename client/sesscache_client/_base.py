"""What :class:`Client` and :class:`AsyncClient` share beyond the calls: the constructor
(one set of arguments, one set of checks), metadata, and the bookkeeping of
sessions and event streams that both kinds do the same way."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import grpc

from sesscache_client._common import DEFAULT_TARGET, DEFAULT_TIMEOUT, SESSION_ID_METADATA_KEY
from sesscache_client._options import ClientConfig, Keepalive, RetryPolicy, configure
from sesscache_client._plan import Method
from sesscache_client._surface import RETRIED
from sesscache_client.errors import SesscacheError, SessionNotFound, Unavailable, from_rpc_error
from sesscache_client.v1 import sesscache_pb2

__all__ = ["BaseClient", "EventTally", "ending_suppressed"]

_Channel = TypeVar("_Channel")


class BaseClient(abc.ABC, Generic[_Channel]):
    """A connection to one sesscache server, over a channel of type ``_Channel``.

    ``target`` is ``host:port``. ``timeout`` (seconds, ``None`` for none) applies to
    every call. Pass ``channel`` to use your own channel (the client then never
    closes it; TLS material, ``retry_policy`` and ``keepalive`` must not be given,
    configure your channel instead). ``token`` is sent as ``authorization: Bearer
    <token>`` on every call. Giving any of ``root_certificates`` (PEM CA bundle;
    ``None`` means the system roots), ``private_key`` and ``certificate_chain``
    (PEM, both or neither, for mutual TLS) makes the connection TLS; otherwise it
    is plaintext. ``retry_policy`` (a :class:`RetryPolicy`, or a dict in the form
    of gRPC's service config ``retryPolicy``) retries the idempotent reads;
    the default ``None`` retries nothing (gRPC still retries transparently a call
    that never left the client). ``keepalive`` (a :class:`Keepalive`) pings the
    server on a quiet connection; the default ``None`` sends no pings.
    """

    target: str
    timeout: float | None

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        channel: _Channel | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        retry_policy: RetryPolicy | Mapping[str, object] | None = None,
        keepalive: Keepalive | None = None,
    ) -> None:
        self._config = configure(
            target,
            timeout=timeout,
            injected=channel is not None,
            token=token,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            retry_policy=retry_policy,
            keepalive=keepalive,
            retried=RETRIED,
        )
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel: _Channel = channel if channel is not None else self._connect(self._config)
        self._closed = False
        #: The multicallables of the channel, by method path (see ``_unary_unary``).
        self._callables: dict[str, Any] = {}

    def _multicallable(self, method: Method[Any, Any], factory: Callable[..., Any]) -> Any:
        """The channel's multicallable for ``method``, made by ``factory`` (the
        channel's ``unary_unary`` or ``unary_stream``) once per method and client:
        making one costs about 20 us."""
        found = self._callables.get(method.path)
        if found is None:
            found = self._callables[method.path] = factory(
                method.path,
                request_serializer=method.serialize,
                response_deserializer=method.deserialize,
            )
        return found

    @abc.abstractmethod
    def _connect(self, config: ClientConfig) -> _Channel:
        """A new channel to ``config.target`` with ``config.options``."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target!r}, timeout={self.timeout!r}, "
            f"tls={self._config.tls}, token={'set' if self._config.auth else 'unset'})"
        )

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    @property
    def channel(self) -> _Channel:
        """The channel the calls go over (the client's own, or the one given)."""
        return self._channel

    def _metadata(self, session_id: str | None) -> tuple[tuple[str, str], ...]:
        if self._closed:
            raise RuntimeError("the client is closed")
        if session_id is None:
            return self._config.auth
        return ((SESSION_ID_METADATA_KEY, session_id), *self._config.auth)


def ending_suppressed(exc: BaseException | None) -> tuple[type[SesscacheError], ...]:
    """The errors of ending a session on leaving its ``with`` block that are suppressed.

    If the block raised, every error from ending is, so the block's own error
    propagates. Otherwise only :class:`SessionNotFound` and :class:`Unavailable`
    (the session is gone already, or the server cannot be reached and will reap
    the idle session itself); other errors propagate.
    """
    return (SesscacheError,) if exc is not None else (SessionNotFound, Unavailable)


class EventTally:
    """The accounting of an event stream, sync or async: events received and lost.

    A reader that falls behind loses events (the server never waits for it); the
    next event delivered says how many in its ``lost`` field, and :attr:`lost`
    sums them.
    """

    def __init__(self, *, session_id: str | None, bounded: bool) -> None:
        self._session_id = session_id
        self._bounded = bounded
        self._cancelled = threading.Event()
        #: Events delivered so far, and events the server reported lost.
        self.received = 0
        self.lost = 0

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancelled.is_set()

    def _count(self, event: sesscache_pb2.CacheEvent) -> sesscache_pb2.CacheEvent:
        self.received += 1
        self.lost += event.lost
        return event

    def _ended(self, exc: grpc.RpcError) -> SesscacheError | None:
        """``None`` if ``exc`` is how the stream ends (cancelled, or its duration
        passed), else the error to raise."""
        code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else None
        if code is grpc.StatusCode.CANCELLED and self.cancelled:
            return None
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and self._bounded:
            return None
        return self._error(exc)

    def _error(self, exc: grpc.RpcError) -> SesscacheError:
        error = from_rpc_error(exc, session_id=self._session_id)
        error.__cause__ = exc
        return error

    def _state(self, active: bool) -> str:
        state = "cancelled" if self.cancelled else "active" if active else "ended"
        return f"{type(self).__name__}({state}, received={self.received}, lost={self.lost})"
