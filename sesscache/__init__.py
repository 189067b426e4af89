"""sesscache: SQLAlchemy ORM query results cached on the caller's own Session.

The library behind the sesscache gRPC service:

- :mod:`sesscache.models`: the typed ORM model (Person, Address, PostalCode,
  City, Country) and :mod:`sesscache.fixtures`, its seeded fixture data.
- :mod:`sesscache.caching`: the ``FromCache`` and ``RelationshipCache`` query
  options and the ``do_orm_execute`` hook that serves them.
- :mod:`sesscache.backend`: the session-local dogpile.cache backend and its
  inspectable store; :mod:`sesscache.regions`: the regions sesscache uses.
- :mod:`sesscache.registry`: the session registry scoped by the caller's
  session id.
- :mod:`sesscache.db`: engines, schema set-up and seeding.
- :mod:`sesscache.v1`: the generated gRPC/protobuf code of the ``sesscache.v1``
  API (generated from ``protos/`` by ``make proto``).

Importing the package has no side effects.
"""

__version__ = "0.1.0"
