"""The session-local dogpile.cache backend and its store.

Shows that :class:`sesscache.backend.SessionLocalBackend` passes the generic
backend suite (:mod:`tests.backend_suite`, which the shared
:class:`sesscache.backend.SharedMemoryBackend` and dogpile's own memory
backends pass too, showing the suite is generic), that it is registered as
``sesscache.session_local``, keeps one store per session scope and stores
values unserialized; and that :class:`sesscache.backend.SessionStore` keeps
least-recently-used order, evicts beyond ``max_entries`` / ``max_bytes`` and
counts it, expires entries and counts them, pages in stored order at a cost
independent of the position, and that ``peek`` (unlike ``get``) never counts
as an access.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.region import CacheRegion
from sqlalchemy.orm import Session, sessionmaker

from sesscache.backend import (
    BACKEND_NAME,
    SHARED_BACKEND_NAME,
    STORE_INFO_KEY,
    SessionLocalBackend,
    register_backend,
    store_for,
)
from sesscache.registry import SessionRegistry
from sesscache.store import (
    REMOVALS_KEPT,
    Description,
    Entry,
    Hit,
    Miss,
    MissReason,
    Removal,
    RemovalReason,
    SessionStore,
    digest_of,
    entry_size,
)

# Assertions in the shared suite get pytest's detailed messages too.
pytest.register_assert_rewrite("tests.backend_suite")

from tests.backend_suite import BackendSuite, Payload, get_multi  # noqa: E402

SCOPE = ("", "suite")


@pytest.fixture
def registry() -> Iterator[SessionRegistry]:
    """A registry of unbound Sessions: the backend never needs a database."""
    registry = SessionRegistry(sessionmaker())
    yield registry
    registry.close_all()


def local_region(registry: SessionRegistry, **arguments: object) -> CacheRegion:
    register_backend()
    return make_region().configure(
        BACKEND_NAME, arguments={"scoped_session": registry.current_session, **arguments}
    )


# -- the generic suite --------------------------------------------------------------


class TestSessionLocalBackend(BackendSuite):
    """The session-local backend, used inside one session scope."""

    stores_unserialized = True

    registry: SessionRegistry

    @pytest.fixture(autouse=True)
    def _in_scope(self, registry: SessionRegistry) -> Iterator[None]:
        self.registry = registry
        with registry.scope(SCOPE):
            yield

    def make_region(self) -> CacheRegion:
        return local_region(self.registry)


class TestSharedMemoryBackend(BackendSuite):
    """sesscache's shared in-process backend: values pickled, so copies."""

    def make_region(self) -> CacheRegion:
        register_backend()
        return make_region().configure(SHARED_BACKEND_NAME)


class TestMemoryBackend(BackendSuite):
    """dogpile's plain memory backend: values kept as they are."""

    stores_unserialized = True

    def make_region(self) -> CacheRegion:
        return make_region().configure("dogpile.cache.memory")


class TestMemoryPickleBackend(BackendSuite):
    """dogpile's pickling memory backend: values come back as copies."""

    def make_region(self) -> CacheRegion:
        return make_region().configure("dogpile.cache.memory_pickle")


# -- the session-local backend ---------------------------------------------------------


def test_registered_under_its_name(registry: SessionRegistry) -> None:
    register_backend()
    register_backend()  # idempotent
    region = make_region().configure(
        "sesscache.session_local", arguments={"scoped_session": registry.current_session}
    )
    assert BACKEND_NAME == "sesscache.session_local"
    assert type(region.backend) is SessionLocalBackend
    assert region.serializer is None
    with registry.scope(SCOPE) as session:
        region.set("k", "v")
        store = store_for(session)
        assert store is not None
        entry = store.peek("k")
        assert entry is not None
        assert entry.region == "local_session"  # the default region name


def test_region_name_is_recorded_on_entries(registry: SessionRegistry) -> None:
    region = local_region(registry, region_name="mine")
    with registry.scope(SCOPE) as session:
        region.set("k", "v")
        store = store_for(session)
        assert store is not None
        entry = store.peek("k")
        assert entry is not None
        assert entry.region == "mine"
        assert entry.digest == digest_of("k")
        assert len(entry.digest) == 12


def test_refuses_a_serializer(registry: SessionRegistry) -> None:
    register_backend()
    region = make_region(serializer=pickle.dumps, deserializer=pickle.loads).configure(
        BACKEND_NAME, arguments={"scoped_session": registry.current_session}
    )
    with registry.scope(SCOPE), pytest.raises(TypeError, match="unserialized"):
        region.set("k", "v")
    with registry.scope(SCOPE), pytest.raises(TypeError, match="unserialized"):
        region.set_multi({"k": "v"})


def test_each_scope_has_its_own_store(registry: SessionRegistry) -> None:
    region = local_region(registry)
    with registry.scope(("", "one")) as one:
        region.set("k", Payload("one"))
        store_one = region.backend.store()
        assert store_one is store_for(one)
    with registry.scope(("", "two")) as two:
        assert two is not one
        assert region.get("k") is NO_VALUE
        region.set("k", Payload("two"))
        store_two = region.backend.store()
        assert store_two is store_for(two)
    assert store_one is not store_two
    with registry.scope(("", "one")) as again:
        assert again is one
        assert region.get("k") == Payload("one")
    # A different principal with the same session id is a different scope.
    with registry.scope(("someone", "one")):
        assert region.get("k") is NO_VALUE
    assert store_one is not None
    assert store_two is not None
    assert len(store_one) == len(store_two) == 1


def test_removing_the_session_drops_its_store(registry: SessionRegistry) -> None:
    region = local_region(registry)
    with registry.scope(SCOPE) as session:
        region.set("k", Payload("v"))
        store = store_for(session)
        registry.scoped.remove()
    with registry.scope(SCOPE) as fresh:
        assert fresh is not session
        assert store_for(fresh) is not store
        assert region.get("k") is NO_VALUE


def test_store_made_on_first_use_for_any_session() -> None:
    with Session() as session:
        region = make_region().configure(
            BACKEND_NAME, arguments={"scoped_session": lambda: session}
        )
        assert store_for(session, create=False) is None
        region.set("k", 1)
        store = session.info[STORE_INFO_KEY]
        assert isinstance(store, SessionStore)
        assert "k" in store
        assert region.get("k") == 1


def test_region_reads_count_hits_and_entries_describe_payloads(
    registry: SessionRegistry,
) -> None:
    region = local_region(registry)
    with registry.scope(SCOPE) as session:
        region.set("k", Described(Description(rows=3, statement="SELECT 1", expiration_time=60)))
        store = store_for(session)
        assert store is not None
        entry = store.peek("k")
        assert entry is not None
        assert (entry.rows, entry.description.statement, entry.hits) == (3, "SELECT 1", 0)
        assert entry.expires_at == pytest.approx(entry.stored_at + 60)
        region.get("k")
        get_multi(region, ["k", "missing"])
        assert entry.hits == 2


# -- the store --------------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """A payload describing itself, as :class:`sesscache.caching.CachedResult` does."""

    description: Description

    def describe(self) -> Description:
        return self.description


def value(payload: object = "x", *, ct: float | None = None) -> CachedValue:
    return CachedValue(payload, {"ct": time.time() if ct is None else ct, "v": 1})


def sized(size: int) -> CachedValue:
    return value(Described(Description(size=size)))


def expiring(expiration_time: float | None, *, ct: float) -> CachedValue:
    return value(Described(Description(expiration_time=expiration_time)), ct=ct)


def keys(entries: list[Entry]) -> list[str]:
    return [entry.key for entry in entries]


def seq_of(store: SessionStore, key: str) -> int:
    entry = store.peek(key)
    assert entry is not None
    return entry.seq


class Removals:
    """Records the store's removal notifications."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, entry: Entry, removal: Removal) -> None:
        self.seen.append((entry.key, removal.reason.value))


def test_get_refreshes_recency_for_eviction() -> None:
    removals = Removals()
    store = SessionStore(max_entries=3, on_removal=removals)
    for key in "abc":
        store.put(key, value(key), "r")
    assert isinstance(store.lookup("a"), Hit)  # a is now the most recently used
    store.put("d", value("d"), "r")
    assert sorted(e.key for e in store) == ["a", "c", "d"]
    assert removals.seen == [("b", "evicted")]
    assert store.evictions == 1
    store.put("e", value("e"), "r")  # c is now the least recently used
    assert "c" not in store
    assert removals.seen == [("b", "evicted"), ("c", "evicted")]
    assert store.evictions == 2


def test_storing_a_key_again_refreshes_it() -> None:
    store = SessionStore(max_entries=3)
    for key in "abc":
        store.put(key, value(key), "r")
    store.put("a", value("a2"), "r")
    store.put("d", value("d"), "r")
    assert "b" not in store
    assert "a" in store
    entry = store.peek("a")
    assert entry is not None
    assert entry.value.payload == "a2"
    assert len(store) == 3


def test_max_entries_evicts_oldest_and_counts() -> None:
    store = SessionStore(max_entries=2)
    for i in range(5):
        store.put(f"k{i}", value(i), "r")
    assert len(store) == 2
    assert keys(list(store)) == ["k3", "k4"]
    assert store.evictions == 3
    assert store.expirations == 0


#: What an entry with a one-character key costs beyond its rows.
BASE = entry_size("a", Description())


def test_max_bytes_evicts_and_counts() -> None:
    removals = Removals()
    store = SessionStore(max_bytes=2 * BASE + 100, on_removal=removals)
    store.put("a", sized(40), "r")
    store.put("b", sized(40), "r")
    assert (store.bytes, store.evictions) == (2 * BASE + 80, 0)
    store.put("c", sized(40), "r")
    assert keys(list(store)) == ["b", "c"]
    assert (store.bytes, store.evictions) == (2 * BASE + 80, 1)
    store.put("d", sized(90), "r")  # both older entries must go
    assert keys(list(store)) == ["d"]
    assert (store.bytes, store.evictions) == (BASE + 90, 3)
    # An entry larger than the whole budget is still kept, alone.
    store.put("h", sized(3 * BASE), "r")
    assert keys(list(store)) == ["h"]
    assert (store.bytes, store.evictions) == (4 * BASE, 4)
    assert removals.seen == [(k, "evicted") for k in ("a", "b", "c", "d")]


def test_keys_and_parameters_count_towards_the_byte_limit() -> None:
    """Zero-row entries under long keys (a query with 1,000 ids) fill a budget too."""
    store = SessionStore(max_bytes=64 * 1024)
    ids = tuple(range(1, 1001))
    for number in range(1000):
        description = Description(rows=0, statement="SELECT ...", parameters={"ids": ids})
        store.put(f"{number:06d}" + "x" * 12_000, value(Described(description)), "r")
    assert store.evictions > 900
    assert store.bytes <= 64 * 1024 + entry_size("k" * 12_006, description)
    assert all(entry.size > 12_000 + 1000 * 36 for entry in store)


def test_growing_an_entry_counts_and_evicts() -> None:
    totals: list[tuple[int, int]] = []
    store = SessionStore(
        max_bytes=2 * BASE + 100, on_size=lambda entries, size: totals.append((entries, size))
    )
    a = store.put("a", sized(10), "r")
    store.put("b", sized(10), "r")
    store.grow(a, 50)  # a rendering kept with "a"
    assert store.bytes == 2 * BASE + 70
    store.grow(store.peek("b") or a, 60)  # now over: "a", least recently used, goes
    assert keys(list(store)) == ["b"]
    assert sum(size for _, size in totals) == store.bytes + store.removals_size
    assert sum(entries for entries, _ in totals) == len(store)


def test_bytes_follow_replacement_delete_and_clear() -> None:
    store = SessionStore()
    store.put("a", sized(10), "r")
    store.put("a", sized(25), "r")
    store.put("b", sized(5), "r")
    assert store.bytes == 2 * BASE + 30
    deleted = store.remove("a", RemovalReason.INVALIDATED)
    assert deleted is not None
    assert deleted.size == BASE + 25
    assert store.bytes == BASE + 5
    assert store.remove("a", RemovalReason.INVALIDATED) is None
    assert keys(store.clear(RemovalReason.INVALIDATED)) == ["b"]
    assert (store.bytes, len(store), store.evictions) == (0, 0, 0)


def test_expire_drops_expired_entries_and_counts_them() -> None:
    removals = Removals()
    store = SessionStore(on_removal=removals)
    store.put("ten", expiring(10, ct=1000.0), "r")
    store.put("twenty", expiring(20, ct=1000.0), "r")
    store.put("never", expiring(None, ct=1000.0), "r")
    store.put("never-either", expiring(-1, ct=1000.0), "r")
    store.put("plain", value("no description", ct=1000.0), "r")
    ten = store.peek("ten")
    assert ten is not None
    assert ten.expires_at == 1010.0
    assert ten.expires_in(now=1004.0) == 6.0
    assert ten.expires_in(now=1015.0) == -5.0
    never = store.peek("never")
    assert never is not None
    assert never.expires_in() is None

    assert store.expire(now=1009.0) == []
    assert keys(store.expire(now=1010.0)) == ["ten"]
    assert store.expirations == 1
    assert "ten" not in store
    # Without ``now`` the clock is the real one, long past 1020.
    assert keys(store.expire()) == ["twenty"]
    assert store.expirations == 2
    assert sorted(e.key for e in store) == ["never", "never-either", "plain"]
    assert removals.seen == [("ten", "expired"), ("twenty", "expired")]
    assert store.evictions == 0


def test_entries_iterate_in_stored_order() -> None:
    store = SessionStore()
    for i in range(10):
        store.put(f"k{i}", value(i), "r")
    store.remove("k3", RemovalReason.INVALIDATED)
    store.put("k1", value("again"), "r")  # stored again: moves to the end
    assert keys(list(store)) == ["k0", "k2", "k4", "k5", "k6", "k7", "k8", "k9", "k1"]
    # Iterating is inspection: no hits are counted.
    assert all(entry.hits == 0 for entry in store)


def test_a_miss_says_why() -> None:
    store = SessionStore(max_entries=2)
    assert store.lookup("a") == Miss(MissReason.NEW_SESSION)
    store.put("a", expiring(10, ct=time.time() - 60), "r")  # already expired
    store.put("b", value("b"), "r")
    assert store.lookup("nope") == Miss(MissReason.NEVER_STORED)
    expired = store.lookup("a")
    assert isinstance(expired, Miss)
    assert expired.reason is MissReason.EXPIRED
    assert expired.removal is not None
    assert "a" not in store
    store.put("c", value("c"), "r")
    store.put("d", value("d"), "r")  # b is evicted
    evicted = store.lookup("b")
    assert isinstance(evicted, Miss)
    assert evicted.reason is MissReason.EVICTED
    store.remove("c", RemovalReason.CHANGED, change=42, detail="person 10")
    changed = store.lookup("c")
    assert isinstance(changed, Miss)
    assert changed.removal is not None
    assert changed.removal == Removal(RemovalReason.CHANGED, changed.removal.at, 42, "person 10")
    store.clear(RemovalReason.INVALIDATED)
    assert store.lookup("d").reason is MissReason.INVALIDATED  # type: ignore[union-attr]
    # Stored again: a hit, and the removal on record no longer matters.
    store.put("d", value("d"), "r")
    assert isinstance(store.lookup("d"), Hit)


def test_the_record_of_removals_is_bounded() -> None:
    store = SessionStore(max_entries=1)
    for i in range(REMOVALS_KEPT * 3):
        store.put(f"k{i}", value(i), "r")
    assert len(store.removals) == REMOVALS_KEPT
    assert store.lookup("k0") == Miss(MissReason.NEVER_STORED)
    last = store.lookup(f"k{REMOVALS_KEPT * 3 - 2}")
    assert isinstance(last, Miss)
    assert last.reason is MissReason.EVICTED


def test_peek_never_counts_an_access_but_lookup_does() -> None:
    store = SessionStore(max_entries=2)
    store.put("a", value("a", ct=100.0), "r")
    store.put("b", value("b", ct=100.0), "r")
    peeked = store.peek("a")
    assert peeked is not None
    assert (peeked.hits, peeked.last_access) == (0, 100.0)
    store.put("c", value("c"), "r")  # peek did not refresh a: it is evicted
    assert "a" not in store
    assert store.peek("missing") is None

    found = store.lookup("b")
    assert isinstance(found, Hit)
    got = found.entry
    assert got.hits == 1
    assert got.last_access > 100.0
    store.put("d", value("d"), "r")  # get refreshed b: c goes instead
    assert sorted(e.key for e in store) == ["b", "d"]
    assert isinstance(store.lookup("missing"), Miss)
    b = store.peek("b")
    assert b is not None
    assert b.hits == 1
