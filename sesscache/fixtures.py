"""Fixture data: five cities in two countries, and persons with addresses.

Like the dogpile_caching example's fixture data, written to be deterministic
and idempotent: person ``i`` always gets the same street and postal code (the
choice is seeded by ``i``), and :func:`seed` only inserts the rows that are
missing, so seeding twice adds nothing and raising the person count adds
only the new persons.
"""

from __future__ import annotations

import random

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sesscache.models import Address, City, Country, Person, PostalCode

#: (city, country, postal codes): the example's five cities.
CITIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Chicago", "United States", ("60601", "60602", "60603", "60604")),
    ("Montreal", "Canada", ("H2S 3K9", "H2B 1V4", "H7G 2T8")),
    ("Edmonton", "Canada", ("T5J 1R9", "T5J 1Z4", "T5H 1P6")),
    ("New York", "United States", ("10001", "10002", "10003", "10004", "10005", "10006")),
    ("San Francisco", "United States", ("94102", "94103", "94104", "94105", "94107", "94108")),
)

DEFAULT_PERSONS = 50


def person_name(number: int) -> str:
    """The name of person ``number``: ``person 01`` ... ``person 50`` ..."""
    return f"person {number:02d}"


def seed(session: Session, *, persons: int = DEFAULT_PERSONS, seed: int = 0) -> int:
    """Insert whatever of the fixture data is missing; return rows added.

    The caller owns the transaction (and, with several writers, the lock that
    makes this safe: see :func:`sesscache.db.prepare_database`).
    """
    if persons < 0:
        raise ValueError(f"persons must not be negative, got {persons}")
    added = 0
    countries = {c.name: c for c in session.scalars(select(Country))}
    cities = {c.name: c for c in session.scalars(select(City))}
    codes = {p.code: p for p in session.scalars(select(PostalCode))}
    for city_name, country_name, city_codes in CITIES:
        country = countries.get(country_name)
        if country is None:
            country = countries[country_name] = Country(name=country_name)
            session.add(country)
            added += 1
        city = cities.get(city_name)
        if city is None:
            city = cities[city_name] = City(name=city_name, country=country)
            session.add(city)
            added += 1
        for code in city_codes:
            if code not in codes:
                codes[code] = PostalCode(code=code, city=city)
                session.add(codes[code])
                added += 1

    all_codes = [codes[code] for _, _, city_codes in CITIES for code in city_codes]
    have = session.scalar(select(func.count(Person.id))) or 0
    if have < persons:
        existing = set(session.scalars(select(Person.name)))
        for number in range(1, persons + 1):
            name = person_name(number)
            if name in existing:
                continue
            rng = random.Random(f"{seed}:{number}")
            person = Person(name=name)
            person.addresses.append(
                Address(street=f"street {number:02d}", postal_code=rng.choice(all_codes))
            )
            session.add(person)
            added += 2
    session.flush()
    return added
