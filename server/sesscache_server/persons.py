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

A stored result keeps its rendered response (:data:`RESPONSE_RENDERING`):
the hit path (:meth:`sesscache.core.CacheCore.rendered_hit`) answers with it
on the event loop, with no thread, no statement and no database.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from sesscache import tracking
from sesscache.backend import store_for
from sesscache.caching import CachedResult, QueryCache
from sesscache.freshness import Seen, read_seen
from sesscache.memo import Memo
from sesscache.models import Person
from sesscache.precision import Dependencies
from sesscache.queries import PersonQuery
from sesscache.registry import SessionRegistry
from sesscache.store import Entry, Hit, Miss, RemovalReason, SessionStore, value_size
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.inspection import miss_message
from sesscache_server.paging import PageTokens
from sesscache_server.validation import PersonsRequest, persons_next_token

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
    ``saved`` SQL statements a hit saved (what storing the entry took), and for
    a miss, why it missed."""

    response: pb.QueryPersonsResponse
    rows: int = 0
    saved: int = 0
    miss: Miss | None = None
    #: Stored by this call: the entry and what it depends on (for the change feed).
    stored: Entry | None = None
    deps: Dependencies | None = None
    seen: Seen | None = None


class PersonService:
    """Runs QueryPersons against the caller's Session and its cache (worker threads)."""

    def __init__(
        self,
        registry: SessionRegistry,
        query_cache: QueryCache,
        tokens: PageTokens,
        *,
        known_keys_bytes: int = KNOWN_KEYS_BYTES,
        follows_changes: bool = False,
    ) -> None:
        self.registry = registry
        #: Whether a miss reads what it can see of the change log (see sesscache.freshness).
        self.follows_changes = follows_changes
        self.query_cache = query_cache
        self.tokens = tokens
        # The cache key of each query seen, so a hit needs no statement; bounded
        # in bytes (a query with 1,000 ids has a long key).
        self._keys: Memo[PersonQuery, str] = Memo(
            query_key_size, max_bytes=known_keys_bytes, max_item=KNOWN_KEY_MAX
        )

    def known_key(self, request: PersonsRequest) -> str | None:
        """The cache key of a query of a shape seen before (None: not yet known)."""
        return self._keys.get(request.query)

    def key_of(self, request: PersonsRequest) -> str:
        """The cache key a request is (or would be) stored under."""
        key = self._keys.get(request.query)
        if key is None:
            key = self.query_cache.key_for(request.query.statement()).key
            # Forgetting only costs building a statement again.
            self._keys.put(request.query, key)
        return key

    def query_persons(self, request: PersonsRequest) -> Served:
        """Run (or serve from the cache) one page of persons, in the current scope.

        The store decides hit or miss (and why) before the statement runs; the
        ORM hook then serves the hit or stores the miss's result, and a stored
        result gets its rendering here, for the hit path.
        """
        query = request.query
        session = self.registry.current_session()
        store = store_for(session)
        assert store is not None
        cached = not request.bypass_cache
        key = self.key_of(request) if cached else ""
        found = store.lookup(key, count=False) if cached else None
        statement = query.statement(cached=cached)
        if not isinstance(found, Hit):
            # Read the database afresh even for objects already in the session:
            # a miss (a change may have removed the entry) refreshes them.
            statement = statement.execution_options(populate_existing=True)
        seen = self._seen(session, store, key) if isinstance(found, Miss) else None
        with tracking.track() as tracker:
            try:
                rows = session.execute(statement).unique().scalars().all()
                page = rows[: query.limit]
                persons = [render_person(person, full=query.full) for person in page]
                session.commit()
            except BaseException:
                if isinstance(found, Miss):
                    store.remove(key, RemovalReason.FAILED)
                self._rollback(session)
                raise
        response = pb.QueryPersonsResponse(persons=persons, sql_statements=tracker.sql_statements)
        if len(rows) > query.limit:
            response.next_page_token = persons_next_token(request, self.tokens, page[-1].id)
        entry = store.peek(key) if cached else None
        if entry is None or not isinstance(entry.value.payload, CachedResult):
            # Not cached (bypass, or the store kept nothing: a region that failed).
            response.cache_status = pb.CACHE_STATUS_BYPASS
            return Served(response)
        payload = entry.value.payload
        response.cache_key = key
        hit = isinstance(found, Hit)
        response.cache_status = pb.CACHE_STATUS_HIT if hit else pb.CACHE_STATUS_MISS
        if isinstance(found, Miss):
            response.miss.CopyFrom(miss_message(found))
        if not hit:
            # Stored by this call: what a hit saves is everything the call emitted,
            # lazy loads of the rendering included.
            payload.sql_statements = response.sql_statements
        if RESPONSE_RENDERING not in payload.renderings:
            # Stored by this call, or a hit whose rendering a write dropped (its
            # count of SQL saved stays).
            rendered = pb.QueryPersonsResponse()
            rendered.CopyFrom(response)
            rendered.cache_status = pb.CACHE_STATUS_HIT
            rendered.sql_statements = 0
            rendered.ClearField("miss")
            # Shared by every hit of the entry: never changed once made.
            payload.renderings[RESPONSE_RENDERING] = rendered
            store.grow(entry, message_size(rendered))
        if hit:
            return Served(response, rows=entry.rows, saved=payload.sql_statements)
        return Served(
            response,
            rows=entry.rows,
            miss=found if isinstance(found, Miss) else None,
            stored=entry,
            deps=page_dependencies(query, page, more=len(rows) > query.limit),
            seen=seen,
        )

    def _seen(self, session: Session, store: SessionStore, key: str) -> Seen | None:
        """What the miss's statement will see of the change log (None: no feed)."""
        if not self.follows_changes:
            return None
        try:
            return read_seen(session)
        except BaseException:
            store.remove(key, RemovalReason.FAILED)
            self._rollback(session)
            raise

    @staticmethod
    def _rollback(session: Session) -> None:
        try:
            session.rollback()
        except Exception as error:  # the connection may be gone with the database
            log.debug("rollback after a failed call failed too: %s", error)


def page_dependencies(query: PersonQuery, page: Sequence[Person], *, more: bool) -> Dependencies:
    """What a stored page depends on: the persons it shows (and their addresses, in
    the full view), and its criteria over ids up to its last person when more
    follow (open-ended otherwise). The look-ahead row that tells whether more
    follow is not part of it: a change of that row leaves the page as it is
    (only whether a next page exists may change, which the next page tells)."""
    ids = [person.id for person in page]
    addresses = [a.id for person in page for a in person.addresses] if query.full else []
    deps = Dependencies.for_person_query(query, ids, addresses)
    if not more or not ids:
        return deps
    criteria = tuple(dataclasses.replace(c, through_id=ids[-1]) for c in deps.criteria)
    return dataclasses.replace(deps, criteria=criteria)


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
