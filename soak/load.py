"""The soak's workload: client threads, each working through session after session.

Each thread has a :class:`client.Client` of its own (its own channel) and
loops until its phase ends: it opens a new session, makes 5 to 40 calls in
it with a short random think time between them (queries by name, by name
range following every page, by ids, with the basic or full view,
sometimes bypassing the cache, and key listings), then either ends the
session (``EndSession``, which must find it) or abandons it to the idle
reaper (or to eviction when the server is full).

Every answer is checked against the database, read directly at the start
(:class:`Truth`): a wrong answer counts as an error, like any failed call.
The query shapes come from a fixed set (:data:`RANGES`, :data:`ID_SETS`,
:data:`PAGE_SIZES`), so a warm-up can touch them all and the server's
bounded per-shape caches are full before memory is measured.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import create_engine, text

from sesscache_client import Client, SesscacheError, Session, SessionNotFound
from sesscache_client.v1 import sesscache_pb2 as pb

_shapes = random.Random(20261129)
#: Name ranges queried, as (first, last) person numbers.
RANGES: tuple[tuple[int, int], ...] = tuple(
    (min(a, b), max(a, b))
    for a, b in ((_shapes.randint(1, 50), _shapes.randint(1, 50)) for _ in range(20))
)
#: Id lists queried.
ID_SETS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted(_shapes.sample(range(1, 51), _shapes.randint(1, 6)))) for _ in range(20)
)
PAGE_SIZES = (5, 10, 20)
VIEWS: tuple[Literal["basic", "full"], ...] = ("basic", "full")
MAX_ERRORS_KEPT = 20


def person_name(number: int) -> str:
    return f"person {number:02d}"


@dataclass(frozen=True)
class Truth:
    """Every person's (id, name), read straight from the database."""

    persons: tuple[tuple[int, str], ...]

    @classmethod
    def read(cls, database_url: str) -> Truth:
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text("SELECT id, name FROM person ORDER BY id")).all()
        finally:
            engine.dispose()
        return cls(tuple((int(row[0]), str(row[1])) for row in rows))

    def named(self, name: str) -> list[str]:
        return [n for _, n in self.persons if n == name]

    def in_range(self, first: str, last: str) -> list[str]:
        return [n for _, n in self.persons if first <= n <= last]

    def with_ids(self, ids: Sequence[int]) -> list[str]:
        wanted = set(ids)
        return [n for i, n in self.persons if i in wanted]


@dataclass
class Tally:
    """What the clients did and saw, shared by the threads of a phase."""

    calls: Counter[str] = field(default_factory=Counter)
    sessions_started: int = 0
    sessions_ended: int = 0
    sessions_abandoned: list[str] = field(default_factory=list)
    #: (session id, what) when a client found its own session gone: legitimate only if
    #: the server evicted or reaped it (checked against its log after the phase).
    gone: list[tuple[str, str]] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, text_: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < MAX_ERRORS_KEPT:
                self.error_samples.append(text_)


_STATUS = {
    pb.CACHE_STATUS_HIT: "hit",
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_BYPASS: "bypass",
}


class Worker:
    """One client thread's behaviour (see the module docstring)."""

    def __init__(
        self, index: int, target: str, truth: Truth, tally: Tally, *, seed: int, think: float
    ) -> None:
        self.index = index
        self.target = target
        self.truth = truth
        self.tally = tally
        self.random = random.Random(seed * 1000 + index)
        self.think = think

    def run(self, phase: str, until: float) -> None:
        try:
            with Client(self.target, timeout=30) as client:
                number = 0
                while time.monotonic() < until:
                    number += 1
                    self._session(client.session(f"soak-{phase}-{self.index}-{number}"), until)
        except Exception as error:  # a bug of the soak itself: still an error, never silent
            self.tally.error(f"client thread {self.index} died: {error!r}")

    def _session(self, session: Session, until: float) -> None:
        with self.tally.lock:
            self.tally.sessions_started += 1
        queried = False
        working_set: list[Query] = []
        tiny = self.random.random() < 0.2  # one or two queries, then left alone
        for _ in range(self.random.randint(1, 2) if tiny else self.random.randint(5, 40)):
            if time.monotonic() >= until:
                break
            if not tiny and self.random.random() < 0.12:
                self._list(session, queried)
            else:
                if not working_set or self.random.random() < 0.25:
                    working_set.append(self._new_query())
                self._query(session, self.random.choice(working_set))
                queried = True
            if self.think:
                time.sleep(self.random.uniform(0, 2 * self.think))
        if tiny or self.random.random() < 0.5:
            with self.tally.lock:
                self.tally.sessions_abandoned.append(session.id)
            return
        try:
            ended = session.end()
        except SesscacheError as error:
            self.tally.error(f"{session.id}: EndSession: {error}")
            return
        with self.tally.lock:
            self.tally.sessions_ended += 1
            if queried and not ended.existed:
                self.tally.gone.append((session.id, "EndSession found no session"))

    def _new_query(self) -> Query:
        """A query the session has not made yet: by name (mostly popular ones), range, ids."""
        view = self.random.choice(VIEWS)
        pick = self.random.random()
        if pick < 0.6:
            hot = self.random.random() < 0.7
            number = self.random.randint(1, 10) if hot else self.random.randint(1, 50)
            return Query(view, name=person_name(number), bypass=self.random.random() < 0.05)
        if pick < 0.8:
            first, last = self.random.choice(RANGES)
            return Query(view, first=first, last=last, page_size=self.random.choice(PAGE_SIZES))
        return Query(view, ids=self.random.choice(ID_SETS))

    def _query(self, session: Session, query: Query) -> None:
        try:
            names = query.run(session, self._count)
        except (SesscacheError, AssertionError) as error:
            self.tally.error(f"{session.id}: {query}: {error}")
            return
        expected = query.expected(self.truth)
        if names != expected:
            self.tally.error(f"{session.id}: {query}: expected {expected}, got {names}")

    def _count(self, response: pb.QueryPersonsResponse) -> None:
        with self.tally.lock:
            self.tally.calls[_STATUS.get(response.cache_status, "?")] += 1
        if response.cache_status == pb.CACHE_STATUS_HIT and response.sql_statements:
            self.tally.error(f"a hit ran {response.sql_statements} SQL statements")

    def _list(self, session: Session, queried: bool) -> None:
        try:
            entries = session.list_cache_keys()
        except SessionNotFound:
            with self.tally.lock:
                if queried:
                    self.tally.gone.append((session.id, "ListCacheKeys: NOT_FOUND"))
                else:  # nothing asked yet: the session does not exist yet
                    self.tally.calls["list-before-query"] += 1
            return
        except SesscacheError as error:
            self.tally.error(f"{session.id}: ListCacheKeys: {error}")
            return
        keys = [entry.key for entry in entries]
        if len(keys) != len(set(keys)):
            self.tally.error(f"{session.id}: a key listed twice")
        with self.tally.lock:
            self.tally.calls["list"] += 1


@dataclass(frozen=True)
class Query:
    """One QueryPersons request of the workload, with every page followed."""

    view: Literal["basic", "full"]
    name: str = ""
    first: int = 0
    last: int = 0
    ids: tuple[int, ...] = ()
    page_size: int = 0
    bypass: bool = False

    def run(self, session: Session, count: Callable[[pb.QueryPersonsResponse], None]) -> list[str]:
        """The names of every page, in order."""
        names: list[str] = []
        token = ""
        while True:
            response = session.query_persons(
                name=self.name,
                name_first=person_name(self.first) if self.first else "",
                name_last=person_name(self.last) if self.last else "",
                ids=self.ids,
                page_size=self.page_size,
                page_token=token,
                view=self.view,
                bypass_cache=self.bypass,
            )
            count(response)
            if self.page_size and len(response.persons) > self.page_size:
                raise AssertionError(f"a page of {len(response.persons)} > {self.page_size}")
            names.extend(p.name for p in response.persons)
            token = response.next_page_token
            if not token:
                return names

    def expected(self, truth: Truth) -> list[str]:
        if self.name:
            return truth.named(self.name)
        if self.first:
            return truth.in_range(person_name(self.first), person_name(self.last))
        return truth.with_ids(self.ids)


def every_query() -> list[Query]:
    """Every query shape the workload makes."""
    queries: list[Query] = []
    for view in VIEWS:
        queries.extend(Query(view, name=person_name(n)) for n in range(1, 51))
        queries.extend(Query(view, ids=ids) for ids in ID_SETS)
        queries.extend(
            Query(view, first=first, last=last, page_size=size)
            for first, last in RANGES
            for size in PAGE_SIZES
        )
    return queries


def warm_every_shape(target: str, truth: Truth, tally: Tally) -> None:
    """Make every query the workload makes once, in one session, then end it."""
    worker = Worker(0, target, truth, tally, seed=0, think=0)
    with Client(target, timeout=60) as client, client.session("soak-shapes") as session:
        for query in every_query():
            worker._query(session, query)


def run_phase(
    phase: str, target: str, truth: Truth, *, clients: int, seconds: float, seed: int, think: float
) -> Tally:
    """``clients`` threads for ``seconds``; return what they did."""
    tally = Tally()
    until = time.monotonic() + seconds
    workers = [Worker(n, target, truth, tally, seed=seed, think=think) for n in range(clients)]
    threads = [
        threading.Thread(target=w.run, args=(phase, until), name=f"soak-{phase}-{w.index}")
        for w in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally
