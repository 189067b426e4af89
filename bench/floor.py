"""The floor: an empty unary RPC on a bare ``grpc.aio.server()``.

The physical floor of Python gRPC on this machine: no interceptors, no
logging, the default asyncio loop, and one method, :data:`METHOD`, that takes
and returns raw bytes through a generic handler (no protobuf, no servicer, no
work). What a sesscache call costs beyond this is what sesscache costs,
its call wrapper and access log included.

``--same-stack`` serves the same empty method through sesscache's own call
wrapper and access log instead (:mod:`sesscache_server.calls`) (the floor earlier runs measured
against; kept to show what that stack costs, never as the reference).

``python -m bench.floor --listen 127.0.0.1:0`` logs
``floor serving on HOST:PORT`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from sesscache_server.calls import AccessLog, CallWrapper

if TYPE_CHECKING:
    from sesscache_server.calls import Context

SERVICE = "sesscache.bench.v1.Floor"
#: The full method name of the empty RPC.
METHOD = f"/{SERVICE}/Empty"

log = logging.getLogger("sesscache.bench.floor")


async def empty(request: bytes, context: Context) -> bytes:
    """The empty RPC: raw bytes in, no bytes out."""
    return b""


def handler(access: AccessLog | None = None) -> grpc.GenericRpcHandler[bytes, bytes]:
    """The generic handler serving :data:`METHOD` (raw bytes, no (de)serializers);
    with ``access``, through sesscache's call wrapper."""
    behavior: Any = empty
    if access is not None:
        behavior = CallWrapper(access=access).unary("Empty", empty, bytes)
    method: Any = grpc.unary_unary_rpc_method_handler(behavior)
    return grpc.method_handlers_generic_handler(SERVICE, {"Empty": method})


async def serve(listen: str, *, same_stack: bool = False) -> int:
    """Serve the floor on ``listen`` until SIGTERM or SIGINT."""
    access = AccessLog() if same_stack else None
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(access),))
    if access is not None:
        flushing = asyncio.create_task(access.run())
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as error:
        log.error("cannot listen on %s: %s", listen, error)
        return 1
    await server.start()
    log.info("floor serving on %s:%d", listen.rsplit(":", 1)[0], port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(1.0)
    if access is not None:
        flushing.cancel()
        access.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.floor``: parse the flags, configure logging as the server does, serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument(
        "--same-stack",
        action="store_true",
        help="serve through sesscache's call wrapper and info-level access log (not bare)",
    )
    args = parser.parse_args(argv)
    # The serving line is the only log line, bare or not; the access log only
    # writes with --same-stack.
    logging.basicConfig(
        level="INFO" if args.same_stack else "WARNING",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(str(args.listen), same_stack=bool(args.same_stack)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
