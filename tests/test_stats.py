"""The counters are listed once (sesscache.stats.COUNTERS); everything else has them."""

from __future__ import annotations

from dataclasses import fields

from sesscache.stats import COUNTERS, FIELDS, Counters, Counts, Snapshot
from sesscache.v1 import sesscache_pb2 as pb


def test_every_place_has_the_counters_of_the_one_list() -> None:
    assert tuple(COUNTERS) == FIELDS
    assert tuple(f.name for f in fields(Counts)) == FIELDS
    assert issubclass(Snapshot, Counts)
    assert issubclass(Counters, Counts)
    wire = {f.name for f in pb.CacheStats.DESCRIPTOR.fields}
    assert set(FIELDS) <= wire


def test_counters_count_and_reset() -> None:
    counters = Counters()
    counters.add(hits=2, misses=1)
    assert counters.snapshot().hit_ratio == 2 / 3
    before = counters.reset()
    assert (before.hits, counters.snapshot().hits, counters.totals().hits) == (2, 0, 2)


def test_every_removal_reason_has_its_counter_and_event() -> None:
    from sesscache.events import REMOVAL_EVENTS
    from sesscache.stats import REMOVAL_COUNTERS
    from sesscache.store import MISS_REASON_OF, RemovalReason

    assert set(REMOVAL_COUNTERS) == set(RemovalReason)
    assert set(REMOVAL_EVENTS) == set(RemovalReason)
    assert set(MISS_REASON_OF) == set(RemovalReason)
