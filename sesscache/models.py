"""The ORM model: Person -> Address -> PostalCode -> City -> Country.

The same shape as SQLAlchemy's dogpile_caching example, written in the typed
SQLAlchemy 2.x declarative style. A Person has many Addresses; an Address has
one PostalCode, which belongs to a City, which belongs to a Country.

Only ``Person.addresses`` is loaded together with the Person (one joined
SELECT). The postal code, city and country of an address are loaded lazily,
which is where :class:`sesscache.caching.RelationshipCache` serves them from
the shared ``default`` region instead of the database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of every sesscache table."""


class Country(Base):
    __tablename__ = "country"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)

    def __repr__(self) -> str:
        return f"Country({self.name!r})"


class City(Base):
    __tablename__ = "city"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    country_id: Mapped[int] = mapped_column(ForeignKey("country.id"))

    country: Mapped[Country] = relationship(lazy="select")

    def __repr__(self) -> str:
        return f"City({self.name!r})"


class PostalCode(Base):
    __tablename__ = "postal_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("city.id"))

    city: Mapped[City] = relationship(lazy="select")

    @property
    def country(self) -> Country:
        return self.city.country

    def __repr__(self) -> str:
        return f"PostalCode({self.code!r})"


class Address(Base):
    __tablename__ = "address"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)
    street: Mapped[str] = mapped_column(String(200))
    postal_code_id: Mapped[int] = mapped_column(ForeignKey("postal_code.id"))

    person: Mapped[Person] = relationship(back_populates="addresses")
    postal_code: Mapped[PostalCode] = relationship(lazy="select")

    @property
    def city(self) -> City:
        return self.postal_code.city

    @property
    def country(self) -> Country:
        return self.postal_code.country

    def __repr__(self) -> str:
        return f"Address({self.street!r}, {self.postal_code.code!r})"


class Person(Base):
    """A person. ``version`` counts the person's committed changes (its own row
    and its addresses' streets): the etag of the API is made from it, and the
    ORM checks it on every UPDATE and DELETE of the row (``version_id_col``),
    so a change based on a stale read fails with ``StaleDataError``.

    The writer assigns the next version itself (``version_id_generator``
    False), so a database trigger that also bumps it does no harm: readers
    compare versions for equality only, and re-read the value after a write.
    Plain SQL that names only ``id`` and ``name`` still works (server default 1).
    """

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: The etag; the change-log triggers also bump it (see :mod:`sesscache.changes`).
    version: Mapped[int] = mapped_column(server_default=text("1"))

    addresses: Mapped[list[Address]] = relationship(
        back_populates="person", order_by=Address.id, lazy="select"
    )

    # Ids are never reused (SQLite would reuse the highest after a delete), so a
    # session still holding a deleted person never meets a new one of its id.
    __table_args__: dict[str, Any] = {"sqlite_autoincrement": True}  # noqa: RUF012
    __mapper_args__: dict[str, Any] = {  # noqa: RUF012 (SQLAlchemy reads it once)
        "version_id_col": version,
        "version_id_generator": False,
    }

    def __repr__(self) -> str:
        return f"Person({self.name!r})"
