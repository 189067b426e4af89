"""The ``sesscache.v1.SessionCache`` service, on grpc.aio.

Every call follows one shape: read and validate the caller's session id
and the request, take the caller's session with its call lock (calls of one
session run one at a time; calls of different sessions run side by side),
then either answer on the event loop (a cache hit whose response is already
rendered: no I/O) or hand the database work to a worker thread. A slow
database call therefore holds one thread and one session, never the loop,
so other sessions' hits go on being served.

A call cancelled by its client, or past its deadline, while its work runs in
a thread keeps the session locked until that work has finished: the next
call of the session never meets a Session still in use.

Errors are raised as exceptions; :class:`server.interceptors.ErrorInterceptor`
turns them into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from server import requests
from server.auth import current_principal
from server.errors import NotFound
from server.interceptors import current_call
from server.paging import PageTokens
from server.service import PersonService
from sesscache.backend import Entry
from sesscache.registry import SessionRegistry, SessionState
from sesscache.v1 import sesscache_pb2 as pb
from sesscache.v1 import sesscache_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from server.interceptors import Context

A = TypeVar("A")
R = TypeVar("R")

_STATUS_NAMES = {
    pb.CACHE_STATUS_HIT: "HIT",
    pb.CACHE_STATUS_MISS: "MISS",
    pb.CACHE_STATUS_BYPASS: "BYPASS",
}


class SessionCacheServicer(pb_grpc.SessionCacheServicer):
    """QueryPersons, ListCacheKeys and EndSession over the session registry."""

    def __init__(
        self,
        registry: SessionRegistry,
        service: PersonService,
        tokens: PageTokens,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.service = service
        self.tokens = tokens
        self.executor = executor

    async def QueryPersons(
        self, request: pb.QueryPersonsRequest, context: Context
    ) -> pb.QueryPersonsResponse:
        session_id = self._session_id(context)
        persons = requests.persons_request(request, self.tokens)
        async with self._session(session_id, context) as state:
            response = self.service.serve_hit(state, persons)
            if response is None:
                response = await self._in_thread(state, self.service.query_persons, persons)
            if response.cache_status == pb.CACHE_STATUS_HIT:
                state.hits += 1
            elif response.cache_status == pb.CACHE_STATUS_MISS:
                state.misses += 1
        record = current_call()
        if record is not None:
            record.cache_status = _STATUS_NAMES.get(response.cache_status, "-")
        return response

    async def ListCacheKeys(
        self, request: pb.ListCacheKeysRequest, context: Context
    ) -> pb.ListCacheKeysResponse:
        session_id = self._session_id(context)
        size = requests.page_size(request.page_size, default=requests.DEFAULT_KEYS_PAGE)
        if session_id is None:
            raise NotFound(
                "ListCacheKeys lists the caller's session: send its id in the 'session-id' metadata"
            )
        async with self._session(session_id, context, create=False) as state:
            fingerprint = f"keys:{session_id}"
            after = self.tokens.decode(request.page_token, fingerprint)
            store = self.registry.store_of(state)
            response = pb.ListCacheKeysResponse(total_size=len(store) if store else 0)
            if store is not None:
                page = store.page(after_seq=after, limit=size + 1)
                response.entries.extend(entry_message(entry) for entry in page[:size])
                if len(page) > size:
                    response.next_page_token = self.tokens.encode(fingerprint, page[size - 1].seq)
        return response

    async def EndSession(
        self, request: pb.EndSessionRequest, context: Context
    ) -> pb.EndSessionResponse:
        session_id = self._session_id(context)
        if session_id is None:
            return pb.EndSessionResponse(existed=False)
        state = self.registry.get(session_id, principal=self._principal(context))
        if state is None:
            return pb.EndSessionResponse(existed=False)
        self.registry.acquire(state)
        try:
            async with state.lock:
                ended = self.registry.end(state)
        finally:
            self.registry.release(state)
        return pb.EndSessionResponse(existed=ended.existed, keys_dropped=ended.keys_dropped)

    # -- the shape every call shares -------------------------------------------

    def _session_id(self, context: Context) -> str | None:
        session_id = requests.session_id_from(context.invocation_metadata())
        record = current_call()
        if record is not None and session_id is not None:
            record.session = session_id
        return session_id

    @staticmethod
    def _principal(context: Context) -> str:
        return current_principal().name

    @contextlib.asynccontextmanager
    async def _session(
        self,
        session_id: str | None,
        context: Context,
        *,
        create: bool = True,
    ) -> AsyncIterator[SessionState]:
        """The caller's session, locked for this call.

        ``create`` False: NOT_FOUND when the session does not exist. A session
        ended while this call waited for its lock is opened afresh (or, with
        ``create`` False, reported NOT_FOUND).
        """
        principal = self._principal(context)
        while True:
            if create:
                state = self.registry.open(session_id, principal=principal, peer=context.peer())
            else:
                assert session_id is not None
                found = self.registry.get(session_id, principal=principal)
                if found is None:
                    raise NotFound(
                        f"no session {session_id!r} on this server: it was never used, was ended "
                        "or reaped, or the server restarted (sessions live in server memory)"
                    )
                state = found
                self.registry.acquire(state)
            try:
                async with state.lock:
                    if not state.ended:
                        yield state
                        return
            finally:
                self.registry.release(state)
            # Ended while this call waited: look the session up again.

    async def _in_thread(self, state: SessionState, work: Callable[[A], R], argument: A) -> R:
        """Run ``work(argument)`` in a worker thread, in ``state``'s session scope.

        If this call is cancelled meanwhile, wait for the work to finish before
        letting the cancellation through, so the session lock is released only
        once the Session is no longer in use.
        """
        context = self.registry.context_for(state.key)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, context.run, work, argument)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def entry_message(entry: Entry) -> pb.CacheEntry:
    """The CacheEntry message for a store entry (reading it is not an access)."""
    description = entry.description
    message = pb.CacheEntry(
        key=entry.key,
        digest=entry.digest,
        region=entry.region,
        stored_at=_timestamp(entry.stored_at),
        last_access=_timestamp(entry.last_access),
        rows=description.rows,
        statement=description.statement,
        parameters={name: repr(value) for name, value in description.parameters.items()},
        entity=description.entity,
        hits=entry.hits,
        size_bytes=description.size,
    )
    expires_in = entry.expires_in()
    if expires_in is None:
        message.no_expiry = True
    else:
        message.expires_in.FromNanoseconds(int(max(expires_in, 0.0) * 1e9))
    return message
