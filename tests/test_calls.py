"""The call wrapper's access log: batched, never failing a call, nothing lost at the end."""

from __future__ import annotations

import io
import logging

import pytest

from sesscache.store import REMOVAL_SIZE, RemovalReason, SessionStore
from sesscache_server.calls import AccessLog, CallRecord


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("stderr went away")


def test_a_broken_stream_drops_lines_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sesscache.access")
    access = AccessLog(stream=Broken())
    access.add(CallRecord("QueryPersons"), "OK", 0.001)
    access.flush()  # no exception
    access.add(CallRecord("QueryPersons"), "OK", 0.001)
    access.close()
    assert access.failed_batches == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "access log lines dropped (stderr went away); counting, not repeating"
    ]


def test_lines_are_written_in_one_batch_and_at_once_once_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sesscache.access")
    stream = io.StringIO()
    observed: list[tuple[str, str, str, float]] = []
    access = AccessLog(stream=stream, observe=lambda *call: observed.append(call))
    record = CallRecord("QueryPersons", session="s1", cache_status="HIT")
    access.add(record, "OK", 0.0012)
    assert stream.getvalue() == ""  # batched
    access.flush()
    line = stream.getvalue()
    assert line.endswith(
        " INFO sesscache.access: QueryPersons session=s1 status=OK cache=HIT duration_ms=1.20\n"
    )
    access.close()
    access.add(CallRecord("EndSession"), "CANCELLED", 0.5)  # after the end: written at once
    assert (
        stream.getvalue()
        .splitlines()[-1]
        .endswith("EndSession session=- status=CANCELLED cache=- duration_ms=500.00")
    )
    assert [call[:3] for call in observed] == [
        ("QueryPersons", "OK", "HIT"),
        ("EndSession", "CANCELLED", "-"),
    ]


def test_a_detached_store_leaves_the_totals_at_once() -> None:
    changes: list[tuple[int, int]] = []
    store = SessionStore(max_entries=1, on_size=lambda n, size: changes.append((n, size)))
    from tests.test_backend import value

    store.put("a", value("a"), "r")
    store.put("b", value("b"), "r")  # a is evicted: one removal on record
    entries = sum(n for n, _ in changes)
    size = sum(s for _, s in changes)
    assert entries == 1
    assert size == store.bytes + REMOVAL_SIZE
    store.detach()
    assert sum(n for n, _ in changes) == 0
    assert sum(s for _, s in changes) == 0
    store.clear(RemovalReason.SESSION_ENDED)  # later, in the closer: counted once only
    assert sum(s for _, s in changes) == 0
