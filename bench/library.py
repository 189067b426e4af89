"""The in-process library benchmark: sesscache's caching without gRPC.

Sets up what :func:`sesscache_server.app.start` sets up (engine, session registry,
the two regions, the ``QueryCache`` hook on the sessionmaker) on a seeded
SQLite file, opens one session scope and times ``session.execute(statement)
.unique().scalars().all()`` (what the server runs) for a 1-row statement
(``name = "person 10"``) and a 50-row page (names ``person 01`` to
``person 50``, page size 50), each in three ways:

``hit``
    The statement with ``FromCache``, its result already in the session
    cache: no SQL.
``uncached``
    The same statement without the cache options (``PersonQuery.statement(
    cached=False)``), executed in the same session whose identity map already
    holds the objects, with the transaction (and so the connection) kept open
    between calls: the cheapest uncached execution there is, so the hit's
    speed-up is not flattered.
``miss_store``
    The ``FromCache`` statement after its entry was invalidated (outside the
    timed call): the statement runs, its result is frozen and stored.

Cases run interleaved in blocks (hit, uncached, miss, hit, ...) so a drift
of the machine affects them alike; each call is timed with
``time.perf_counter_ns`` and the median per call is reported.

``python -m bench.library [--seconds S] [--persons N]`` prints the table.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: (label, PersonQuery keyword arguments) of the two statements timed.
STATEMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("1row", {"name": "person 10"}),
    ("50row", {"first": "person 01", "last": "person 50", "limit": 50}),
)
MODES = ("hit", "uncached", "miss_store")
BLOCKS = 5


@dataclass(frozen=True, slots=True)
class Case:
    """The timings of one case, e.g. ``hit_1row``."""

    name: str
    rows: int
    iterations: int
    median_us: float
    p10_us: float
    p90_us: float


@dataclass(frozen=True, slots=True)
class LibraryResults:
    """Every case, and the ratios the targets are about."""

    cases: list[Case]
    #: uncached median / hit median, per statement label.
    hit_speedup: dict[str, float]
    #: miss_store median / uncached median, per statement label.
    miss_cost: dict[str, float]
    persons: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run(
    database_url: str, *, seconds_per_case: float = 1.0, persons: int = 10_000
) -> LibraryResults:
    """Set up the library on ``database_url`` (seeding it) and time every case."""
    from sqlalchemy.orm import sessionmaker

    from sesscache import db
    from sesscache.caching import FromCache, QueryCache
    from sesscache.queries import PersonQuery
    from sesscache.regions import LOCAL_REGION, RegionSettings, make_regions
    from sesscache.registry import Limits, SessionRegistry

    engine = db.make_engine(database_url)
    try:
        db.prepare_database(engine, persons=persons)
        factory = sessionmaker(engine, expire_on_commit=False, autoflush=False)
        registry = SessionRegistry(factory, limits=Limits())
        regions = make_regions(registry.current_session, RegionSettings())
        cache = QueryCache(regions)
        cache.listen(factory)
        option = FromCache(LOCAL_REGION)
        timers: dict[str, tuple[Callable[[], None] | None, Callable[[], object]]] = {}
        rows: dict[str, int] = {}
        with registry.scope(("", "bench-library")) as session:
            for label, arguments in STATEMENTS:
                query = PersonQuery(**arguments)
                cached = query.statement(cached=True)
                plain = query.statement(cached=False)

                def execute(statement: Any = cached) -> object:
                    return session.execute(statement).unique().scalars().all()

                def execute_plain(statement: Any = plain) -> object:
                    return session.execute(statement).unique().scalars().all()

                def invalidate(statement: Any = cached) -> None:
                    cache.invalidate(statement, option)

                # Warm: the entry is stored, the objects are in the identity map,
                # SQLAlchemy's compiled cache knows both statements.
                found = execute()
                execute_plain()
                rows[label] = len(found)  # type: ignore[arg-type]
                timers[f"hit_{label}"] = (None, execute)
                timers[f"uncached_{label}"] = (None, execute_plain)
                timers[f"miss_store_{label}"] = (invalidate, execute)
            samples = _time_interleaved(timers, seconds_per_case)
            # The hit really was a hit: the last miss_store call stored the entry.
            session.rollback()
    finally:
        engine.dispose()

    cases = []
    for name, values in samples.items():
        label = name.rsplit("_", 1)[1]
        deciles = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
        cases.append(
            Case(
                name=name,
                rows=rows[label],
                iterations=len(values),
                median_us=statistics.median(values) / 1000,
                p10_us=deciles[0] / 1000,
                p90_us=deciles[-1] / 1000,
            )
        )
    by_name = {case.name: case for case in cases}
    labels = [label for label, _ in STATEMENTS]
    return LibraryResults(
        cases=cases,
        hit_speedup={
            label: by_name[f"uncached_{label}"].median_us / by_name[f"hit_{label}"].median_us
            for label in labels
        },
        miss_cost={
            label: by_name[f"miss_store_{label}"].median_us / by_name[f"uncached_{label}"].median_us
            for label in labels
        },
        persons=persons,
    )


def _time_interleaved(
    timers: dict[str, tuple[Callable[[], None] | None, Callable[[], object]]],
    seconds_per_case: float,
) -> dict[str, list[int]]:
    """Per-call nanoseconds of each timer, run in interleaved blocks."""
    samples: dict[str, list[int]] = {name: [] for name in timers}
    block = seconds_per_case / BLOCKS
    clock = time.perf_counter_ns
    for _ in range(BLOCKS):
        for name, (before, timed) in timers.items():
            gc.collect()
            values = samples[name]
            until = time.perf_counter() + block
            count = 0
            # At least a few calls per block, however slow.
            while count < 3 or time.perf_counter() < until:
                if before is not None:
                    before()
                began = clock()
                timed()
                values.append(clock() - began)
                count += 1
    return samples


def format_table(results: LibraryResults) -> str:
    """The results as a plain-text table."""
    lines = [f"{'case':<20} {'rows':>5} {'calls':>8} {'median µs':>10} {'p10':>8} {'p90':>8}"]
    for case in results.cases:
        lines.append(
            f"{case.name:<20} {case.rows:>5} {case.iterations:>8} {case.median_us:>10.1f} "
            f"{case.p10_us:>8.1f} {case.p90_us:>8.1f}"
        )
    for label in results.hit_speedup:
        lines.append(
            f"{label}: hit {results.hit_speedup[label]:.2f}x faster than uncached; "
            f"miss+store {results.miss_cost[label]:.2f}x the uncached query"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.library``: time the cases on a fresh seeded SQLite file."""
    parser = argparse.ArgumentParser(prog="python -m bench.library", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per case")
    parser.add_argument("--persons", type=int, default=10_000, help="persons seeded")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sesscache-bench-") as directory:
        url = f"sqlite:///{Path(directory) / 'library.db'}"
        results = run(url, seconds_per_case=args.seconds, persons=args.persons)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
