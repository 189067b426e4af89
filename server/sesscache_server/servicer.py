"""The ``sesscache.v1.SessionCache`` service, on grpc.aio.

Every call follows one shape: read and validate the caller's session id
and the request, take the caller's session with its call lock (calls of one
session run one at a time; calls of different sessions run side by side),
then either answer on the event loop (a cache hit whose response is already
rendered, or an inspection: no I/O) or hand the database work to a worker
thread. A slow database call therefore holds one thread and one session,
never the loop, so other sessions' hits go on being served.

A call cancelled by its client, or past its deadline, while its work runs in
a thread keeps the session locked until that work has finished: the next
call of the session never meets a Session still in use.

Errors are raised as exceptions; :class:`sesscache_server.calls`
turns them into statuses.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

from dogpile.cache.region import CacheRegion
from sqlalchemy.orm import object_session

from sesscache.backend import SharedMemoryBackend
from sesscache.caching import CachedResult
from sesscache.core import CacheCore
from sesscache.freshness import Freshness
from sesscache.memo import Memo
from sesscache.regions import LOCAL_REGION, SHARED_REGION, clear_shared, shared_entries
from sesscache.registry import ScopeKey, SessionRegistry, SessionState
from sesscache.store import (
    DIGEST_LENGTH,
    MISS_REASON_OF,
    Entry,
    Miss,
    MissReason,
    Removal,
    RemovalReason,
    SessionStore,
)
from sesscache.v1 import sesscache_pb2 as pb
from sesscache.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server import validation, writes
from sesscache_server.auth import current_principal
from sesscache_server.calls import current_call
from sesscache_server.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    no_session,
    quote,
)
from sesscache_server.inspection import (
    EVENT_TYPES_BY_VALUE,
    Inspector,
    entry_message,
    event_message,
    feed_message,
    limits_hit,
    miss_message,
    server_totals,
    session_message,
    stats_message,
)
from sesscache_server.paging import PageTokens, keyset_page
from sesscache_server.persons import RESPONSE_RENDERING, PersonService
from sesscache_server.session_order import ordered_sessions

if TYPE_CHECKING:
    from sesscache_server.calls import Context

A = TypeVar("A")
R = TypeVar("R")

_STATUS_NAMES = {
    pb.CACHE_STATUS_HIT: "HIT",
    pb.CACHE_STATUS_MISS: "MISS",
    pb.CACHE_STATUS_BYPASS: "BYPASS",
}
#: ListCacheKeys ``region`` value listing the session's entries and the shared region's.
ALL_REGIONS = "*"
_ORDERS = {
    pb.CACHE_ENTRY_ORDER_UNSPECIFIED,
    pb.CACHE_ENTRY_ORDER_STORED,
    pb.CACHE_ENTRY_ORDER_HITS,
    pb.CACHE_ENTRY_ORDER_SIZE,
}


class SessionCacheServicer(pb_grpc.SessionCacheServicer):
    """The RPCs, over the session registry, the regions and the inspector."""

    def __init__(
        self,
        registry: SessionRegistry,
        service: PersonService,
        tokens: PageTokens,
        executor: Executor,
        *,
        regions: dict[str, CacheRegion],
        inspector: Inspector,
        watch_buffer: int = 1000,
        max_response_bytes: int = 1024 * 1024,
        info: pb.ServerInfo | None = None,
        max_watchers: int = 64,
        max_watchers_per_principal: int = 8,
        freshness: Freshness | None = None,
    ) -> None:
        self.registry = registry
        #: The change feed (None: not followed, e.g. an in-memory database).
        self.freshness = freshness
        self.service = service
        self.tokens = tokens
        self.executor = executor
        self.regions = regions
        self.inspector = inspector
        self.watch_buffer = watch_buffer
        self.max_response_bytes = max_response_bytes
        #: What GetServerInfo says, but the uptime (see sesscache_server.app.server_info).
        self.info = info or pb.ServerInfo()
        self.max_watchers = max_watchers
        self.max_watchers_per_principal = max_watchers_per_principal
        #: WatchCacheEvents streams open, by principal.
        self.watchers: collections.Counter[str] = collections.Counter()
        self.core = CacheCore(registry, executor, freshness)
        self._known_requests: Memo[bytes, validation.PersonsRequest] = Memo(
            validation.known_request_size,
            max_bytes=validation.KNOWN_REQUESTS_BYTES,
            max_item=validation.KNOWN_REQUEST_MAX,
        )
        self.writer = writes.PersonWriter(registry)

    def abandon_database_work(self) -> None:
        """Shutting down past the grace period: cancelled calls stop waiting for
        their database work (their sessions are going away with the server)."""
        self.core.abandon()

    # -- queries -----------------------------------------------------------------

    async def QueryPersons(
        self, request: pb.QueryPersonsRequest, context: Context
    ) -> pb.QueryPersonsResponse:
        session_id = self._session_id(context)
        persons = self._validated(request)
        principal = current_principal().name
        freshness = self.freshness
        if freshness is not None and not freshness.vouching and not persons.bypass_cache:
            # The change feed is lost past --freshness-timeout: read the database.
            persons = dataclasses.replace(persons, bypass_cache=True)
        key = None if persons.bypass_cache else self.service.known_key(persons)
        if session_id is not None and key is not None:
            hit = self.core.rendered_hit(session_id, principal, key, RESPONSE_RENDERING)
            if hit is not None:
                state, entry, response = hit
                return self._hit(state, entry, response)
        async with self.core.session(session_id, principal=principal, peer=context.peer()) as state:
            if key is not None:
                rendered = self.core.rendered(state, key, RESPONSE_RENDERING)
                if rendered is not None:
                    return self._hit(state, *rendered)
            served = await self.core.run(state, self.service.query_persons, persons)
            if freshness is not None and served.deps is not None:
                freshness.stored(
                    state, served.response.cache_key, served.stored, served.deps, served.seen
                )
        self.registry.trim()
        response = served.response
        if served.miss is not None:
            self.inspector.miss(
                state, LOCAL_REGION, response.cache_key, served.rows, response.sql_statements
            )
        elif response.cache_status == pb.CACHE_STATUS_HIT:
            self.inspector.hit(state, LOCAL_REGION, response.cache_key, served.rows, served.saved)
        else:
            self.inspector.bypass(state, response.sql_statements)
        record = current_call()
        if record is not None:
            record.cache_status = _STATUS_NAMES.get(response.cache_status, "-")
        return response

    def _hit(
        self, state: SessionState, entry: Entry, response: pb.QueryPersonsResponse
    ) -> pb.QueryPersonsResponse:
        """Count and answer a hit served from the entry's rendering."""
        saved = entry.payload.sql_statements if isinstance(entry.payload, CachedResult) else 0
        self.inspector.hit(state, LOCAL_REGION, entry.key, entry.rows, saved)
        record = current_call()
        if record is not None:
            record.cache_status = "HIT"
        return response

    # -- inspection -----------------------------------------------------------------

    async def ListCacheKeys(
        self, request: pb.ListCacheKeysRequest, context: Context
    ) -> pb.ListCacheKeysResponse:
        # Every argument is checked before any state is looked at.
        size = validation.page_size(request.page_size, default=validation.DEFAULT_KEYS_PAGE)
        if request.order_by not in _ORDERS:
            raise InvalidArgument.field("order_by", f"unknown value {request.order_by}")
        region = request.region or LOCAL_REGION
        if region not in (LOCAL_REGION, SHARED_REGION, ALL_REGIONS):
            raise InvalidArgument.field(
                "region",
                f"must be {LOCAL_REGION!r}, {SHARED_REGION!r} or {ALL_REGIONS!r} "
                f"(got {quote(request.region)})",
            )
        if len(request.entity) > validation.MAX_NAME:
            raise InvalidArgument.field("entity", f"at most {validation.MAX_NAME} characters")
        validation.check_handle(request.session)
        token = self.tokens.open(request.page_token) if request.page_token else None
        if region != LOCAL_REGION:
            # The shared region holds what every principal's sessions loaded.
            self._require_admin("listing the shared region")
        async with self._target_session(request.session, context) as state:
            fingerprint = f"keys:{state.handle}:{region}:{request.entity}:{request.order_by}"
            after = token.position_for(fingerprint) if token is not None else None
            store = self.registry.store_of(state)
            sources: list[tuple[int, list[Entry]]] = []
            total = 0
            if region != SHARED_REGION:
                local = list(store) if store is not None else []
                sources.append((0, local))
                total += len(local)
            if region != LOCAL_REGION:
                shared = self._shared_entries()
                sources.append((1, shared))
                total += len(shared)
            page, more = keyset_page(
                sources,
                order=request.order_by,
                entity=request.entity,
                after=after,
                limit=size,
                max_bytes=self.max_response_bytes,
                message=lambda entry: entry_message(
                    entry, live_objects=_live_objects(entry) if entry.region == LOCAL_REGION else 0
                ),
            )
        response = pb.ListCacheKeysResponse(total_size=total)
        for _, message in page:
            response.entries.append(message)
        if more is not None:
            if more == "bytes":
                self.inspector.limit_hit("max_response_bytes")
            response.next_page_token = self.tokens.encode(fingerprint, page[-1][0])
        return response

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        session_id = self._session_id(context)
        principal = current_principal()
        response = pb.GetStatsResponse()
        if session_id is not None:
            state = self.registry.get(session_id, principal=principal.name)
            if state is None:
                raise NotFound(no_session(session_id))
            store = self.registry.store_of(state)
            response.session.CopyFrom(
                stats_message(
                    state.counters.snapshot(),
                    entries=len(store) if store is not None else 0,
                    size_bytes=store.bytes if store is not None else 0,
                )
            )
        counters = self.registry.principal_counters.get(principal.name)
        if counters is not None:
            entries, size, sessions = self.registry.usage_of(principal.name)
            response.principal.CopyFrom(
                stats_message(
                    counters.snapshot(), entries=entries, size_bytes=size, sessions=sessions
                )
            )
        if not principal.admin:
            # Server-wide figures would show other principals' activity.
            return response
        entries, size = server_totals(self.registry)
        shared_entries, shared_bytes = self._shared_totals()
        response.server.CopyFrom(
            stats_message(
                self.inspector.counters.snapshot(),
                entries=entries + shared_entries,
                size_bytes=size + shared_bytes,
                sessions=len(self.registry),
                ended=self.registry.sessions_ended,
                evicted=self.registry.sessions_evicted,
                expired=self.registry.sessions_expired,
                limits_hit=limits_hit(self.registry, self.inspector),
            )
        )
        if self.freshness is not None:
            response.feed.CopyFrom(feed_message(self.freshness.stats()))
        return response

    async def ResetStats(
        self, request: pb.ResetStatsRequest, context: Context
    ) -> pb.ResetStatsResponse:
        if request.server:
            self._require_admin("resetting the server's statistics")
            before = self.inspector.counters.reset()
            return pb.ResetStatsResponse(
                before=stats_message(before, entries=0, size_bytes=0, sessions=len(self.registry))
            )
        session_id = self._session_id(context)
        if session_id is None:
            raise InvalidArgument.field(
                validation.SESSION_ID_KEY, "name the session to reset, or set `server`"
            )
        state = self.registry.get(session_id, principal=self._principal(context))
        if state is None:
            raise NotFound(no_session(session_id))
        before = state.counters.reset()
        return pb.ResetStatsResponse(before=stats_message(before, entries=0, size_bytes=0))

    async def Invalidate(
        self, request: pb.InvalidateRequest, context: Context
    ) -> pb.InvalidateResponse:
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument.field(
                "target", "set one of key, query, session_cache or shared_region"
            )
        if target == "shared_region":
            self._require_admin("invalidating the shared region")
            cleared = clear_shared(self.regions[SHARED_REGION])
            return self._removed(
                entry_message(item)
                if isinstance(item, Entry)
                else pb.CacheEntry(key=item, region=SHARED_REGION)
                for item in cleared
            )
        query = self._key_or_query(target, request.key, request.query)
        session_id = self._caller_session(context, "Invalidate works on")
        async with self._session(session_id, context, create=False) as state:
            store = self.registry.store_of(state)
            removed: list[Entry] = []
            if target == "session_cache":
                removed = store.clear(RemovalReason.INVALIDATED) if store is not None else []
            elif target == "query":
                assert query is not None
                key = self.service.key_of(query)
                found = store.remove(key, RemovalReason.INVALIDATED) if store is not None else None
                removed = [found] if found is not None else []
            else:
                removed = self._delete_key(store, request.key)
        return self._removed(entry_message(entry) for entry in removed)

    def _removed(self, messages: Iterable[pb.CacheEntry]) -> pb.InvalidateResponse:
        """The response listing removed entries, cut short at ``max_response_bytes``."""
        response = pb.InvalidateResponse()
        budget = self.max_response_bytes
        count = 0
        for message in messages:
            count += 1
            size = message.ByteSize() + 8
            if size <= budget:
                response.removed.append(message)
                budget -= size
            else:
                budget = 0
        response.removed_count = count
        if len(response.removed) < count:
            self.inspector.limit_hit("max_response_bytes")
        return response

    # -- sessions ---------------------------------------------------------------------

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

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        self._require_admin("listing sessions")
        size = validation.page_size(request.page_size, default=validation.DEFAULT_KEYS_PAGE)
        if request.order_by not in (pb.SESSION_ORDER_UNSPECIFIED, pb.SESSION_ORDER_CREATED):
            return ordered_sessions(request, size, self.registry, self.tokens, self.inspector)
        after = self.tokens.decode(request.page_token, "sessions")
        states = self.registry.page(after_serial=after, limit=size + 1)
        response = pb.ListSessionsResponse(total_size=len(self.registry))
        for state in states[:size]:
            response.sessions.append(
                session_message(state, self.registry.store_of(state), self.inspector)
            )
        if len(states) > size:
            response.next_page_token = self.tokens.encode("sessions", states[size - 1].serial)
        return response

    async def EndSessions(
        self, request: pb.EndSessionsRequest, context: Context
    ) -> pb.EndSessionsResponse:
        self._require_admin("ending sessions in bulk")
        min_idle = request.min_idle.ToNanoseconds() / 1e9
        if min_idle <= 0:
            raise InvalidArgument.field("min_idle", "must be a positive duration, e.g. 300s")
        ended = self.registry.end_idle(min_idle)
        return pb.EndSessionsResponse(
            ended=len(ended), keys_dropped=sum(dropped for _, dropped in ended)
        )

    async def WatchCacheEvents(
        self, request: pb.WatchCacheEventsRequest, context: Context
    ) -> AsyncIterator[pb.CacheEvent]:
        types = []
        for index, value in enumerate(request.types):
            if value not in EVENT_TYPES_BY_VALUE:
                raise InvalidArgument.field(f"types[{index}]", f"unknown value {value}")
            types.append(EVENT_TYPES_BY_VALUE[value])
        session: ScopeKey | None = None
        if request.all_sessions:
            self._require_admin("watching every session")
        else:
            session_id = self._session_id(context)
            if session_id is None:
                raise InvalidArgument.field(
                    validation.SESSION_ID_KEY, "name the session to watch, or set all_sessions"
                )
            session = (self._principal(context), session_id)
        with self._watcher_slot(self._principal(context)):
            subscription = self.inspector.events.subscribe(
                session=session, types=types, capacity=self.watch_buffer
            )
            try:
                # Response headers now, not with the first event: once a client has
                # them, its subscription is in place and it misses nothing after.
                await context.send_initial_metadata(())
                while (item := await subscription.next()) is not None:
                    if context.done():
                        break  # the watcher went away: write nothing more
                    event, lost = item
                    yield event_message(event, lost, self.inspector)
            finally:
                subscription.close()

    @contextlib.contextmanager
    def _watcher_slot(self, principal: str) -> Iterator[None]:
        """One of the WatchCacheEvents slots, held until the stream ends (however
        it ends: the client's cancel, its deadline, the server's shutdown);
        RESOURCE_EXHAUSTED when the principal's or the server's are all taken."""
        mine = self.watchers[principal]
        if mine >= self.max_watchers_per_principal:
            self.inspector.limit_hit("max_watchers_per_principal")
            raise ResourceExhausted(
                f"{_principal_text(principal)} has {mine} WatchCacheEvents streams open "
                f"(max_watchers_per_principal = {self.max_watchers_per_principal}); "
                "close one or raise --max-watchers-per-principal"
            )
        total = self.watchers.total()
        if total >= self.max_watchers:
            self.inspector.limit_hit("max_watchers")
            raise ResourceExhausted(
                f"the server has {total} WatchCacheEvents streams open "
                f"(max_watchers = {self.max_watchers}); close one or raise --max-watchers"
            )
        self.watchers[principal] += 1
        try:
            yield
        finally:
            self.watchers[principal] -= 1
            if not self.watchers[principal]:
                del self.watchers[principal]

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.ServerInfo:
        info = pb.ServerInfo()
        info.CopyFrom(self.info)
        info.uptime.FromNanoseconds(max(time.time_ns() - self.info.started.ToNanoseconds(), 0))
        if not current_principal().admin:
            info.ClearField("settings")  # limits and set-up are the operators' business
        return info

    # -- the shape every call shares -----------------------------------------------

    def _validated(self, request: pb.QueryPersonsRequest) -> validation.PersonsRequest:
        """The validated form of ``request``, remembered by its bytes.

        Validation is pure (the same bytes always validate the same), and
        clients repeat requests: a repeat skips validation, token checks and
        building the query value.
        """
        if request.ByteSize() > validation.KNOWN_REQUEST_MAX:
            return validation.persons_request(request, self.tokens)  # never remembered
        raw = request.SerializeToString()
        persons = self._known_requests.get(raw)
        if persons is None:
            persons = validation.persons_request(request, self.tokens)
            self._known_requests.put(raw, persons)
        return persons

    def _key_or_query(
        self, target: str, key: str, query: pb.QueryPersonsRequest
    ) -> validation.PersonsRequest | None:
        """A request's ``key`` checked (target "key"), or its ``query`` validated."""
        if target == "query":
            return validation.persons_request(query, self.tokens)
        if target == "key" and not key:
            raise InvalidArgument.field("key", "must not be empty")
        if len(key) > validation.MAX_KEY:
            raise InvalidArgument.field("key", f"at most {validation.MAX_KEY} characters")
        return None

    def _caller_session(self, context: Context, what: str) -> str:
        """The caller's session id, required: NOT_FOUND naming ``what`` without one."""
        session_id = self._session_id(context)
        if session_id is None:
            raise NotFound(f"{what} the caller's session: send its 'session-id'")
        return session_id

    def _session_id(self, context: Context) -> str | None:
        session_id = validation.session_id_from(context.invocation_metadata())
        record = current_call()
        if record is not None and session_id is not None:
            record.session = session_id
            record.principal = current_principal().name
        return session_id

    @staticmethod
    def _principal(context: Context) -> str:
        return current_principal().name

    @staticmethod
    def _require_admin(what: str) -> None:
        if not current_principal().admin:
            raise PermissionDenied(f"{what} needs the admin role")

    @contextlib.asynccontextmanager
    async def _target_session(self, handle: str, context: Context) -> AsyncIterator[SessionState]:
        """The caller's session, or (admin) the session with ``handle``, locked."""
        if not handle:
            session_id = self._session_id(context)
            if session_id is None:
                raise NotFound(
                    "this call inspects the caller's session: send its id in the "
                    "'session-id' metadata"
                )
            async with self._session(session_id, context, create=False) as state:
                yield state
            return
        self._require_admin("inspecting another session")
        target = self.registry.by_handle(handle)
        if target is None:
            raise NotFound(f"no live session with handle {quote(handle)}")
        async with self._session(
            target.session_id, context, create=False, principal=target.principal
        ) as locked:
            yield locked

    def _session(
        self,
        session_id: str | None,
        context: Context,
        *,
        create: bool = True,
        principal: str | None = None,
    ) -> contextlib.AbstractAsyncContextManager[SessionState]:
        """The caller's (or ``principal``'s) session, locked for this call (see
        :meth:`sesscache.core.CacheCore.session`; not found is NOT_FOUND)."""
        owner = current_principal().name if principal is None else principal
        return self.core.session(session_id, principal=owner, peer=context.peer(), create=create)

    def _shared_entries(self) -> list[Entry]:
        return shared_entries(self.regions[SHARED_REGION])

    def _shared_totals(self) -> tuple[int, int]:
        """(entries, bytes) of the shared region when held in this process: O(1).

        An external shared region (Redis) is not counted: that would scan it.
        """
        backend = self.regions[SHARED_REGION].backend
        if isinstance(backend, SharedMemoryBackend):
            return len(backend.store), backend.store.bytes
        return 0, 0

    def _delete_key(self, store: SessionStore | None, key_or_digest: str) -> list[Entry]:
        """Remove one entry, by key or digest, from the session or the shared region."""
        if store is not None:
            entry = store.peek(key_or_digest) or next(
                (e for e in store if e.digest == key_or_digest), None
            )
            if entry is not None:
                store.remove(entry.key, RemovalReason.INVALIDATED)
                return [entry]
        if not current_principal().admin:
            return []  # the shared region is for admins to change (see ListCacheKeys)
        backend = self.regions[SHARED_REGION].backend
        if isinstance(backend, SharedMemoryBackend):
            for entry in backend.entries():
                if key_or_digest in (entry.key, entry.digest):
                    backend.delete(entry.key)
                    return [entry]
        return []

    # -- writes (see sesscache_server.writes) ------------------------------------------

    async def CreatePerson(self, request: pb.CreatePersonRequest, context: Context) -> pb.Person:
        self._require_writer("CreatePerson")
        return await self._write(context, self.writer.create, writes.create_request(request))

    async def UpdatePerson(self, request: pb.UpdatePersonRequest, context: Context) -> pb.Person:
        self._require_writer("UpdatePerson")
        return await self._write(context, self.writer.update, writes.update_request(request))

    async def DeletePerson(
        self, request: pb.DeletePersonRequest, context: Context
    ) -> pb.DeletePersonResponse:
        self._require_writer("DeletePerson")
        done = await self._write(context, self.writer.delete, writes.delete_request(request))
        return pb.DeletePersonResponse(person=done)

    async def _write(
        self, context: Context, work: Callable[[A], writes.WriteResult], argument: A
    ) -> pb.Person:
        """One write in the caller's session: its lock, its scope, a worker thread."""
        session_id = self._session_id(context)
        async with self._session(session_id, context) as state:
            done = await self.core.run(state, work, argument)
            if self.freshness is not None:
                self.freshness.wrote(state, done.own)
        return done.person

    # -- why a miss -----------------------------------------------------------------

    async def ExplainCacheKey(
        self, request: pb.ExplainCacheKeyRequest, context: Context
    ) -> pb.ExplainCacheKeyResponse:
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument.field("target", "set one of key or query")
        query = self._key_or_query(target, request.key, request.query)
        session_id = self._caller_session(context, "ExplainCacheKey looks at")
        async with self._session(session_id, context, create=False) as state:
            key = self.service.key_of(query) if query is not None else request.key
            store = self.registry.store_of(state)
            if store is None:
                return pb.ExplainCacheKeyResponse(miss=miss_message(Miss(MissReason.NEW_SESSION)))
            entry = store.peek(key) or next((e for e in store if e.digest == key), None)
            if entry is not None:
                expires_in = entry.expires_in()
                if expires_in is None or expires_in > 0:
                    return pb.ExplainCacheKeyResponse(cached=True, entry=entry_message(entry))
                # Expired, not yet swept: the next lookup removes it as EXPIRED.
                assert entry.expires_at is not None
                removal = Removal(RemovalReason.EXPIRED, entry.expires_at)
                return pb.ExplainCacheKeyResponse(
                    miss=miss_message(Miss(MissReason.EXPIRED, removal))
                )
            recorded = store.removals.get(key) if len(key) == DIGEST_LENGTH else None
            miss = Miss(MISS_REASON_OF[recorded.reason], recorded) if recorded else None
            return pb.ExplainCacheKeyResponse(miss=miss_message(miss or store.why_missing(key)))

    @staticmethod
    def _require_writer(what: str) -> None:
        principal = current_principal()
        if not principal.may_write:
            raise PermissionDenied(
                f"{what} needs the writer role ({_principal_text(principal.name)} has it not): "
                "give its token as TOKEN=PRINCIPAL:writer (or :admin)"
            )


def _principal_text(name: str) -> str:
    """How a refusal names a principal: quoted, at most 64 characters of it."""
    if not name:
        return "the anonymous principal (authentication is off)"
    return f"principal {name[:64]!r}" + ("..." if len(name) > 64 else "")


def _live_objects(entry: Entry) -> int:
    """How many of the entry's objects are still in a session (not expunged)."""
    payload = entry.value.payload
    if not isinstance(payload, CachedResult):
        return 0
    return sum(
        1
        for row in payload.frozen.data
        for obj in (row if isinstance(row, tuple) else (row,))
        if object_session(obj) is not None
    )
