"""The Person query sesscache serves, as a value, and the statement it runs.

A :class:`PersonQuery` is a validated, hashable description of one page of a
``QueryPersons`` request. :meth:`PersonQuery.statement` turns it into the
SELECT that runs (or is served from the cache): persons ordered by id,
with their addresses joined in the same statement for the full view, the
postal code, city and country of each address left to lazy loads served by
the shared region (:data:`sesscache.regions.ADDRESS_BITS`). Equal queries
build statements of equal cache keys, so a server can remember the key of a
query instead of building its statement again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import joinedload

from sesscache.caching import FromCache
from sesscache.models import Person
from sesscache.regions import ADDRESS_BITS, LOCAL_REGION


@dataclass(frozen=True, slots=True)
class PersonQuery:
    """One page of persons: filters (ANDed), page position and size, view.

    ``name``: exact name. ``first`` / ``last``: inclusive name range bounds.
    ``ids``: only these ids (sorted, unique). ``after_id``: the page starts
    after this id. ``limit``: persons per page. ``full``: load addresses.
    """

    name: str | None = None
    first: str | None = None
    last: str | None = None
    ids: tuple[int, ...] = ()
    after_id: int = 0
    limit: int = 50
    full: bool = True

    def filters_fingerprint(self) -> str:
        """A digest of the filters and view (not the page), to bind page tokens to."""
        text = repr((self.name, self.first, self.last, self.ids, self.full))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def statement(self, *, cached: bool = True) -> Select[Person]:
        """The SELECT for this page, fetching one row more than the page to see if more follow.

        ``cached``: attach ``FromCache`` for the session-local region, and
        ``RelationshipCache`` for the address bits.
        """
        statement = select(Person)
        if self.full:
            statement = statement.options(joinedload(Person.addresses))
            if cached:
                statement = statement.options(ADDRESS_BITS)
        if self.name is not None:
            statement = statement.where(Person.name == self.name)
        if self.first is not None:
            statement = statement.where(Person.name >= self.first)
        if self.last is not None:
            statement = statement.where(Person.name <= self.last)
        if self.ids:
            statement = statement.where(Person.id.in_(self.ids))
        if self.after_id:
            statement = statement.where(Person.id > self.after_id)
        statement = statement.order_by(Person.id).limit(self.limit + 1)
        if cached:
            statement = statement.options(FromCache(LOCAL_REGION))
        return statement
