"""The sesscache gRPC server: ``python -m server`` (or ``make run``).

- :mod:`server.app`: building the server and ``serve()``, with graceful
  shutdown; :mod:`server.config`: its settings.
- :mod:`server.servicer`: the ``sesscache.v1.SessionCache`` RPCs.
- :mod:`server.service`: the database work of a call, run in worker threads.
- :mod:`server.requests`: validation of requests and metadata.
- :mod:`server.interceptors`: per-call logging and error mapping.
- :mod:`server.errors`: exceptions to gRPC status, in one place.
- :mod:`server.paging`: signed page tokens.
"""
