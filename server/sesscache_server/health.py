"""The standard health service, with ``Watch`` streams that end at shutdown.

grpc's aio health servicer keeps every ``Watch`` stream open until the client
goes away. At shutdown it reports NOT_SERVING on them, but an open stream is
still a call in flight, so ``server.stop(grace)`` would wait the whole grace
period for watchers (proxies and client-side health checking keep one open).
:class:`DrainingHealthServicer` ends each ``Watch`` stream as soon as it has
told its watcher NOT_SERVING during shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Told(Exception):
    """A Watch stream has said NOT_SERVING at shutdown: end it."""


class _WatchContext:
    """The Watch call's context, noting what it writes."""

    def __init__(self, context: Any, owner: DrainingHealthServicer) -> None:
        self._context = context
        self._owner = owner
        self.last_status: int | None = None

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        self.last_status = message.status
        if self._owner.draining and message.status == NOT_SERVING:
            raise _Told

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


# grpc_health's type hints omit the `aio` alias of its asyncio servicer.
class DrainingHealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpc's aio health servicer whose Watch streams end once drained."""

    def __init__(self) -> None:
        super().__init__()
        self.draining = False
        self._watches: dict[asyncio.Task[Any], _WatchContext] = {}

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = self._watches[task] = _WatchContext(context, self)
        try:
            await super().Watch(request, watch)
        except _Told:
            return
        except asyncio.CancelledError:
            if not self.draining:
                raise
        finally:
            del self._watches[task]

    async def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING everywhere; end the streams with nothing more to say.

        Streams that said SERVING end after writing NOT_SERVING; the others
        (already NOT_SERVING, or watching an unknown service) end now.
        """
        self.draining = True
        await super().enter_graceful_shutdown()
        for task, watch in list(self._watches.items()):
            if watch.last_status != SERVING:
                task.cancel()
