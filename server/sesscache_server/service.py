"""The database side of the RPCs: work that runs in a worker thread.

Each method runs inside the caller's session scope (see
:meth:`sesscache.registry.SessionRegistry.context_for`), with the session's
call lock held by the servicer, so the ORM Session it reaches is used by no
other call. After the work, the transaction is committed (it only read) so
the connection goes back to the pool at once, while the Session keeps its
objects (``expire_on_commit=False``): the cache and the identity map outlive
the call, the connection does not.

If the work fails (the database went away mid-call, the call was
abandoned), the transaction is rolled back and any cache entry stored by
the failed call is removed: a session is never left half-written.

:meth:`PersonService.serve_hit` is the fast path, run on the event loop: a
query whose key is known and whose entry holds a rendered response is
answered without a thread hop, without building a statement and without the
ORM. It never touches the database, so hits keep being served while the
database is down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from sesscache import tracking
from sesscache.backend import store_for, value_size
from sesscache.caching import CachedResult, QueryCache
from sesscache.memo import Memo
from sesscache.models import Person
from sesscache.queries import PersonQuery
from sesscache.regions import LOCAL_REGION
from sesscache.registry import SessionRegistry, SessionState
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.paging import PageTokens
from sesscache_server.requests import PersonsRequest, persons_next_token

log = logging.getLogger(__name__)

#: The key under which a cached result keeps its rendered response.
RESPONSE_RENDERING = "QueryPersonsResponse"

#: Bytes the remembered cache keys of query shapes may hold, and one at most.
KNOWN_KEYS_BYTES = 4 * 1024 * 1024
KNOWN_KEY_MAX = 16 * 1024

#: How much more memory a message holds than its serialized bytes (upb messages,
#: measured with tracemalloc on small QueryPersons responses), plus a fixed cost.
MESSAGE_MEMORY_FACTOR = 3
MESSAGE_OVERHEAD = 200


def query_key_size(query: PersonQuery, key: str) -> int:
    """Approximate bytes a remembered (query, key) pair holds."""
    return 400 + value_size(query.ids) + value_size(key) + 2 * len(query.name or "")


def message_size(message: pb.QueryPersonsResponse) -> int:
    """Approximate bytes a kept response message holds."""
    return MESSAGE_OVERHEAD + MESSAGE_MEMORY_FACTOR * message.ByteSize()


@dataclass(frozen=True, slots=True)
class Served:
    """A QueryPersons response and what it took: ``rows`` in the cached page,
    ``saved`` SQL statements a hit saved (what storing the entry took)."""

    response: pb.QueryPersonsResponse
    rows: int = 0
    saved: int = 0


class PersonService:
    """Runs QueryPersons against the caller's Session and its cache."""

    def __init__(
        self,
        registry: SessionRegistry,
        query_cache: QueryCache,
        tokens: PageTokens,
        *,
        known_keys_bytes: int = KNOWN_KEYS_BYTES,
    ) -> None:
        self.registry = registry
        self.query_cache = query_cache
        self.tokens = tokens
        # The cache key of each query seen, so a hit needs no statement; bounded
        # in bytes (a query with 1,000 ids has a long key).
        self._keys: Memo[PersonQuery, str] = Memo(
            query_key_size, max_bytes=known_keys_bytes, max_item=KNOWN_KEY_MAX
        )

    # -- event loop ------------------------------------------------------------

    def key_of(self, request: PersonsRequest) -> str:
        """The cache key a request is (or would be) stored under."""
        key = self._keys.get(request.query)
        if key is None:
            key = self.query_cache.key_for(request.query.statement()).key
            self._remember_key(request.query, key)
        return key

    def _remember_key(self, query: PersonQuery, key: str) -> None:
        # Forgetting only costs building a statement again.
        self._keys.put(query, key)

    def serve_hit(self, state: SessionState, request: PersonsRequest) -> Served | None:
        """The response for a hit whose rendering is cached, else None (no I/O)."""
        if request.bypass_cache:
            return None
        key = self._keys.get(request.query)
        if key is None:
            return None
        store = self.registry.store_of(state)
        if store is None:
            return None
        entry = store.peek(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= time.time()):
            return None
        payload = entry.value.payload
        rendered = (
            payload.renderings.get(RESPONSE_RENDERING)
            if isinstance(payload, CachedResult)
            else None
        )
        if rendered is None:
            return None
        store.get(key)  # counts the hit on the entry
        # The rendered HIT response is shared by every hit of the entry: it is
        # never changed once made, so no copy is needed.
        return Served(rendered, rows=entry.rows, saved=payload.sql_statements)

    # -- worker thread ---------------------------------------------------------

    def query_persons(self, request: PersonsRequest) -> Served:
        """Run (or serve from the cache) one page of persons, in the current scope."""
        query = request.query
        session = self.registry.current_session()
        statement = query.statement(cached=not request.bypass_cache)
        if request.bypass_cache:
            # Read the database afresh even for objects already in the session.
            statement = statement.execution_options(populate_existing=True)
        with tracking.track() as tracker:
            try:
                rows = session.execute(statement).unique().scalars().all()
                page = rows[: query.limit]
                persons = [render_person(person, full=query.full) for person in page]
                session.commit()
            except BaseException:
                self._undo(session, tracker)
                raise
        response = pb.QueryPersonsResponse(persons=persons, sql_statements=tracker.sql_statements)
        if len(rows) > query.limit:
            response.next_page_token = persons_next_token(request, self.tokens, page[-1].id)
        lookup = tracker.first_lookup(LOCAL_REGION)
        if request.bypass_cache or lookup is None or lookup.outcome is tracking.Outcome.BYPASS:
            response.cache_status = pb.CACHE_STATUS_BYPASS
            return Served(response)
        response.cache_key = lookup.key
        hit = lookup.outcome is tracking.Outcome.HIT
        response.cache_status = pb.CACHE_STATUS_HIT if hit else pb.CACHE_STATUS_MISS
        payload = self._remember(session, query, lookup.key, response)
        saved = payload.sql_statements if hit and payload is not None else 0
        return Served(response, rows=lookup.rows, saved=saved)

    def _remember(
        self, session: Session, query: PersonQuery, key: str, response: pb.QueryPersonsResponse
    ) -> CachedResult | None:
        """Keep the rendered response on the entry, for :meth:`serve_hit`."""
        self._remember_key(query, key)
        store = store_for(session, create=False)
        entry = store.peek(key) if store is not None else None
        if entry is None or not isinstance(entry.value.payload, CachedResult):
            return None
        payload = entry.value.payload
        if RESPONSE_RENDERING not in payload.renderings:
            if response.cache_status == pb.CACHE_STATUS_MISS:
                # Stored by this call: what a hit saves is everything the call
                # emitted, lazy loads of the rendering included. (A hit renders
                # again after a write dropped the rendering: the count stays.)
                payload.sql_statements = response.sql_statements
            rendered = pb.QueryPersonsResponse()
            rendered.CopyFrom(response)
            rendered.cache_status = pb.CACHE_STATUS_HIT
            rendered.sql_statements = 0
            payload.renderings[RESPONSE_RENDERING] = rendered
            assert store is not None
            store.grow(entry, message_size(rendered))
        return payload

    def _undo(self, session: Session, tracker: tracking.CallTracker) -> None:
        """Roll back, and remove entries the failed call stored in the session cache."""
        store = store_for(session, create=False)
        if store is not None:
            for lookup in tracker.lookups:
                if lookup.region == LOCAL_REGION and lookup.outcome is tracking.Outcome.MISS:
                    store.delete(lookup.key)
        try:
            session.rollback()
        except Exception as error:  # the connection may be gone with the database
            log.debug("rollback after a failed call failed too: %s", error)


def render_person(person: Person, *, full: bool) -> pb.Person:
    """The message for one Person (lazy loads of address bits may emit SQL here)."""
    message = pb.Person(id=person.id, name=person.name, etag=etag_of(person))
    if full:
        for address in person.addresses:
            postal_code = address.postal_code
            city = postal_code.city
            message.addresses.append(
                pb.Address(
                    id=address.id,
                    street=address.street,
                    postal_code=postal_code.code,
                    city=city.name,
                    country=city.country.name,
                )
            )
    return message


def etag_of(person: Person) -> str:
    """The AIP-154 etag of a person: opaque, changed by every committed change of it."""
    return f"v{person.version}"
