"""How each RPC is described once and run by either transport (sync or asyncio).

A client method is written once, as a *description*: a function of the typed
keyword arguments that builds the request and says what to send, without
sending anything (sans-I/O, like h11 or httpx's request building):

* :func:`rpc` — a *plan*: a generator that yields :class:`Step` s (one unary call
  each: method, request, session id) and gets each response back, and returns
  the method's result. Paging loops and error handling (a plan may catch the
  :mod:`~sesscache_client.errors` exception thrown into it) are plain Python.
* :func:`paged` — a :class:`Paging`: the first request of a paged RPC and how to
  read each page; the method returns an iterator of the items of every page.
* :func:`watch` — a :class:`Watch`: a server-streaming call of cache events.

The decorators make descriptors whose ``__get__`` is typed by the owner: on a
:class:`SyncScope` (``Client``, ``Session``) ``client.get_stats()`` returns the
result, on an :class:`AsyncScope` (``AsyncClient``, ``AsyncSession``) it returns a
coroutine of the same result (an async iterator, an awaitable stream). The
scopes run descriptions through their transport: ``_run``, ``_iterate``, ``_watch``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypeVar,
    overload,
)

from google.protobuf import message
from google.protobuf.descriptor import ServiceDescriptor

from sesscache_client.v1 import sesscache_pb2

if TYPE_CHECKING:
    from sesscache_client._aio import AsyncWatch
    from sesscache_client._sync import EventStream

__all__ = [
    "AsyncScope",
    "Method",
    "Paging",
    "Plan",
    "Step",
    "SyncScope",
    "Watch",
    "method",
    "paged",
    "rpc",
    "unary",
    "watch",
]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Msg = TypeVar("_Msg", bound=message.Message)
_Out = TypeVar("_Out", bound=message.Message)
_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")
_S = TypeVar("_S")


@dataclasses.dataclass(frozen=True)
class Method(Generic[_Req, _Resp]):
    """One unary or server-streaming RPC: its path and how its messages are (de)serialised."""

    service: str
    name: str
    serialize: Callable[[_Req], bytes]
    deserialize: Callable[[bytes], _Resp]
    #: Whether a retry policy applies: an idempotent read.
    idempotent: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def method(
    service: ServiceDescriptor,
    name: str,
    request_type: type[_Msg],
    response_type: type[_Out],
    *,
    idempotent: bool = False,
) -> Method[_Msg, _Out]:
    """The :class:`Method` ``name`` of ``service``, checked against its descriptor."""
    descriptor = service.methods_by_name[name]
    if (descriptor.input_type.full_name, descriptor.output_type.full_name) != (
        request_type.DESCRIPTOR.full_name,
        response_type.DESCRIPTOR.full_name,
    ):
        raise TypeError(f"{service.full_name}.{name} does not take and return these types")
    return Method(
        service.full_name,
        name,
        request_type.SerializeToString,
        response_type.FromString,
        idempotent,
    )


@dataclasses.dataclass(frozen=True)
class Step(Generic[_Req, _Resp]):
    """One unary call a plan asks for; the transport sends the response back."""

    method: Method[_Req, _Resp]
    request: _Req
    #: Sent as the ``session-id`` metadata (``None``: none).
    session_id: str | None


#: A plan returning ``_R``: yields steps, receives their responses.
Plan: TypeAlias = Generator[Step[Any, Any], object, _R]


def unary(
    rpc: Method[_Req, _Msg], request: _Req, session_id: str | None
) -> Generator[Step[Any, Any], object, _Msg]:
    """The plan of one call: ``response = yield from unary(...)`` inside a plan."""
    response = yield Step(rpc, request, session_id)
    if not isinstance(response, message.Message):
        raise TypeError(f"{rpc.path}: the transport sent back {type(response).__name__}")
    return response  # type: ignore[return-value]  # rpc.deserialize made it


class PageRequest(Protocol):
    """A request of a paged RPC (AIP-158)."""

    page_token: str


class PageResponse(Protocol):
    """A response of a paged RPC: empty ``next_page_token`` on the last page."""

    @property
    def next_page_token(self) -> str: ...


_PReq = TypeVar("_PReq", bound=PageRequest)
_PResp = TypeVar("_PResp", bound=PageResponse)


@dataclasses.dataclass
class Paging(Generic[_PReq, _PResp, _T]):
    """A paged RPC from ``request`` on: each page's ``items``, until the last page."""

    method: Method[_PReq, _PResp]
    request: _PReq
    session_id: str | None
    items: Callable[[_PResp], Iterable[_T]]

    def step(self) -> Step[_PReq, _PResp]:
        """The call of the next page."""
        return Step(self.method, self.request, self.session_id)

    def advance(self, response: _PResp) -> bool:
        """Move on after ``response``; whether there is another page."""
        if not response.next_page_token:
            return False
        self.request.page_token = response.next_page_token
        return True

    def collect(self) -> Plan[list[_T]]:
        """The plan of every page's items, as one list."""
        collected: list[_T] = []
        while True:
            response = yield self.step()
            page: _PResp = response  # type: ignore[assignment]  # the step's own response
            collected.extend(self.items(page))
            if not self.advance(page):
                return collected


@dataclasses.dataclass(frozen=True)
class Watch:
    """A ``WatchCacheEvents`` call: the stream ends after ``duration`` seconds (``None``:
    only when cancelled or the server ends it)."""

    method: Method[sesscache_pb2.WatchCacheEventsRequest, sesscache_pb2.CacheEvent]
    request: sesscache_pb2.WatchCacheEventsRequest
    session_id: str | None
    duration: float | None


class SyncScope(abc.ABC):
    """A client or session that runs descriptions with blocking calls."""

    @abc.abstractmethod
    def _run(self, plan: Plan[_R]) -> _R: ...

    @abc.abstractmethod
    def _iterate(self, paging: Paging[Any, Any, _T]) -> Iterator[_T]: ...

    @abc.abstractmethod
    def _watch(self, spec: Watch) -> EventStream: ...


class AsyncScope(abc.ABC):
    """A client or session that runs descriptions on asyncio (grpc.aio)."""

    @abc.abstractmethod
    def _run(self, plan: Plan[_R]) -> Coroutine[Any, Any, _R]: ...

    @abc.abstractmethod
    def _iterate(self, paging: Paging[Any, Any, _T]) -> AsyncIterator[_T]: ...

    @abc.abstractmethod
    def _watch(self, spec: Watch) -> AsyncWatch: ...


class _Operation(Generic[_S, _P, _R]):
    """A described method: the owner's scope runs what ``describe(owner, ...)`` returns."""

    def __init__(self, describe: Callable[Concatenate[_S, _P], _R]) -> None:
        self.describe = describe
        self.__doc__ = describe.__doc__
        self.__name__ = describe.__name__
        self.__qualname__ = describe.__qualname__
        self.__module__ = describe.__module__
        # What help() and inspect show for the bound method: the arguments after self.
        signature = inspect.signature(describe)
        self.signature = signature.replace(
            parameters=list(signature.parameters.values())[1:],
            return_annotation=inspect.Signature.empty,  # the result, or a coroutine of it
        )

    def bind(self, obj: object, run: Callable[[_R], object]) -> Callable[..., object]:
        return _Bound(self, obj, run)


class _Bound:
    """A described method bound to its client or session (cheap: made on each access)."""

    __slots__ = ("_obj", "_operation", "_run")

    def __init__(
        self, operation: _Operation[Any, Any, Any], obj: object, run: Callable[[Any], object]
    ) -> None:
        self._operation = operation
        self._obj = obj
        self._run = run

    def __call__(self, *args: Any, **kwargs: Any) -> object:
        return self._run(self._operation.describe(self._obj, *args, **kwargs))

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._operation.__doc__

    @property
    def __name__(self) -> str:
        return self._operation.__name__

    @property
    def __signature__(self) -> inspect.Signature:
        return self._operation.signature

    def __repr__(self) -> str:
        return f"<bound method {self._operation.__qualname__} of {self._obj!r}>"


def _scope(obj: object) -> SyncScope | AsyncScope:
    if not isinstance(obj, SyncScope | AsyncScope):
        raise TypeError(f"{type(obj).__name__} is not a sesscache client or session")
    return obj


class _Rpc(_Operation[_S, _P, Plan[_R]]):
    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Rpc[_S, _P, _R]: ...
    @overload
    def __get__(self, obj: SyncScope, owner: type | None = None) -> Callable[_P, _R]: ...
    @overload
    def __get__(
        self, obj: AsyncScope, owner: type | None = None
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...
    def __get__(self, obj: object, owner: type | None = None) -> object:
        return self if obj is None else self.bind(obj, _scope(obj)._run)


class _Paged(_Operation[_S, _P, Paging[Any, Any, _T]]):
    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Paged[_S, _P, _T]: ...
    @overload
    def __get__(self, obj: SyncScope, owner: type | None = None) -> Callable[_P, Iterator[_T]]: ...
    @overload
    def __get__(
        self, obj: AsyncScope, owner: type | None = None
    ) -> Callable[_P, AsyncIterator[_T]]: ...
    def __get__(self, obj: object, owner: type | None = None) -> object:
        return self if obj is None else self.bind(obj, _scope(obj)._iterate)


class _Watch(_Operation[_S, _P, Watch]):
    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Watch[_S, _P]: ...
    @overload
    def __get__(self, obj: SyncScope, owner: type | None = None) -> Callable[_P, EventStream]: ...
    @overload
    def __get__(self, obj: AsyncScope, owner: type | None = None) -> Callable[_P, AsyncWatch]: ...
    def __get__(self, obj: object, owner: type | None = None) -> object:
        return self if obj is None else self.bind(obj, _scope(obj)._watch)


def rpc(describe: Callable[Concatenate[_S, _P], Plan[_R]]) -> _Rpc[_S, _P, _R]:
    """A method described by a plan: returns ``_R`` (sync) or a coroutine of it (async)."""
    return _Rpc(describe)


def paged(describe: Callable[Concatenate[_S, _P], Paging[Any, Any, _T]]) -> _Paged[_S, _P, _T]:
    """A method described by a :class:`Paging`: an iterator (sync or async) of its items."""
    return _Paged(describe)


def watch(describe: Callable[Concatenate[_S, _P], Watch]) -> _Watch[_S, _P]:
    """A method described by a :class:`Watch`: an event stream (sync or async)."""
    return _Watch(describe)
