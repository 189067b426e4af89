"""CreatePerson, UpdatePerson and DeletePerson: validation, the database work, the cache.

Validation (:func:`create_request`, :func:`update_request`,
:func:`delete_request`) is pure and runs on the event loop; every violation
names its field, with the limits of the schema itself (the lengths of
``person.name``, ``address.street`` and ``postal_code.code``).

:class:`PersonWriter` does the database work in a worker thread, in the
caller's session scope with the session's call lock held (the servicer runs
it exactly like QueryPersons' work), in one transaction: committed whole, or
rolled back whole on any failure. Optimistic concurrency (AIP-154) rests on
``person.version`` (see :class:`sesscache.models.Person`): the etag a client
sends is compared with the committed version, and every write raises the
version with an UPDATE that the ORM checks (``WHERE version = <read>``), so
a write that meets another one committed meanwhile fails with
``StaleDataError``, which becomes ABORTED. Every write touches the person's
row first, so concurrent writes lock rows in one order (person, then
addresses) and cannot deadlock each other.

After the commit, :func:`invalidate_after_write` keeps the writer's own
session cache right (other sessions are the change feed's business).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

from sqlalchemy import String, delete, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from sesscache.backend import store_for
from sesscache.caching import CachedResult
from sesscache.changes import CHANGE_TABLE, STATE_TABLE
from sesscache.freshness import OwnWrite
from sesscache.models import Address, Person, PostalCode
from sesscache.registry import SessionRegistry
from sesscache.store import Entry, RemovalReason, SessionStore
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    ResourceNotFound,
    ServiceError,
    quote,
)
from sesscache_server.persons import RESPONSE_RENDERING, etag_of, message_size, render_person
from sesscache_server.validation import MAX_ID

log = logging.getLogger(__name__)

R = TypeVar("R")


def _length(column: object) -> int:
    length = cast(String, column).length
    assert length is not None
    return length


#: The schema's limits, read from the model (one source of truth).
MAX_NAME = _length(Person.__table__.c.name.type)
MAX_STREET = _length(Address.__table__.c.street.type)
MAX_POSTAL_CODE = _length(PostalCode.__table__.c.code.type)
#: Addresses one CreatePerson may create at most.
MAX_NEW_ADDRESSES = 100
#: What an etag looks like at most (``etag_of`` makes short ones).
MAX_ETAG = 64

#: The resource type named in NOT_FOUND details.
PERSON_RESOURCE = "sesscache.v1.Person"


# -- validated requests ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewAddress:
    street: str
    postal_code: str


@dataclass(frozen=True, slots=True)
class NewPerson:
    """A validated CreatePerson request."""

    name: str
    addresses: tuple[NewAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class PersonChange:
    """A validated UpdatePerson request: ``name`` and/or (``address_id``, ``street``)."""

    id: int
    etag: str = ""
    name: str | None = None
    address_id: int | None = None
    street: str | None = None


@dataclass(frozen=True, slots=True)
class PersonRemoval:
    """A validated DeletePerson request."""

    id: int
    etag: str = ""


def create_request(request: pb.CreatePersonRequest) -> NewPerson:
    violations: list[tuple[str, str]] = []
    person = request.person
    _check(violations, "person.name", person.name, MAX_NAME)
    if len(person.addresses) > MAX_NEW_ADDRESSES:
        violations.append(
            ("person.addresses", f"at most {MAX_NEW_ADDRESSES} (got {len(person.addresses)})")
        )
    else:
        for index, address in enumerate(person.addresses):
            field = f"person.addresses[{index}]"
            _check(violations, f"{field}.street", address.street, MAX_STREET)
            _check(violations, f"{field}.postal_code", address.postal_code, MAX_POSTAL_CODE)
    if violations:
        raise InvalidArgument(violations)
    return NewPerson(
        name=person.name,
        addresses=tuple(NewAddress(a.street, a.postal_code) for a in person.addresses),
    )


def update_request(request: pb.UpdatePersonRequest) -> PersonChange:
    violations: list[tuple[str, str]] = []
    _check_id(violations, "id", request.id)
    _check_etag(violations, request.etag)
    has_name = request.HasField("name")
    has_address = request.HasField("address")
    if has_name:
        _check(violations, "name", request.name, MAX_NAME)
    if has_address:
        _check_id(violations, "address.id", request.address.id)
        _check(violations, "address.street", request.address.street, MAX_STREET)
    if not has_name and not has_address:
        violations.append(("name", "set name and/or address: there is nothing to change"))
    if violations:
        raise InvalidArgument(violations)
    return PersonChange(
        id=request.id,
        etag=request.etag,
        name=request.name if has_name else None,
        address_id=request.address.id if has_address else None,
        street=request.address.street if has_address else None,
    )


def delete_request(request: pb.DeletePersonRequest) -> PersonRemoval:
    violations: list[tuple[str, str]] = []
    _check_id(violations, "id", request.id)
    _check_etag(violations, request.etag)
    if violations:
        raise InvalidArgument(violations)
    return PersonRemoval(id=request.id, etag=request.etag)


def _check(violations: list[tuple[str, str]], field: str, value: str, limit: int) -> None:
    if not value:
        violations.append((field, "must not be empty"))
    elif len(value) > limit:
        violations.append((field, f"at most {limit} characters (got {len(value)})"))
    elif "\x00" in value:
        violations.append((field, "must not contain NUL characters"))


def _check_id(violations: list[tuple[str, str]], field: str, value: int) -> None:
    if not 1 <= value <= MAX_ID:
        violations.append((field, f"must be between 1 and {MAX_ID} (got {value})"))


def _check_etag(violations: list[tuple[str, str]], etag: str) -> None:
    if len(etag) > MAX_ETAG:
        violations.append(("etag", f"at most {MAX_ETAG} characters: send back an etag as read"))


# -- the database work -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did, for the cache: ``person`` (as committed; for a delete,
    as it was), and whether it changed which persons a query criterion can
    match (a create, a rename, a delete) or only data shown (a street)."""

    person: Person
    kind: Literal["create", "update", "delete"]
    criteria_changed: bool


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write's response, and the session cache entries it removed."""

    person: pb.Person
    removed: list[Entry]
    #: The change-log rows this write's transaction made (see sesscache.freshness).
    own: OwnWrite | None = None


class PersonWriter:
    """Runs the writes against the caller's Session (in its scope, in a worker thread)."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def create(self, new: NewPerson) -> WriteResult:
        return self._transaction(lambda session: self._create(session, new))

    def update(self, change: PersonChange) -> WriteResult:
        return self._transaction(lambda session: self._update(session, change))

    def delete(self, removal: PersonRemoval) -> WriteResult:
        return self._transaction(lambda session: self._delete(session, removal))

    def _transaction(self, work: Callable[[Session], tuple[Written, pb.Person]]) -> WriteResult:
        """``work`` in one transaction of the current Session, then the cache."""
        session = self.registry.current_session()
        try:
            after = _lock_log(session)
            written, message = work(session)
            own = _own_changes(session, after)
            session.commit()
        except ServiceError:
            # A check failed before anything was changed: end the transaction
            # (it only read) without expiring the Session's objects, which are
            # the objects of its cached entries. Anything changed: roll back.
            if session.new or session.dirty or session.deleted:
                _rollback(session)
            else:
                _end_read_only(session)
            raise
        except BaseException as error:
            _rollback(session)
            translated = _translated(error)
            if translated is error:
                raise
            raise translated from error
        if written.kind == "delete":
            _forget(session, written.person)
        store = store_for(session, create=False)
        removed = invalidate_after_write(store, written) if store is not None else []
        return WriteResult(message, removed, own)

    def _create(self, session: Session, new: NewPerson) -> tuple[Written, pb.Person]:
        codes = {address.postal_code for address in new.addresses}
        known = (
            {
                code.code: code
                for code in session.scalars(select(PostalCode).where(PostalCode.code.in_(codes)))
            }
            if codes
            else {}
        )
        unknown = [
            (f"person.addresses[{index}].postal_code", f"no postal code {quote(a.postal_code)}")
            for index, a in enumerate(new.addresses)
            if a.postal_code not in known
        ]
        if unknown:
            raise InvalidArgument(unknown)
        person = Person(name=new.name)
        person.addresses = [
            Address(street=a.street, postal_code=known[a.postal_code]) for a in new.addresses
        ]
        session.add(person)
        session.flush()  # INSERT ... RETURNING id, version: ALREADY_EXISTS here
        _reread_version(session, person)  # each address's trigger raised it
        return Written(person, "create", True), _message(person)

    def _update(self, session: Session, change: PersonChange) -> tuple[Written, pb.Person]:
        person = _current(session, change.id, change.etag)
        address: Address | None = None
        if change.address_id is not None:
            address = session.scalars(
                select(Address).where(
                    Address.id == change.address_id, Address.person_id == change.id
                )
            ).one_or_none()
            if address is None:
                raise InvalidArgument.field(
                    "address.id",
                    f"person {change.id} has no address {change.address_id}; nothing was changed",
                )
        # Everything is checked: now change, the person's row first.
        renamed = change.name is not None and change.name != person.name
        if change.name is not None:
            person.name = change.name
        person.version = person.version + 1
        if address is not None and change.street is not None:
            address.street = change.street
        session.flush()  # UPDATE person ... WHERE version = <read>: ABORTED when stale
        _reread_version(session, person)
        return Written(person, "update", renamed), _message(person)

    def _delete(self, session: Session, removal: PersonRemoval) -> tuple[Written, pb.Person]:
        person = _current(session, removal.id, removal.etag)
        message = _message(person)  # as it is: what the response shows
        # The version-checked UPDATE locks the row (and fails if it is stale)
        # before any address goes.
        person.version = person.version + 1
        session.flush()
        # Bulk deletes: the Session's objects are taken out after the commit.
        unsynchronized = {"synchronize_session": False}
        session.execute(
            delete(Address).where(Address.person_id == removal.id),
            execution_options=unsynchronized,
        )
        session.execute(
            delete(Person).where(Person.id == removal.id), execution_options=unsynchronized
        )
        return Written(person, "delete", True), message


def _lock_log(session: Session) -> int:
    """On SQLite, take the database's write lock now and return the change log's
    last id: every change id above it until the commit is this transaction's."""
    if session.get_bind().dialect.name != "sqlite":
        return 0
    session.execute(text(f"UPDATE {STATE_TABLE} SET id = id WHERE id = 1"))  # noqa: S608
    return _last_change_id(session)


def _last_change_id(session: Session) -> int:
    value = session.scalar(
        text("SELECT seq FROM sqlite_sequence WHERE name = :table"), {"table": CHANGE_TABLE}
    )
    return int(value or 0)


def _own_changes(session: Session, after: int) -> OwnWrite:
    """The changes this transaction logged: its txid (PostgreSQL), its id range (SQLite)."""
    if session.get_bind().dialect.name != "sqlite":
        txid = session.scalar(text("SELECT pg_current_xact_id()::text"))
        return OwnWrite(txid=int(str(txid)))
    return OwnWrite(after=after, through=_last_change_id(session))


def _current(session: Session, person_id: int, etag: str) -> Person:
    """The person ``person_id`` with its committed version; NOT_FOUND, or ABORTED
    when ``etag`` is set and is not the person's."""
    version = session.scalar(select(Person.version).where(Person.id == person_id))
    person = session.get(Person, person_id) if version is not None else None
    if version is None or person is None:
        raise ResourceNotFound(
            f"no person with id {person_id}",
            resource_type=PERSON_RESOURCE,
            resource_name=str(person_id),
        )
    # The session's object may be older than the row (another session wrote it):
    # what is checked, and raised, is the committed version.
    set_committed_value(person, "version", version)
    if etag and etag != etag_of(person):
        raise Aborted(
            f"person {person_id} changed since it was read (etag {quote(etag)}, now "
            f"{etag_of(person)!r}): read it again, then retry; nothing was changed"
        )
    return person


def _reread_version(session: Session, person: Person) -> None:
    """Take the version as the database has it after the write (a trigger may
    have raised it too), so the etag returned is the one the next call checks."""
    version = session.scalar(select(Person.version).where(Person.id == person.id))
    if version is not None:
        set_committed_value(person, "version", version)


def _message(person: Person) -> pb.Person:
    return render_person(person, full=True)


def _forget(session: Session, person: Person) -> None:
    """Take a deleted person and its loaded addresses out of the Session."""
    state = inspect(person)
    addresses = [] if "addresses" in state.unloaded else list(person.addresses)
    for obj in (*addresses, person):
        if obj in session:
            session.expunge(obj)


def _end_read_only(session: Session) -> None:
    try:
        session.commit()
    except Exception as error:  # the database went away: roll back instead
        log.debug("ending a read-only transaction failed: %s", error)
        _rollback(session)


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except Exception as error:  # the connection may be gone with the database
        log.debug("rollback after a failed write failed too: %s", error)


def _translated(error: BaseException) -> BaseException:
    """The status a failed write's error stands for (others pass as they are)."""
    if isinstance(error, StaleDataError):
        return Aborted(
            "the person was changed by another call meanwhile: read it again, then retry; "
            "nothing was changed"
        )
    if isinstance(error, IntegrityError) and is_duplicate_name(error):
        return AlreadyExists("another person already has this name; nothing was changed")
    if isinstance(error, DBAPIError) and _sqlstate(error) in _CONFLICT_STATES:
        return Aborted(
            "the write met a concurrent one (the database chose to end it): retry; "
            "nothing was changed"
        )
    return error


#: PostgreSQL: serialization_failure and deadlock_detected.
_CONFLICT_STATES = ("40001", "40P01")


def _sqlstate(error: DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_duplicate_name(error: IntegrityError) -> bool:
    """Whether ``error`` is the unique constraint on ``person.name`` (and not,
    say, a foreign key), on PostgreSQL or SQLite."""
    orig = error.orig
    if _sqlstate(error) == "23505":  # PostgreSQL unique_violation
        # The constraint's name (PostgreSQL's default for a unique column), or
        # the detail when messages are in English.
        diag = getattr(orig, "diag", None)
        table = getattr(diag, "table_name", None)
        constraint = getattr(diag, "constraint_name", None)
        detail = getattr(diag, "message_detail", None) or ""
        return table == Person.__tablename__ and (
            constraint == f"{Person.__tablename__}_name_key" or detail.startswith("Key (name)=")
        )
    text = str(orig)
    return text.startswith("UNIQUE constraint failed:") and text.split(":", 1)[1].strip() == (
        f"{Person.__tablename__}.name"
    )


# -- the writer's session cache ------------------------------------------------------------


def invalidate_after_write(store: SessionStore, written: Written) -> list[Entry]:
    """Keep the writer's session cache right after ``written``; return the entries removed.

    A change of what a criterion can match (create, rename, delete) removes,
    conservatively, every entry of a Person query in the session: any of them
    may now miss the person or hold it wrongly. A change of shown data only
    (a street) removes nothing: the cached objects *are* the session's
    objects, so the entries holding the person serve the change at once, as
    hits; only the responses rendered from them are dropped, to be rendered
    again by their next hit.
    """
    if written.criteria_changed:
        removed = [entry for entry in store if entry.description.entity == Person.__name__]
        for entry in removed:
            # Counted and shown as invalidations by the store's listener.
            store.remove(entry.key, RemovalReason.INVALIDATED)
        return removed
    for entry in list(store):
        payload = entry.value.payload
        if not isinstance(payload, CachedResult) or RESPONSE_RENDERING not in payload.renderings:
            continue
        if _holds(payload.frozen.data, written.person):
            rendered = payload.renderings.pop(RESPONSE_RENDERING)
            store.grow(entry, -message_size(rendered))
    return []


def _holds(rows: Iterable[object], person: Person) -> bool:
    return any(obj is person for row in rows for obj in (row if isinstance(row, tuple) else (row,)))
