"""The asyncio client: :class:`AsyncClient`, :class:`AsyncSession`, :class:`AsyncEventStream`.

The same calls as :class:`~sesscache_client.Client` (described once in
:mod:`sesscache_client._surface`), run over a :class:`grpc.aio.Channel`: every
call is a coroutine, ``iter_persons`` an async iterator, ``watch``/``watch_all``
an :class:`AsyncWatch` (await it, or ``async with`` it, for the stream). Use a
client on the event loop it was made on (a grpc.aio rule)::

    async with AsyncClient("127.0.0.1:50051") as client:
        async with client.session() as session:
            page = await session.query_persons(name="person 10")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Generator
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from sesscache_client._base import BaseClient, EventTally, ending_suppressed
from sesscache_client._common import new_session_id, validate_session_id
from sesscache_client._options import ClientConfig
from sesscache_client._plan import AsyncScope, Method, Paging, Plan, Step, Watch
from sesscache_client._surface import ClientCalls, SessionCalls
from sesscache_client.errors import SesscacheError, from_rpc_error
from sesscache_client.v1 import sesscache_pb2

__all__ = ["AsyncClient", "AsyncEventStream", "AsyncSession", "AsyncWatch"]

_R = TypeVar("_R")
_T = TypeVar("_T")


class AsyncClient(ClientCalls, AsyncScope, BaseClient[grpc.aio.Channel]):
    """A connection to one sesscache server for asyncio: :class:`Client`'s calls as
    coroutines.

    The arguments are :class:`Client`'s; ``channel`` is a :class:`grpc.aio.Channel`
    (never closed by the client). :meth:`session` gives an :class:`AsyncSession`.
    Use as ``async with``, or ``await client.close()``.
    """

    def _connect(self, config: ClientConfig) -> grpc.aio.Channel:
        if config.tls:
            return grpc.aio.secure_channel(config.target, config.credentials(), config.options)
        return grpc.aio.insecure_channel(config.target, config.options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop using the client; close the channel if the client created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_channel:
            await self._channel.close(None)

    def session(self, session_id: str | None = None) -> AsyncSession:
        """A handle on the server session ``session_id`` (a new random id if ``None``).

        Nothing is sent yet. Used as ``async with``, the session is ended on exit.
        """
        return AsyncSession(self, new_session_id() if session_id is None else session_id)

    # The transport: how descriptions run.

    async def _unary(self, step: Step[Any, _R]) -> _R:
        metadata = self._metadata(step.session_id)
        call = self._unary_unary(step.method)
        try:
            response: _R = await call(step.request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id=step.session_id) from exc
        return response

    def _unary_unary(self, method: Method[Any, _R]) -> grpc.aio.UnaryUnaryMultiCallable[Any, _R]:
        found: grpc.aio.UnaryUnaryMultiCallable[Any, _R] = self._multicallable(
            method, self._channel.unary_unary
        )
        return found

    def _unary_stream(self, method: Method[Any, _R]) -> grpc.aio.UnaryStreamMultiCallable[Any, _R]:
        found: grpc.aio.UnaryStreamMultiCallable[Any, _R] = self._multicallable(
            method, self._channel.unary_stream
        )
        return found

    async def _run(self, plan: Plan[_R]) -> _R:
        try:
            step = next(plan)
            while True:
                try:
                    response = await self._unary(step)
                except SesscacheError as error:
                    step = plan.throw(error)  # the plan may handle it
                else:
                    step = plan.send(response)
        except StopIteration as done:
            result: _R = done.value
            return result
        finally:
            plan.close()

    async def _iterate(self, paging: Paging[Any, Any, _T]) -> AsyncIterator[_T]:
        while True:
            response = await self._unary(paging.step())
            for item in paging.items(response):
                yield item
            if not paging.advance(response):
                return

    def _watch(self, spec: Watch) -> AsyncWatch:
        return AsyncWatch(self, spec)

    async def _open_stream(self, spec: Watch) -> AsyncEventStream:
        metadata = self._metadata(spec.session_id)
        method: Method[Any, sesscache_pb2.CacheEvent] = spec.method
        call = self._unary_stream(method)(spec.request, timeout=spec.duration, metadata=metadata)
        stream = AsyncEventStream(
            call, session_id=spec.session_id, bounded=spec.duration is not None
        )
        await stream._subscribed()
        return stream


class AsyncSession(SessionCalls, AsyncScope):
    """One server session for asyncio: :class:`Session`'s calls as coroutines.

    As ``async with`` the session is ended on exit, suppressing the same errors
    as :class:`Session` does.
    """

    id: str
    client: AsyncClient

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self.client = client
        self.id = self._session_id = validate_session_id(session_id)

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(*ending_suppressed(exc)):
            await self.end()

    def _run(self, plan: Plan[_R]) -> Coroutine[Any, Any, _R]:
        return self.client._run(plan)

    def _iterate(self, paging: Paging[Any, Any, _T]) -> AsyncIterator[_T]:
        return self.client._iterate(paging)

    def _watch(self, spec: Watch) -> AsyncWatch:
        return self.client._watch(spec)


class AsyncWatch:
    """A watch about to start: ``await`` it for the :class:`AsyncEventStream` (once
    the server has subscribed), or use ``async with`` (cancelled on exit)::

        async with session.watch(types=["miss"]) as events:
            async for event in events: ...
    """

    def __init__(self, client: AsyncClient, spec: Watch) -> None:
        self._client = client
        self._spec = spec
        self._stream: AsyncEventStream | None = None

    def __await__(self) -> Generator[Any, None, AsyncEventStream]:
        return self._client._open_stream(self._spec).__await__()

    async def __aenter__(self) -> AsyncEventStream:
        self._stream = await self._client._open_stream(self._spec)
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            self._stream.cancel()


class AsyncEventStream(EventTally):
    """The live events of a ``WatchCacheEvents`` call: an async iterator of ``CacheEvent``.

    :class:`EventStream` for asyncio: the same ends (``StopAsyncIteration`` after
    :meth:`cancel`, once the ``duration`` passed, or when the server shuts down),
    errors and :attr:`received`/:attr:`lost` accounting. As ``async with`` it is
    cancelled on exit.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, sesscache_pb2.CacheEvent],
        *,
        session_id: str | None,
        bounded: bool,
    ) -> None:
        super().__init__(session_id=session_id, bounded=bounded)
        self._call = call

    async def _subscribed(self) -> None:
        # The server sends its headers once subscribed (or ends the call with an
        # error): wait for them, so errors surface here and no event is missed.
        try:
            await self._call.initial_metadata()
            if self._call.done() and await self._call.code() is not grpc.StatusCode.OK:
                await self._call.read()  # raises the call's error
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def __repr__(self) -> str:
        return self._state(not self._call.done())

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> sesscache_pb2.CacheEvent:
        try:
            event = await self._call.read()
        except grpc.RpcError as exc:
            error = self._ended(exc)
            if error is None:
                raise StopAsyncIteration from None
            raise error from exc
        except asyncio.CancelledError:
            # grpc.aio reads a call cancelled by cancel() as CancelledError; one of
            # the task itself (being cancelled) propagates.
            task = asyncio.current_task()
            if self.cancelled and (task is None or task.cancelling() == 0):
                raise StopAsyncIteration from None
            raise
        if not isinstance(event, sesscache_pb2.CacheEvent):  # grpc.aio.EOF: the end
            raise StopAsyncIteration
        return self._count(event)

    def cancel(self) -> None:
        """Stop the stream: the server unsubscribes, iteration ends. Idempotent."""
        self._cancelled.set()
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
