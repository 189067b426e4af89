"""The sesscache gRPC server: ``sesscache-server`` (``python -m sesscache_server``, ``make run``).

- :mod:`sesscache_server.app`: building the server and ``serve()``, with graceful
  shutdown; :mod:`sesscache_server.config`: its settings.
- :mod:`sesscache_server.servicer`: the ``sesscache.v1.SessionCache`` RPCs.
- :mod:`sesscache_server.persons`: QueryPersons' database work, run in worker threads;
  :mod:`sesscache_server.writes`: the writes'.
- :mod:`sesscache_server.validation`: checking requests and metadata.
- :mod:`sesscache_server.calls`: how each call is served (auth, errors, access log).
- :mod:`sesscache_server.errors`: exceptions to gRPC status, in one place.
- :mod:`sesscache_server.paging`: signed page tokens.
"""
