"""sesscache benchmarks: ``python -m bench`` (``make bench``).

Every gRPC figure is a ratio to a *floor* measured in the same run: an
empty unary RPC served by a bare grpc.aio server (no interceptors, no
logging: :mod:`bench.floor`), measured in rounds alternating with the
sesscache rounds, seconds apart. Client and servers run in separate
processes on loopback. :mod:`bench.library` times the library without gRPC.

Modules: :mod:`bench.cli` (the command line), :mod:`bench.scenarios` (what
is measured, and how), :mod:`bench.loadgen` (the load generator process),
:mod:`bench.servers` (the server child processes), :mod:`bench.floor`,
:mod:`bench.library`, :mod:`bench.report` (targets, table, JSON, progress).
"""
