"""Generated code of the ``sesscache.v1`` gRPC API, for the client.

Built from ``protos/sesscache/v1/sesscache.proto`` when the package is built
(and by ``make setup`` in a checkout), not kept in git. The descriptors are
those of ``sesscache.v1``: with the server's own copy (``sesscache.v1``) in the
same process, both register the one identical file.
"""
