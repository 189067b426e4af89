"""The floor: an empty unary RPC served with the same setup as the sesscache server.

Same ``grpc.aio.server(interceptors=[AccessLogInterceptor(),
ErrorInterceptor()])``, same logging configuration (``logging.basicConfig``
on stderr with the server's format, at the server's default level, info, so
each call writes its access-log line), same process model (one event loop,
the default asyncio loop). The only method, :data:`METHOD`, takes and returns
raw bytes through a generic handler: no protobuf, no servicer, no work. What
a sesscache call costs beyond this is what sesscache itself costs.

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

from server.interceptors import AccessLogInterceptor, ErrorInterceptor

if TYPE_CHECKING:
    from server.interceptors import Context

SERVICE = "sesscache.bench.v1.Floor"
#: The full method name of the empty RPC.
METHOD = f"/{SERVICE}/Empty"

log = logging.getLogger("sesscache.bench.floor")


async def empty(request: bytes, context: Context) -> bytes:
    """The empty RPC: raw bytes in, no bytes out."""
    return b""


def handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    """The generic handler serving :data:`METHOD` (raw bytes, no (de)serializers)."""
    method: Any = grpc.unary_unary_rpc_method_handler(empty)
    return grpc.method_handlers_generic_handler(SERVICE, {"Empty": method})


async def serve(listen: str) -> int:
    """Serve the floor on ``listen`` until SIGTERM or SIGINT."""
    server = grpc.aio.server(interceptors=[AccessLogInterceptor(), ErrorInterceptor()])
    server.add_generic_rpc_handlers((handler(),))
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
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.floor``: parse the flags, configure logging as the server does, serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--log-level", default="info", help="as the server's --log-level")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(str(args.listen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
