"""What tests, the benchmarks, the soak and the scale check share to run a server
(see :mod:`harness.child`); no part of the server itself."""
