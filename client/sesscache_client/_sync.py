"""The synchronous client: :class:`Client`, :class:`Session` and :class:`EventStream`.

The calls themselves are described once in :mod:`sesscache_client._surface`;
this module is the blocking transport that runs them over a :class:`grpc.Channel`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from sesscache_client._base import BaseClient, EventTally, ending_suppressed
from sesscache_client._common import new_session_id, validate_session_id
from sesscache_client._options import ClientConfig
from sesscache_client._plan import Method, Paging, Plan, Step, SyncScope, Watch
from sesscache_client._surface import ClientCalls, SessionCalls
from sesscache_client.errors import SesscacheError, from_rpc_error
from sesscache_client.v1 import sesscache_pb2

__all__ = ["Client", "EventStream", "Session"]

_R = TypeVar("_R")
_T = TypeVar("_T")


class Client(ClientCalls, SyncScope, BaseClient[grpc.Channel]):
    """A connection to one sesscache server, with blocking calls.

    ``Client(target, *, timeout, channel, token, root_certificates, private_key,
    certificate_chain, retry_policy, keepalive)``: see :class:`BaseClient` for the
    arguments; ``channel`` is a :class:`grpc.Channel`. :meth:`session` gives a
    :class:`Session`. Use as a context manager, or call :meth:`close`. A client
    (like its channel) may be shared by threads. :class:`AsyncClient` is the same
    client for asyncio.
    """

    def _connect(self, config: ClientConfig) -> grpc.Channel:
        if config.tls:
            return grpc.secure_channel(config.target, config.credentials(), config.options)
        return grpc.insecure_channel(config.target, config.options)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        return Session(self, new_session_id() if session_id is None else session_id)

    # The transport: how descriptions run.

    def _unary(self, step: Step[Any, _R]) -> _R:
        metadata = self._metadata(step.session_id)
        call = self._unary_unary(step.method)
        try:
            response: _R = call(step.request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id=step.session_id) from exc
        return response

    def _unary_unary(self, method: Method[Any, _R]) -> grpc.UnaryUnaryMultiCallable[Any, _R]:
        found: grpc.UnaryUnaryMultiCallable[Any, _R] = self._multicallable(
            method, self._channel.unary_unary
        )
        return found

    def _unary_stream(self, method: Method[Any, _R]) -> grpc.UnaryStreamMultiCallable[Any, _R]:
        found: grpc.UnaryStreamMultiCallable[Any, _R] = self._multicallable(
            method, self._channel.unary_stream
        )
        return found

    def _run(self, plan: Plan[_R]) -> _R:
        try:
            step = next(plan)
            while True:
                try:
                    response = self._unary(step)
                except SesscacheError as error:
                    step = plan.throw(error)  # the plan may handle it
                else:
                    step = plan.send(response)
        except StopIteration as done:
            result: _R = done.value
            return result
        finally:
            plan.close()

    def _iterate(self, paging: Paging[Any, Any, _T]) -> Iterator[_T]:
        while True:
            response = self._unary(paging.step())
            yield from paging.items(response)
            if not paging.advance(response):
                return

    def _watch(self, spec: Watch) -> EventStream:
        metadata = self._metadata(spec.session_id)
        method: Method[Any, sesscache_pb2.CacheEvent] = spec.method
        call = self._unary_stream(method)(spec.request, timeout=spec.duration, metadata=metadata)
        return EventStream(call, session_id=spec.session_id, bounded=spec.duration is not None)


class Session(SessionCalls, SyncScope):
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
        self.id = self._session_id = validate_session_id(session_id)

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
        with contextlib.suppress(*ending_suppressed(exc)):
            self.end()

    def _run(self, plan: Plan[_R]) -> _R:
        return self.client._run(plan)

    def _iterate(self, paging: Paging[Any, Any, _T]) -> Iterator[_T]:
        return self.client._iterate(paging)

    def _watch(self, spec: Watch) -> EventStream:
        return self.client._watch(spec)


class EventStream(EventTally):
    """The live events of a ``WatchCacheEvents`` call: an iterator of ``CacheEvent``.

    Returned by :meth:`Session.watch` and :meth:`Client.watch_all` once the server
    has subscribed. Iterating blocks until the next event. The stream ends
    (``StopIteration``) after :meth:`cancel` (callable from any thread, e.g. a
    timer), once its ``duration`` has passed, or when the server shuts down; any
    other failure raises a :mod:`sesscache_client.errors` exception. As a context
    manager it is cancelled on exit. :attr:`received` counts the events delivered,
    :attr:`lost` those the server reported lost (the ``lost`` fields summed).
    """

    def __init__(
        self,
        call: grpc.CallIterator[sesscache_pb2.CacheEvent],
        *,
        session_id: str | None,
        bounded: bool,
    ) -> None:
        super().__init__(session_id=session_id, bounded=bounded)
        self._call = call
        self._iterator = iter(call)
        # The server sends its headers once subscribed (or ends the call with an
        # error): wait for them, so errors surface here and no event is missed.
        try:
            call.initial_metadata()
            if not call.is_active() and call.code() is not grpc.StatusCode.OK:
                next(self._iterator)  # raises the call's error
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def __repr__(self) -> str:
        return self._state(self._call.is_active())

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> sesscache_pb2.CacheEvent:
        try:
            event = next(self._iterator)
        except grpc.RpcError as exc:
            error = self._ended(exc)
            if error is None:
                raise StopIteration from None
            raise error from exc
        return self._count(event)

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
