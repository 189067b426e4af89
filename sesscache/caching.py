"""Query caching for the ORM: ``FromCache``, ``RelationshipCache`` and the hook.

A SELECT carrying a :class:`FromCache` option is served from a dogpile.cache
region by :class:`QueryCache`, which listens to ``do_orm_execute``: on a hit
the cached result is returned and *no SQL is emitted*; on a miss the
statement runs, and its frozen result is stored before being returned.

:class:`RelationshipCache` does the same for the lazy loads of chosen
relationships (a many-to-one such as ``Address.postal_code``), so related
objects come from a region shared by all sessions instead of the database.

Keys are derived from the statement's SQL and its bound parameter values, so
two statements of the same shape with the same values share a key in any
process. Turning a statement into SQL text is done once per statement shape
and remembered.

Identity: when a region's backend holds the session's own objects (the
session-local backend, see :mod:`sesscache.backend`) a hit returns those very
objects; a hit from any other region is merged into the session, as the
dogpile_caching example does.

Usage::

    cache = QueryCache(regions)
    cache.listen(Session)   # a Session class, sessionmaker or scoped_session
    persons = Session.scalars(
        select(Person).where(Person.name == "person 10").options(FromCache("local_session"))
    ).all()
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.region import CacheRegion
from sqlalchemy import event
from sqlalchemy.engine import FrozenResult, Result, Row
from sqlalchemy.orm import ORMExecuteState, Session, loading, scoped_session, sessionmaker
from sqlalchemy.orm.interfaces import UserDefinedOption
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import LRUCache

from sesscache import tracking
from sesscache.backend import SessionLocalBackend
from sesscache.store import Description, Hit

log = logging.getLogger(__name__)

SessionTarget = type[Session] | sessionmaker[Any] | scoped_session[Any] | Session


class FromCache(UserDefinedOption):
    """Serve the statement it is attached to from a cache region.

    ``region``: name of the region in the :class:`QueryCache`.
    ``cache_key``: a key of your own instead of the one derived from the
    statement and its parameters (useful for statements with very many
    parameters). ``expiration_time``: seconds, overriding the region's
    (-1: never expire). ``ignore_expiration``: serve an expired value rather
    than running the statement again.
    """

    propagate_to_loaders = False

    def __init__(
        self,
        region: str = "default",
        cache_key: str | None = None,
        expiration_time: float | None = None,
        ignore_expiration: bool = False,
    ) -> None:
        self.region = region
        self.cache_key = cache_key
        self.expiration_time = expiration_time
        self.ignore_expiration = ignore_expiration

    def _gen_cache_key(self, anon_map: Any, bindparams: Any) -> None:
        # Not part of SQLAlchemy's own statement cache key: a statement with
        # and without this option compiles to the same SQL.
        return None

    def __repr__(self) -> str:
        return f"FromCache({self.region!r})"


class RelationshipCache(UserDefinedOption):
    """Serve the lazy load of a relationship from a cache region.

    ``RelationshipCache(Address.postal_code, "default")`` caches the SELECT
    that loads an address's postal code. Combine several with :meth:`and_`;
    the option propagates to lazy loads, so attach it to the top-level query.
    """

    propagate_to_loaders = True

    def __init__(
        self,
        attribute: Any,
        region: str = "default",
        *,
        expiration_time: float | None = None,
    ) -> None:
        prop = attribute.property
        self._by_relationship: dict[tuple[type[Any], str], FromCache] = {
            (prop.parent.class_, prop.key): FromCache(region, expiration_time=expiration_time)
        }

    def and_(self, other: RelationshipCache) -> RelationshipCache:
        """A new option caching this option's relationships and ``other``'s."""
        combined = RelationshipCache.__new__(RelationshipCache)
        combined._by_relationship = {**self._by_relationship, **other._by_relationship}
        return combined

    def for_load(self, orm_context: ORMExecuteState) -> FromCache | None:
        """The FromCache to apply to this execution, when it lazy-loads one of ours."""
        if not orm_context.is_relationship_load:
            return None
        path = orm_context.loader_strategy_path
        if path is None or len(path) < 2:
            return None
        mapper: Any = path[-2]
        prop: Any = path[-1]
        for cls in mapper.class_.__mro__:
            option = self._by_relationship.get((cls, prop.key))
            if option is not None:
                return option
        return None

    def _gen_cache_key(self, anon_map: Any, bindparams: Any) -> None:
        return None


@dataclass(slots=True, eq=False)
class CachedResult:
    """What the hook stores: a frozen result, its description, and renderings.

    ``renderings`` holds values derived from the result by its user (such as
    the gRPC messages built from it) so a hit can skip deriving them again.
    They live and die with the entry.
    """

    frozen: FrozenResult[Any]
    description: Description
    sql_statements: int = 0
    renderings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> Description:
        return self.description

    def __getstate__(self) -> dict[str, Any]:
        # Renderings are process-local: never shipped to a shared backend.
        return {
            "frozen": self.frozen,
            "description": self.description,
            "sql_statements": self.sql_statements,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.frozen = state["frozen"]
        self.description = state["description"]
        self.sql_statements = state["sql_statements"]
        self.renderings = {}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A cache key with the SQL and parameters it was made from."""

    key: str
    statement: str
    parameters: Mapping[str, Any]


class QueryCache:
    """Serves :class:`FromCache` and :class:`RelationshipCache` options from regions.

    ``regions`` maps region names to configured dogpile.cache regions.
    ``statement_cache_size`` bounds the remembered SQL text per statement shape.
    """

    def __init__(
        self, regions: Mapping[str, CacheRegion], *, statement_cache_size: int = 1000
    ) -> None:
        self.regions = regions
        self._sql: LRUCache[Any, tuple[str, tuple[str, ...]]] = LRUCache(statement_cache_size)

    def listen(self, target: SessionTarget) -> None:
        """Install the hook on a Session class, sessionmaker or scoped_session."""
        event.listen(target, "do_orm_execute", self._do_orm_execute)

    def region(self, name: str) -> CacheRegion:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ValueError(f"no cache region named {name!r} (known: {known})") from None

    def key_for(
        self, statement: ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> KeyInfo:
        """The cache key of ``statement`` executed with ``parameters``."""
        cache_key = statement._generate_cache_key()
        if cache_key is None:
            raise ValueError(f"statement cannot be cached: {statement}")
        shape = self._sql.get(cache_key.key)
        if shape is None:
            compiled = cast(SQLCompiler, statement.compile())
            names = tuple(
                compiled.bind_names.get(bind, str(bind.key)) for bind in cache_key.bindparams
            )
            shape = (str(compiled), names)
            self._sql[cache_key.key] = shape
        sql, names = shape
        params = parameters or {}
        values = tuple(params.get(bind.key, bind.effective_value) for bind in cache_key.bindparams)
        if not cache_key.bindparams and params:
            names = tuple(sorted(params))
            values = tuple(params[name] for name in names)
        return KeyInfo(f"{sql} {values!r}", sql, dict(zip(names, values, strict=True)))

    def invalidate(
        self,
        statement: ClauseElement,
        option: FromCache,
        parameters: Mapping[str, Any] | None = None,
    ) -> str:
        """Remove the cached result of ``statement`` under ``option``; return its key."""
        key = option.cache_key or self.key_for(statement, parameters).key
        self.region(option.region).delete(key)
        return key

    # -- the hook -------------------------------------------------------------

    def _do_orm_execute(self, orm_context: ORMExecuteState) -> Result[Any] | None:
        for option in orm_context.user_defined_options:
            if isinstance(option, RelationshipCache):
                from_cache = option.for_load(orm_context)
                if from_cache is not None:
                    return self._serve(orm_context, from_cache)
            elif isinstance(option, FromCache):
                return self._serve(orm_context, option)
        return None

    def _serve(self, orm_context: ORMExecuteState, option: FromCache) -> Result[Any]:
        region = self.region(option.region)
        statement = cast(ClauseElement, orm_context.statement)
        parameters = orm_context.parameters
        info = self.key_for(statement, parameters if isinstance(parameters, Mapping) else None)
        key = option.cache_key or info.key
        created: list[CachedResult] = []

        def create() -> CachedResult:
            tracker = tracking.current()
            before = tracker.sql_statements if tracker else 0
            frozen = orm_context.invoke_statement().freeze()
            expiration = option.expiration_time
            if expiration is None:
                expiration = region.expiration_time
            mapper = orm_context.bind_mapper
            payload = CachedResult(
                frozen,
                Description(
                    rows=len(frozen.data),
                    statement=info.statement,
                    parameters=info.parameters,
                    entity=mapper.class_.__name__ if mapper is not None else "",
                    size=approximate_size(frozen.data),
                    expiration_time=expiration,
                ),
                sql_statements=(tracker.sql_statements - before) if tracker else 0,
            )
            created.append(payload)
            return payload

        backend = region.backend
        if isinstance(backend, SessionLocalBackend):
            # The session's own store, with no dogpile lock (its calls run one
            # at a time) and no region in between: look up, and store on a miss.
            store = backend.store()
            found = store.lookup(key, expire=not option.ignore_expiration)
            if isinstance(found, Hit):
                payload = cast(CachedResult, found.entry.value.payload)
            else:
                payload = create()
                store.put(key, CachedValue(payload, {"ct": time.time(), "v": 2}), option.region)
        else:
            shared = self._serve_shared(option, region, key, create, created)
            if isinstance(shared, Result):
                return shared
            payload = shared

        outcome = tracking.Outcome.MISS if created else tracking.Outcome.HIT
        tracking.record_lookup(option.region, key, outcome, payload.description.rows)
        if created or isinstance(backend, SessionLocalBackend):
            # The rows are this session's own objects: no merge needed.
            return payload.frozen()
        merged: FrozenResult[Any] = loading.merge_frozen_result(  # type: ignore[no-untyped-call]
            orm_context.session, orm_context.statement, payload.frozen, load=False
        )
        return merged()

    def _serve_shared(
        self,
        option: FromCache,
        region: CacheRegion,
        key: str,
        create: Callable[[], CachedResult],
        created: list[CachedResult],
    ) -> CachedResult | Result[Any]:
        """Look up or create in a region shared by sessions, under dogpile's lock.

        A shared cache that fails (Redis down, say) must not fail the query:
        the statement's result is returned uncached instead.
        """
        running = False

        def guarded_create() -> CachedResult:
            nonlocal running
            running = True
            payload = create()
            running = False
            return payload

        try:
            if option.ignore_expiration:
                payload = region.get(
                    key, expiration_time=option.expiration_time, ignore_expiration=True
                )
                if payload is NO_VALUE:
                    payload = guarded_create()
                    region.set(key, payload)
            else:
                payload = region.get_or_create(
                    key, guarded_create, expiration_time=option.expiration_time
                )
        except Exception as error:
            if running:
                raise  # the statement failed, not the cache
            log.warning("cache region %r failed (%s); querying uncached", option.region, error)
            payload = created[0] if created else create()
            tracking.record_lookup(
                option.region, key, tracking.Outcome.BYPASS, len(payload.frozen.data)
            )
            return payload.frozen()
        return payload


def approximate_size(rows: Iterable[Any]) -> int:
    """A cheap estimate of the memory a list of ORM rows holds, in bytes.

    Counts each object of each row: its instance state and attribute
    dictionary, its strings and numbers, and one level into loaded
    collections (a Person's addresses). Cheap by design: it runs on every
    store, so it estimates from lengths rather than measuring each object.
    """
    total = 0
    for row in rows:
        # Single-entity ORM results freeze to the objects themselves.
        if isinstance(row, Row):
            total += _ROW_OVERHEAD
            for obj in row:
                total += _object_size(obj, 1)
        else:
            total += _object_size(row, 1)
    return total


# Fixed costs, measured with sys.getsizeof on CPython 3.11: an ORM instance
# with its InstanceState and attribute dictionary; a str; a number; a row.
_INSTANCE_OVERHEAD = 600
_SLOT = 40
_STR_OVERHEAD = 49
_NUMBER = 28
_ROW_OVERHEAD = 80


def _object_size(obj: Any, depth: int) -> int:
    attributes = getattr(obj, "__dict__", None)
    if attributes is None:
        return sys.getsizeof(obj)
    size = _INSTANCE_OVERHEAD + _SLOT * len(attributes)
    for value in attributes.values():
        kind = type(value)
        if kind is str:
            size += _STR_OVERHEAD + len(value)
        elif kind is int or kind is float:
            size += _NUMBER
        elif depth and kind is list:
            size += _SLOT * len(value) + sum(_object_size(item, depth - 1) for item in value)
    return size
