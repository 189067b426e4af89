"""What a change affects: the dependencies of cached results, and an index over them.

A cached result declares its :class:`Dependencies`:

- ``criteria``: the rows of ``person`` it selects, as :class:`PersonCriteria`
  (the ANDed filters of a :class:`~sesscache.queries.PersonQuery`: exact
  name, name range, ids, and the id window its page covers);
- ``person_ids`` / ``address_ids``: the rows in its result;
- ``addresses``: whether the result holds the addresses of its persons (the
  full view), so that a new or moved address of one of them matters;
- ``tables``: reference tables it read (``postal_code``, ``city``, ``country``);
- ``rows``: exact ``(table, id)`` rows it read (for entries such as the shared
  region's postal code bits, which know exactly what they hold).

:class:`DependencyIndex` maps keys to dependencies; :meth:`DependencyIndex.affected`
answers which keys a :class:`~sesscache.feed.Change` can affect:

- a ``person`` change affects an entry when its row (old or new) is in the
  entry's result, or when the old or the new row matches one of the entry's
  criteria (so inserts, deletes and renames into or out of a name range are
  caught). Candidates come from dicts (by id, by exact name, by listed id)
  and from interval indexes (name ranges, and the id windows of entries that
  filter on nothing else), then every candidate is checked exactly;
- an ``address`` change affects entries whose result holds that address, or
  holds the addresses of the person it belongs (or belonged) to;
- a reference table change (``postal_code``, ``city``, ``country``) affects
  every entry that declared that table, and entries that declared that exact
  row. This is deliberately coarse: these tables are tiny and rarely
  written, and tracking which postal codes every cached page reached through
  lazy loads would cost every miss more than it saves.

Lookups are sub-linear in the number of entries: dict hits, and for ranges an
interval index (:class:`IntervalIndex`: sorted by lower bound, with a
max-upper-bound tree) whose stabbing query costs ``O((k + 1) log m)`` for
``m`` distinct intervals and ``k`` hits; equal intervals (many sessions
caching the same range) are stored once.

**Comparison.** Name ranges compare strings by code point, which is SQLite's
default ``BINARY`` collation and PostgreSQL's ``"C"`` collation (the test
clusters are created ``--no-locale``). On a PostgreSQL database whose
``person.name`` sorts by another collation, build the index with
``codepoint_names=False`` (see :func:`names_sort_by_codepoint`): every
``person`` change then affects every entry with a name range, which is safe
but coarse. Exact names compare equal only when identical under any
deterministic collation, so they stay exact.

**Pages.** A ``PersonQuery`` page fetches ``limit + 1`` rows ordered by id.
When it got all of them, rows with bigger ids cannot enter it, so its window
ends at the last id it holds; otherwise the window is open (see
:meth:`Dependencies.for_person_query`).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, text

from sesscache.changes import TRACKED, Change
from sesscache.queries import PersonQuery

#: Reference tables (coarse invalidation), from the one spec.
REFERENCE_TABLES: frozenset[str] = frozenset(table.name for table in TRACKED if table.reference)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", str, int)


@dataclass(frozen=True, slots=True)
class NameRange:
    """Names ``n`` with ``lo <= n < hi`` (``None``: unbounded on that side).

    :meth:`inclusive` builds the ``first <= n <= last`` range of a
    ``PersonQuery``: ``last + "\\0"`` is the smallest string above ``last``.
    """

    lo: str | None = None
    hi: str | None = None

    @classmethod
    def inclusive(cls, first: str | None, last: str | None) -> NameRange:
        return cls(first, None if last is None else last + "\0")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return (self.lo is None or self.lo <= name) and (self.hi is None or name < self.hi)

    @property
    def empty(self) -> bool:
        return self.lo is not None and self.hi is not None and self.lo >= self.hi


@dataclass(frozen=True, slots=True)
class PersonCriteria:
    """The ``person`` rows a result selects: every given filter must hold.

    ``name``: exact name. ``names``: a name range. ``ids``: only these ids.
    ``after_id`` / ``through_id``: the id window ``after_id < id <= through_id``
    (``through_id`` ``None``: unbounded).
    """

    name: str | None = None
    names: NameRange | None = None
    ids: frozenset[int] | None = None
    after_id: int = 0
    through_id: int | None = None

    def matches(self, row: Mapping[str, Any], *, compare_names: bool = True) -> bool:
        """Whether the logged ``person`` row is selected by these criteria.

        ``compare_names=False``: the name range is not compared (counts as a
        match), for databases whose collation Python cannot reproduce.
        """
        row_id = row.get("id")
        if not isinstance(row_id, int):
            return True  # cannot tell: count it as a match
        if row_id <= self.after_id or (self.through_id is not None and row_id > self.through_id):
            return False
        if self.ids is not None and row_id not in self.ids:
            return False
        name = row.get("name")
        if self.name is not None and name != self.name:
            return False
        return self.names is None or not compare_names or name in self.names


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What one cached result depends on (see the module docstring)."""

    criteria: tuple[PersonCriteria, ...] = ()
    person_ids: frozenset[int] = frozenset()
    address_ids: frozenset[int] = frozenset()
    addresses: bool = False
    tables: frozenset[str] = frozenset()
    rows: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def for_person_query(
        cls,
        query: PersonQuery,
        person_ids: Sequence[int],
        address_ids: Iterable[int] = (),
    ) -> Dependencies:
        """The dependencies of one ``PersonQuery`` page whose result is ``person_ids``.

        ``person_ids``: the ids of the rows the statement returned (up to
        ``limit + 1``), ``address_ids``: the ids of their addresses (full view).
        A full-view page also depends on the reference tables (its addresses'
        postal codes, cities and countries).
        """
        through = max(person_ids) if len(person_ids) > query.limit else None
        names = None
        if query.first is not None or query.last is not None:
            names = NameRange.inclusive(query.first, query.last)
        criteria = PersonCriteria(
            name=query.name,
            names=names,
            ids=frozenset(query.ids) if query.ids else None,
            after_id=query.after_id,
            through_id=through,
        )
        return cls(
            criteria=(criteria,),
            person_ids=frozenset(person_ids),
            address_ids=frozenset(address_ids),
            addresses=query.full,
            tables=REFERENCE_TABLES if query.full else frozenset(),
        )


Interval = tuple[Any, Any]
_Key = tuple[Any, ...]
_MIN_KEY: _Key = (-1,)


def _lo_key(lo: Any) -> _Key:
    return (0,) if lo is None else (1, lo)


def _hi_key(hi: Any) -> _Key:
    return (2,) if hi is None else (1, hi)


class IntervalIndex(Generic[T]):
    """Half-open intervals ``[lo, hi)`` (``None``: unbounded), with a stabbing query.

    A static part, sorted by ``lo`` with a max-``hi`` tournament tree over
    it, answers :meth:`stab` in ``O((k + 1) log n)`` for ``k`` hits; intervals
    added or removed since the last rebuild sit in buffers (scanned by
    :meth:`stab`), and the next :meth:`stab` that finds more than ``sqrt(n)``
    of them merges them in (``O(n + b log b)``). So a stab costs
    ``O(sqrt(n) + (k + 1) log n)``, an update ``O(1)`` plus ``O(sqrt(n))``
    amortised, and memory stays ``O(n)``.
    Equal intervals are stored once, with a reference count.
    """

    def __init__(self, *, min_buffer: int = 32) -> None:
        """``min_buffer``: buffered updates always tolerated before a rebuild."""
        self._min_buffer = min_buffer
        self._count: dict[Interval, int] = {}
        self._static: list[Interval] = []
        self._static_lo: list[_Key] = []
        self._tree: list[_Key] = [_MIN_KEY]
        self._leaves = 1
        self._added: set[Interval] = set()
        self._removed: set[Interval] = set()

    def __len__(self) -> int:
        return len(self._count)

    def add(self, lo: T | None, hi: T | None) -> None:
        """Add one reference to ``[lo, hi)``."""
        interval = (lo, hi)
        count = self._count.get(interval, 0)
        self._count[interval] = count + 1
        if count:
            return
        if interval in self._removed:
            self._removed.discard(interval)
        else:
            self._added.add(interval)

    def remove(self, lo: T | None, hi: T | None) -> None:
        """Drop one reference to ``[lo, hi)``."""
        interval = (lo, hi)
        count = self._count[interval] - 1
        if count:
            self._count[interval] = count
            return
        del self._count[interval]
        if interval in self._added:
            self._added.discard(interval)
        else:
            self._removed.add(interval)

    def _maybe_rebuild(self) -> None:
        buffered = len(self._added) + len(self._removed)
        if buffered > max(self._min_buffer, math.isqrt(len(self._static))):
            self._rebuild()

    def _rebuild(self) -> None:
        # Merge the sorted static part (minus removals) with the sorted additions: O(n + b log b).
        kept = [interval for interval in self._static if interval not in self._removed]
        added = sorted(self._added, key=lambda interval: _lo_key(interval[0]))
        intervals = list(heapq.merge(kept, added, key=lambda interval: _lo_key(interval[0])))
        leaves = 1
        while leaves < len(intervals):
            leaves *= 2
        tree = [_MIN_KEY] * (2 * leaves)
        for position, (_lo, hi) in enumerate(intervals):
            tree[leaves + position] = _hi_key(hi)
        for node in range(leaves - 1, 0, -1):
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
        self._static = intervals
        self._static_lo = [_lo_key(lo) for lo, _hi in intervals]
        self._tree = tree
        self._leaves = leaves
        self._added.clear()
        self._removed.clear()

    def stab(self, value: T) -> set[Interval]:
        """The intervals containing ``value``."""
        self._maybe_rebuild()
        point = (1, value)
        hits = {
            interval
            for interval in self._added
            if _lo_key(interval[0]) <= point < _hi_key(interval[1])
        }
        # Static intervals with lo <= value are a prefix; walk the tree for hi > value.
        prefix = bisect.bisect_right(self._static_lo, point)
        if prefix == 0:
            return hits
        stack = [(1, 0, self._leaves)]
        tree = self._tree
        while stack:
            node, start, stop = stack.pop()
            if start >= prefix or tree[node] <= point:
                continue
            if node >= self._leaves:
                interval = self._static[start]
                if interval not in self._removed:
                    hits.add(interval)
                continue
            middle = (start + stop) // 2
            stack.append((2 * node, start, middle))
            stack.append((2 * node + 1, middle, stop))
        return hits


@dataclass(slots=True)
class _Entry(Generic[K]):
    key: K
    deps: Dependencies
    handles: list[int] = field(default_factory=list)


def _add_to(mapping: dict[Any, set[Any]], item: Any, value: Any) -> None:
    mapping.setdefault(item, set()).add(value)


def _remove_from(mapping: dict[Any, set[Any]], item: Any, value: Any) -> None:
    values = mapping.get(item)
    if values is not None:
        values.discard(value)
        if not values:
            del mapping[item]


class DependencyIndex(Generic[K]):
    """Keys and their :class:`Dependencies`; which keys a change affects.

    Not thread-safe: use it from one thread (or under the caller's lock).
    ``codepoint_names``: whether name ranges may be compared in Python (see
    the module docstring); when False every person change hits every range.
    """

    def __init__(self, *, codepoint_names: bool = True) -> None:
        self._codepoint = codepoint_names
        self._entries: dict[K, _Entry[K]] = {}
        # criteria handles: handle -> (key, criteria)
        self._criteria: dict[int, tuple[K, PersonCriteria]] = {}
        self._next = 0
        self._by_result_person: dict[int, set[K]] = {}
        self._by_address_owner: dict[int, set[K]] = {}
        self._by_address: dict[int, set[K]] = {}
        self._by_table: dict[str, set[K]] = {}
        self._by_row: dict[tuple[str, int], set[K]] = {}
        self._by_name: dict[str, set[int]] = {}
        self._by_listed_id: dict[int, set[int]] = {}
        self._names = IntervalIndex[str]()
        self._by_names: dict[tuple[str | None, str | None], set[int]] = {}
        self._windows = IntervalIndex[int]()
        self._by_window: dict[tuple[int | None, int | None], set[int]] = {}
        self._unordered_ranges: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def add(self, key: K, deps: Dependencies) -> None:
        """Index ``key`` with ``deps`` (replacing what it had)."""
        self.discard(key)
        entry = _Entry(key, deps)
        self._entries[key] = entry
        for person_id in deps.person_ids:
            _add_to(self._by_result_person, person_id, key)
            if deps.addresses:
                _add_to(self._by_address_owner, person_id, key)
        for address_id in deps.address_ids:
            _add_to(self._by_address, address_id, key)
        for table in deps.tables:
            _add_to(self._by_table, table, key)
        for row in deps.rows:
            _add_to(self._by_row, row, key)
        for criteria in deps.criteria:
            handle = self._next
            self._next += 1
            self._criteria[handle] = (key, criteria)
            entry.handles.append(handle)
            self._index_criteria(handle, criteria, add=True)

    def discard(self, key: K) -> None:
        """Forget ``key`` (no-op when absent)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        deps = entry.deps
        for person_id in deps.person_ids:
            _remove_from(self._by_result_person, person_id, key)
            _remove_from(self._by_address_owner, person_id, key)
        for address_id in deps.address_ids:
            _remove_from(self._by_address, address_id, key)
        for table in deps.tables:
            _remove_from(self._by_table, table, key)
        for row in deps.rows:
            _remove_from(self._by_row, row, key)
        for handle in entry.handles:
            _, criteria = self._criteria.pop(handle)
            self._index_criteria(handle, criteria, add=False)

    def _index_criteria(self, handle: int, criteria: PersonCriteria, *, add: bool) -> None:
        # Index by the most selective filter; matches() checks the rest.
        if criteria.name is not None:
            (_add_to if add else _remove_from)(self._by_name, criteria.name, handle)
        elif criteria.ids is not None:
            for listed in criteria.ids:
                (_add_to if add else _remove_from)(self._by_listed_id, listed, handle)
        elif criteria.names is not None and not self._codepoint:
            (self._unordered_ranges.add if add else self._unordered_ranges.discard)(handle)
        elif criteria.names is not None:
            self._index_interval(
                self._names, self._by_names, (criteria.names.lo, criteria.names.hi), handle, add
            )
        else:
            hi = None if criteria.through_id is None else criteria.through_id + 1
            self._index_interval(
                self._windows, self._by_window, (criteria.after_id + 1, hi), handle, add
            )

    @staticmethod
    def _index_interval(
        index: IntervalIndex[T],
        handles: dict[tuple[T | None, T | None], set[int]],
        interval: tuple[T | None, T | None],
        handle: int,
        add: bool,
    ) -> None:
        lo, hi = interval
        if lo is not None and hi is not None and lo >= hi:
            return  # empty: matches nothing
        if add:
            index.add(lo, hi)
            _add_to(handles, interval, handle)
        else:
            index.remove(lo, hi)
            _remove_from(handles, interval, handle)

    def affected(self, change: Change) -> set[K]:
        """The keys whose result ``change`` can alter."""
        if change.table == "person":
            return self._person(change)
        if change.table == "address":
            return self._address(change)
        hit = set(self._by_table.get(change.table, ()))
        hit.update(self._by_row.get((change.table, change.row_id), ()))
        return hit

    def _person(self, change: Change) -> set[K]:
        hit: set[K] = set()
        rows = [row for row in (change.old, change.new) if row is not None]
        ids = {change.row_id, *(row["id"] for row in rows if isinstance(row.get("id"), int))}
        for person_id in ids:
            hit.update(self._by_result_person.get(person_id, ()))
        candidates: set[int] = set(self._unordered_ranges)
        for row in rows:
            name = row.get("name")
            row_id = row.get("id")
            if isinstance(name, str):
                candidates.update(self._by_name.get(name, ()))
                if self._codepoint:
                    for interval in self._names.stab(name):
                        candidates.update(self._by_names[interval])
            if isinstance(row_id, int):
                candidates.update(self._by_listed_id.get(row_id, ()))
                for window in self._windows.stab(row_id):
                    candidates.update(self._by_window[window])
        for handle in candidates:
            key, criteria = self._criteria[handle]
            compare = self._codepoint
            if key not in hit and any(criteria.matches(row, compare_names=compare) for row in rows):
                hit.add(key)
        return hit

    def _address(self, change: Change) -> set[K]:
        hit = set(self._by_address.get(change.row_id, ()))
        for row in (change.old, change.new):
            if row is None:
                continue
            owner = row.get("person_id")
            if isinstance(owner, int):
                hit.update(self._by_address_owner.get(owner, ()))
        return hit

    def affected_by(self, changes: Iterable[Change]) -> set[K]:
        """The union of :meth:`affected` over ``changes``."""
        hit: set[K] = set()
        for change in changes:
            hit |= self.affected(change)
        return hit


def names_sort_by_codepoint(connection: Connection) -> bool:
    """Whether ``person.name`` compares by code point (SQLite ``BINARY``, PostgreSQL ``C``)."""
    if connection.dialect.name == "sqlite":
        sql = connection.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'person'")
        ).scalar()
        return "COLLATE" not in str(sql or "").upper()
    collation = connection.execute(
        text(
            "SELECT CASE WHEN a.attcollation = 100 OR a.attcollation = 0 "
            "THEN d.datcollate ELSE c.collcollate END "
            "FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid "
            "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
            "CROSS JOIN pg_database d "
            "WHERE r.relname = 'person' AND a.attname = 'name' "
            "AND r.relnamespace = current_schema()::regnamespace "
            "AND d.datname = current_database()"
        )
    ).scalar()
    return str(collation) in ("C", "POSIX")
