"""A reusable test suite for dogpile.cache backends, in dogpile.cache's own style.

:class:`BackendSuite` exercises the whole ``CacheBackend`` contract through a
real :class:`dogpile.cache.region.CacheRegion`: ``get`` / ``set`` / ``delete``
and their ``*_multi`` forms, missing keys giving ``NO_VALUE``, overwriting,
falsy values, ``get_or_create`` / ``get_or_create_multi``, expiration and
region invalidation, and whether values come back as the very objects stored.

A backend's test module subclasses it (as ``TestSomethingBackend``) and
implements :meth:`BackendSuite.make_region`; backends that must be used in a
context (the session-local backend needs a session scope) enter it in an
autouse fixture of the subclass. The suite itself is never collected: its name
does not start with ``Test``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.region import CacheRegion


def get_multi(region: CacheRegion, keys: Sequence[str]) -> list[Any]:
    """``region.get_multi`` (untyped in dogpile.cache), typed."""
    found: list[Any] = region.get_multi(keys)  # type: ignore[no-untyped-call]
    return found


@dataclass
class Payload:
    """A cached value: equal by content, so identity can be told apart from equality."""

    name: str
    numbers: list[int] = field(default_factory=list)


class BackendSuite(abc.ABC):
    """The generic backend tests; subclass and implement :meth:`make_region`."""

    #: Whether the backend hands back the very objects stored (no serialization).
    stores_unserialized: ClassVar[bool] = False

    @abc.abstractmethod
    def make_region(self) -> CacheRegion:
        """A freshly configured, empty region on the backend under test, without expiry."""

    @pytest.fixture
    def region(self) -> CacheRegion:
        return self.make_region()

    def backend_key(self, region: CacheRegion, key: str) -> str:
        """The key the backend sees for region key ``key``."""
        mangler = region.key_mangler
        return str(mangler(key)) if mangler is not None else key

    def keeps_identity(self, region: CacheRegion) -> bool:
        return self.stores_unserialized

    # -- single keys -----------------------------------------------------------

    def test_missing_key_is_no_value(self, region: CacheRegion) -> None:
        assert region.get("missing") is NO_VALUE
        assert region.backend.get(self.backend_key(region, "missing")) is NO_VALUE

    def test_set_then_get(self, region: CacheRegion) -> None:
        region.set("k", Payload("one", [1]))
        assert region.get("k") == Payload("one", [1])
        assert region.get("other") is NO_VALUE

    def test_set_overwrites(self, region: CacheRegion) -> None:
        region.set("k", Payload("first"))
        region.set("k", Payload("second"))
        assert region.get("k") == Payload("second")

    @pytest.mark.parametrize("value", [None, 0, "", [], False])
    def test_falsy_values_are_values(self, region: CacheRegion, value: object) -> None:
        region.set("k", value)
        got = region.get("k")
        assert got is not NO_VALUE
        assert got == value
        assert type(got) is type(value)

    def test_delete_removes_only_that_key(self, region: CacheRegion) -> None:
        region.set("a", Payload("a"))
        region.set("b", Payload("b"))
        region.delete("a")
        assert region.get("a") is NO_VALUE
        assert region.get("b") == Payload("b")
        region.delete("a")  # deleting a missing key is not an error
        region.delete("never-set")
        assert region.get("b") == Payload("b")

    def test_backend_stores_cached_values_with_metadata(self, region: CacheRegion) -> None:
        before = time.time()
        region.set("k", Payload("meta"))
        raw = region.backend.get(self.backend_key(region, "k"))
        assert raw is not NO_VALUE
        if region.serializer is None:
            assert isinstance(raw, CachedValue)
            assert raw.payload == Payload("meta")
            assert before <= raw.metadata["ct"] <= time.time()
        else:
            assert isinstance(raw, bytes)

    # -- many keys -------------------------------------------------------------

    def test_get_multi_keeps_order_and_gives_no_value_for_missing(
        self, region: CacheRegion
    ) -> None:
        region.set("a", Payload("a"))
        region.set("c", Payload("c"))
        got = get_multi(region, ["c", "missing", "a", "also-missing"])
        assert got == [Payload("c"), NO_VALUE, Payload("a"), NO_VALUE]
        assert got[1] is NO_VALUE
        assert get_multi(region, []) == []

    def test_set_multi_then_get(self, region: CacheRegion) -> None:
        values = {f"key-{i}": Payload(f"value-{i}", [i]) for i in range(50)}
        region.set_multi(values)
        for key, value in values.items():
            assert region.get(key) == value
        assert get_multi(region, list(values)) == list(values.values())

    def test_set_multi_overwrites(self, region: CacheRegion) -> None:
        region.set("a", Payload("old"))
        region.set_multi({"a": Payload("new"), "b": Payload("b")})
        assert get_multi(region, ["a", "b"]) == [Payload("new"), Payload("b")]

    def test_delete_multi_removes_exactly_those_keys(self, region: CacheRegion) -> None:
        region.set_multi({f"key-{i}": Payload(str(i)) for i in range(10)})
        region.delete_multi(["key-1", "key-3", "missing"])
        got = get_multi(region, [f"key-{i}" for i in range(10)])
        gone = {i for i, value in enumerate(got) if value is NO_VALUE}
        assert gone == {1, 3}
        assert got[0] == Payload("0")

    def test_backend_multi_methods_directly(self, region: CacheRegion) -> None:
        backend = region.backend
        region.set_multi({"x": Payload("x"), "y": Payload("y")})
        keys = [self.backend_key(region, k) for k in ("x", "missing", "y")]
        found = backend.get_multi(keys)
        assert len(found) == 3
        assert found[0] is not NO_VALUE
        assert found[1] is NO_VALUE
        assert found[2] is not NO_VALUE
        backend.delete_multi([keys[0], keys[1]])
        assert backend.get_multi(keys)[0] is NO_VALUE
        assert region.get("x") is NO_VALUE
        assert region.get("y") == Payload("y")

    # -- creation, expiry, invalidation ----------------------------------------

    def test_get_or_create_creates_once(self, region: CacheRegion) -> None:
        calls: list[str] = []

        def create() -> Payload:
            calls.append("create")
            return Payload("created", [len(calls)])

        first = region.get_or_create("k", create)
        second = region.get_or_create("k", create)
        assert calls == ["create"]
        assert first == second == Payload("created", [1])
        assert region.get("k") == first

    def test_get_or_create_multi_creates_only_missing(self, region: CacheRegion) -> None:
        region.set("b", Payload("cached-b"))
        asked: list[tuple[str, ...]] = []

        def create(*keys: str) -> list[Payload]:
            asked.append(keys)
            return [Payload(f"made-{key}") for key in keys]

        got = region.get_or_create_multi(["a", "b", "c"], create)
        assert got == [Payload("made-a"), Payload("cached-b"), Payload("made-c")]
        assert asked == [("a", "c")]
        assert get_multi(region, ["a", "c"]) == [Payload("made-a"), Payload("made-c")]

    def test_expired_values_are_regenerated_unless_expiry_ignored(
        self, region: CacheRegion
    ) -> None:
        region.set("k", Payload("old"))
        time.sleep(0.02)
        assert region.get("k", expiration_time=0.005) is NO_VALUE
        assert region.get("k", expiration_time=0.005, ignore_expiration=True) == Payload("old")
        assert region.get("k") == Payload("old")  # the region itself has no expiry
        made = region.get_or_create("k", lambda: Payload("new"), expiration_time=0.005)
        assert made == Payload("new")
        assert region.get("k") == Payload("new")

    def test_hard_invalidation_hides_existing_values(self, region: CacheRegion) -> None:
        region.set("k", Payload("before"))
        time.sleep(0.01)  # invalidation compares creation times
        region.invalidate(hard=True)  # type: ignore[no-untyped-call]
        assert region.get("k") is NO_VALUE
        assert region.get_or_create("k", lambda: Payload("after")) == Payload("after")

    # -- identity ----------------------------------------------------------------

    def test_values_unserialized_keep_identity(self, region: CacheRegion) -> None:
        stored = Payload("identity", [1, 2, 3])
        region.set("k", stored)
        region.set_multi({"m": stored})
        got = region.get("k")
        got_multi = get_multi(region, ["m"])[0]
        assert got == stored
        assert got_multi == stored
        if self.keeps_identity(region):
            assert region.serializer is None
            assert got is stored
            assert got_multi is stored
            stored.numbers.append(4)  # the cache holds the object itself
            assert region.get("k") == Payload("identity", [1, 2, 3, 4])
        else:
            assert got is not stored
            assert got_multi is not stored

    def test_many_keys_stay_independent(self, region: CacheRegion) -> None:
        region.set_multi({f"key-{i}": i for i in range(200)})
        region.delete_multi([f"key-{i}" for i in range(0, 200, 2)])
        got = get_multi(region, [f"key-{i}" for i in range(200)])
        assert [v for v in got if v is not NO_VALUE] == list(range(1, 200, 2))
