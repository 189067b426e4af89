"""Server reflection, v1 and v1alpha, so grpcurl, buf curl and Postman work as they are.

grpcio-reflection ships the ``grpc.reflection.v1alpha`` service only. The
``grpc.reflection.v1`` service newer tools ask for first has the very same
messages under another package name: the same fields with the same numbers,
so the same bytes on the wire. :func:`enable` registers one reflection
servicer under both names, parsing and writing v1 messages with the v1alpha
classes.

The error-detail types a status carries (``google.rpc.BadRequest``) are in
the descriptor pool reflection answers from (:mod:`sesscache_server.errors` imports
them), so tools decode a ``BadRequest`` instead of printing base64.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

#: The v1 service, served beside v1alpha (``reflection.SERVICE_NAME``).
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"

#: The error-detail message types statuses carry, resolvable through reflection.
ERROR_DETAIL_TYPES = (error_details_pb2.BadRequest.DESCRIPTOR.full_name,)


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) for ``service_names`` on ``server``."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer: Any = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    handler: Any = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
