"""The asyncio client (:class:`AsyncClient`) against real servers on loopback.

Every RPC goes through ``AsyncClient``/``AsyncSession`` to the real server of the
``server`` fixture; errors are compared with what the sync :class:`Client` raises
for the same call. The client options are checked by what they do: a retry
policy retries a real ``UNAVAILABLE`` (a servicer here fails the first attempt),
keepalive notices a connection that went silent (a TCP relay here stops passing
bytes), an injected ``grpc.aio`` channel outlives the client.

grpc.aio keeps process-wide state tied to the event loops it runs on, so every
coroutine of this module runs on one client loop in its own thread (the servers
have theirs, see :mod:`tests.support.servers`), through :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sesscache_client import (
    AsyncClient,
    AsyncEventStream,
    CacheEntryOrder,
    CacheEventType,
    CacheStatus,
    Client,
    InvalidArgument,
    Keepalive,
    PersonView,
    RetryPolicy,
    SesscacheError,
    SessionNotFound,
    Unavailable,
    cache_digest,
)
from sesscache_client.v1 import sesscache_pb2, sesscache_pb2_grpc
from tests.support.servers import ServerThread
from tests.test_client_unit import _self_signed

T = TypeVar("T")


@functools.cache
def _client_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="test-aio-clients", daemon=True).start()
    return loop


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run ``coroutine`` on the client loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, _client_loop()).result(timeout)


# Every RPC through the async client.


def test_session_calls_query_keys_stats_invalidate_end(
    server: ServerThread, session_id: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.target, timeout=30) as client:
            async with client.session(session_id) as session:
                first = await session.query_persons(name="person 10")
                again = await session.query_persons(name="person 10")
                assert CacheStatus(first.cache_status) is CacheStatus.MISS
                assert CacheStatus(again.cache_status) is CacheStatus.HIT
                assert first.sql_statements > 0
                assert again.sql_statements == 0
                assert [p.name for p in again.persons] == ["person 10"]

                (entry,) = await session.list_cache_keys(order_by="hits")
                assert entry.digest == cache_digest(first.cache_key)
                assert entry.hits == 1

                stats = await session.get_stats()
                assert (stats.session.hits, stats.session.misses) == (1, 1)
                before = await session.reset_stats()
                assert before.hits == 1
                assert (await session.get_stats()).session.hits == 0

                removed = await session.invalidate_key(entry.digest)
                assert [e.key for e in removed] == [first.cache_key]
                assert await session.invalidate_key(entry.digest) == []

                await session.query_persons(name="person 11", view="basic")
                (by_query,) = await session.invalidate_query(name="person 11", view="basic")
                assert by_query.key.startswith("SELECT")
                await session.query_persons(name="person 12")
                assert len(await session.clear_cache()) == 1

                ended = await session.end()
                assert ended.existed
                await session.query_persons(name="person 12")  # starts it afresh
            # Leaving the block ended it.
            with pytest.raises(SessionNotFound):
                await client.session(session_id).list_cache_keys()
            assert not (await client.session(session_id).end()).existed

    run(scenario())


def test_client_calls_without_a_session(server: ServerThread, session_id: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.target, timeout=30) as client:
            assert await client.health() == "SERVING"
            assert await client.health("no.such.Service") == "SERVICE_UNKNOWN"
            info = await client.server_info()
            assert info.version

            sessionless = await client.query_persons(ids=[1, 2], view=PersonView.BASIC)
            assert CacheStatus(sessionless.cache_status) is CacheStatus.MISS
            assert [p.id for p in sessionless.persons] == [1, 2]
            ids = [p.id async for p in client.iter_persons(page_size=2, ids=[1, 2, 3])]
            assert ids == [1, 2, 3]

            session = client.session(session_id)
            await session.query_persons(name="person 20")
            sessions = await client.list_sessions(page_size=1)  # follows every page
            (mine,) = [info for info in sessions if info.id == session_id]
            (entry,) = await client.list_cache_keys_of(mine.handle, order_by=CacheEntryOrder.SIZE)
            assert entry.region == "local_session"

            assert (await client.get_stats()).server.sessions >= 1
            assert (await client.server_stats()).misses >= 1
            await client.reset_server_stats()
            await client.invalidate_shared_region()
            assert (await client.end_idle_sessions(3600)).ended == 0
            await session.end()

    run(scenario())


def test_iteration_matches_the_sync_client(server: ServerThread) -> None:
    async def listed() -> list[int]:
        async with AsyncClient(server.target, timeout=30) as client:
            return [p.id async for p in client.iter_persons(name_last="person 3", page_size=7)]

    with Client(server.target, timeout=30) as sync:
        expected = [p.id for p in sync.iter_persons(name_last="person 3", page_size=7)]
    assert len(expected) > 7, "spans several pages"
    assert run(listed()) == expected


def test_watch_streams_events_and_counts_them(server: ServerThread, session_id: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.target, timeout=30) as client:
            session = client.session(session_id)
            async with session.watch(types=["miss", CacheEventType.HIT]) as events:
                assert isinstance(events, AsyncEventStream)
                await session.query_persons(name="person 30")
                await session.query_persons(name="person 30")
                types = [CacheEventType((await anext(events)).type) for _ in range(2)]
                assert types == [CacheEventType.MISS, CacheEventType.HIT]
                assert (events.received, events.lost) == (2, 0)
                assert "active, received=2, lost=0" in repr(events)
                events.cancel()
                assert [event async for event in events] == []
                assert "cancelled" in repr(events)

            # Awaited (not entered): a bounded stream ends quietly when its time is up.
            quiet = await client.watch_all(types=["expire"], duration=0.3)
            assert [event async for event in quiet] == []

            # watch_all sees another session's events.
            async with client.watch_all(types=["session_end"]) as everyone:
                await session.end()
                ended = await anext(everyone)
                assert CacheEventType(ended.type) is CacheEventType.SESSION_END

    run(scenario())


def test_cancelling_a_reader_task_is_not_swallowed(server: ServerThread, session_id: str) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(server.target, timeout=30) as client,
            client.session(session_id).watch() as events,
        ):
            reader = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.1)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert not events.cancelled

    run(scenario())


# Errors: the same tree as the sync client.


def _sync_error(target: str, call: str, session_id: str) -> SesscacheError:
    with Client(target, timeout=30) as client:
        try:
            if call == "bad page size":
                client.session(session_id).query_persons(page_size=-1)
            elif call == "no session":
                client.session(session_id).list_cache_keys()
            else:
                client.list_cache_keys_of("0123456789abcdef")
        except SesscacheError as error:
            return error
    raise AssertionError(f"{call}: no error")


async def _async_error(target: str, call: str, session_id: str) -> SesscacheError:
    async with AsyncClient(target, timeout=30) as client:
        try:
            if call == "bad page size":
                await client.session(session_id).query_persons(page_size=-1)
            elif call == "no session":
                await client.session(session_id).list_cache_keys()
            else:
                await client.list_cache_keys_of("0123456789abcdef")
        except SesscacheError as error:
            return error
    raise AssertionError(f"{call}: no error")


@pytest.mark.parametrize("call", ["bad page size", "no session", "no such handle"])
def test_errors_map_like_the_sync_client(server: ServerThread, session_id: str, call: str) -> None:
    expected = _sync_error(server.target, call, session_id)
    error = run(_async_error(server.target, call, session_id))
    assert type(error) is type(expected)
    assert (error.code, str(error)) == (expected.code, str(expected))
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    if isinstance(expected, InvalidArgument):
        assert isinstance(error, InvalidArgument)
        assert error.field_violations == expected.field_violations
        assert error.field_violations[0][0] == "page_size"


def test_local_errors_and_an_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(InvalidArgument) as bad_id:
                client.session("not valid!")
            assert bad_id.value.field_violations[0][0] == "session-id"
            with pytest.raises(InvalidArgument):
                await client.session().list_cache_keys(order_by="bogus")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="duration"):
                client.watch_all(duration=0)
            with pytest.raises(Unavailable) as down:
                await client.health()
            assert down.value.connection_failed
            # Leaving a session block: ending it fails UNAVAILABLE, which is let go;
            # the block's own error is kept.
            async with client.session():
                pass
            with pytest.raises(KeyError):
                async with client.session():
                    raise KeyError("the block's")
        with pytest.raises(RuntimeError, match="closed"):
            await client.health()

    run(scenario())


# The retry policy, on a servicer that fails the first attempt of each call.


class FailingFirst(sesscache_pb2_grpc.SessionCacheServicer):
    """Answers GetStats and Invalidate; the first attempt after :meth:`reset` is UNAVAILABLE."""

    def __init__(self) -> None:
        self.attempts = 0
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.attempts = 0

    def _attempt(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.attempts += 1
            first = self.attempts == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")

    def GetStats(
        self, request: sesscache_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> sesscache_pb2.GetStatsResponse:
        self._attempt(context)
        return sesscache_pb2.GetStatsResponse(server=sesscache_pb2.CacheStats(hits=7))

    def Invalidate(
        self, request: sesscache_pb2.InvalidateRequest, context: grpc.ServicerContext
    ) -> sesscache_pb2.InvalidateResponse:
        self._attempt(context)
        return sesscache_pb2.InvalidateResponse()


@pytest.fixture
def failing_first() -> Iterator[tuple[str, FailingFirst]]:
    servicer = FailingFirst()  # type: ignore[abstract]  # the other RPCs: UNIMPLEMENTED
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.server(pool)
        sesscache_pb2_grpc.add_SessionCacheServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}", servicer
        finally:
            server.stop(None).wait()


def test_retry_policy_retries_an_unavailable_read(
    failing_first: tuple[str, FailingFirst],
) -> None:
    target, servicer = failing_first

    async def stats(policy: RetryPolicy | dict[str, object] | None) -> int:
        async with AsyncClient(target, timeout=10, retry_policy=policy) as client:
            return (await client.session().get_stats()).server.hits

    async def clear(policy: RetryPolicy) -> None:
        async with AsyncClient(target, timeout=10, retry_policy=policy) as client:
            await client.session().clear_cache()

    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    assert run(stats(policy)) == 7
    assert servicer.attempts == 2, "the first attempt failed, the retry succeeded"

    servicer.reset()
    with pytest.raises(Unavailable, match="not yet"):
        run(stats(None))
    assert servicer.attempts == 1, "no policy: no retry"

    servicer.reset()
    as_config: dict[str, object] = {"maxAttempts": 2, "initialBackoff": "0.01s"}
    as_config |= {"maxBackoff": "0.01s", "backoffMultiplier": 1}
    assert run(stats(as_config)) == 7
    assert servicer.attempts == 2, "the service config's own form"

    servicer.reset()
    with pytest.raises(Unavailable):
        run(clear(policy))
    assert servicer.attempts == 1, "Invalidate changes the cache: never retried"

    servicer.reset()
    with Client(target, timeout=10, retry_policy=policy) as sync:
        assert sync.session().get_stats().server.hits == 7
    assert servicer.attempts == 2, "the sync client gets the same service config"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"maxAttempts": 9}, "max_attempts must be 2 to 5"),
        ({"maxAttempts": 3, "initialBackoff": "soon"}, "initial_backoff must be seconds"),
        ({"retryableStatusCodes": ["OK"]}, "not a retryable gRPC status code"),
        ({"retries": 3}, "unknown retry policy key 'retries'"),
    ],
)
def test_bad_retry_policies_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AsyncClient("127.0.0.1:1", retry_policy=config)


# Keepalive, through a relay that can go silent.

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class SilentRelay:
    """A TCP relay to ``upstream`` that, once :attr:`silent`, drops every byte both ways
    (a dead peer or a broken path: the connection stays open but nothing arrives)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.silent = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        host, port = self.upstream.rsplit(":", 1)
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection((host, int(port)))
            self._sockets += [down, up]
            for source, sink in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.silent:
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.mark.parametrize("keepalive", [Keepalive(time=0.3, timeout=0.5), None])
def test_keepalive_notices_a_silent_connection(
    server: ServerThread, session_id: str, keepalive: Keepalive | None
) -> None:
    relay = SilentRelay(server.target)

    async def scenario() -> str:
        async with (
            AsyncClient(relay.target, keepalive=keepalive) as client,
            client.session(session_id).watch() as events,
        ):
            relay.silent = True
            started = time.monotonic()
            try:
                await asyncio.wait_for(anext(events), 4)
            except Unavailable:
                assert time.monotonic() - started < 4
                return "noticed"
            except TimeoutError:
                return "still waiting"
            return "event"

    try:
        outcome = run(scenario())
    finally:
        relay.close()
    # Keepalive pings go unanswered, so gRPC closes the connection: the stream fails
    # UNAVAILABLE. Without keepalive nothing tells the client the connection is dead.
    assert outcome == ("noticed" if keepalive is not None else "still waiting")


def test_keepalive_channel_options() -> None:
    options = dict(Keepalive(time=30, timeout=5, permit_without_calls=True).channel_options())
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.ping_timeout_ms"] == 5_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    with pytest.raises(ValueError, match="keepalive time"):
        Keepalive(time=0)


# Channel injection.


def test_an_injected_channel_is_not_closed(server: ServerThread) -> None:
    async def scenario() -> None:
        channel = grpc.aio.insecure_channel(server.target)
        try:
            async with AsyncClient(channel=channel, timeout=30) as client:
                assert client.channel is channel
                assert await client.health() == "SERVING"
            assert client.closed
            # Still usable by its owner after the client is gone.
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close(None)

        # The client's own channel is closed with it.
        async with AsyncClient(server.target, timeout=30) as owner:
            await owner.health()
        with pytest.raises(grpc.aio.UsageError):
            await health_pb2_grpc.HealthStub(owner.channel).Check(health_pb2.HealthCheckRequest())

    run(scenario())


def test_an_injected_channel_takes_no_channel_options() -> None:
    async def scenario() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        try:
            with pytest.raises(ValueError, match="your own channel"):
                AsyncClient(channel=channel, retry_policy=RetryPolicy())
            with pytest.raises(ValueError, match="your own channel"):
                AsyncClient(channel=channel, keepalive=Keepalive())
            with pytest.raises(ValueError, match="TLS"):
                AsyncClient(channel=channel, root_certificates=b"pem")
        finally:
            await channel.close(None)

    run(scenario())


def test_mutual_tls(make_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    server_cert, server_key = _self_signed("localhost")
    client_cert, client_key = _self_signed("sesscache client")
    for name, data in [("server.pem", server_cert), ("server.key", server_key)]:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "clients.pem").write_bytes(client_cert)
    server = make_server(
        f"sqlite:///{tmp_path / 'tls.db'}",
        tls_cert=str(tmp_path / "server.pem"),
        tls_key=str(tmp_path / "server.key"),
        tls_client_ca=str(tmp_path / "clients.pem"),
    )

    async def scenario() -> None:
        async with AsyncClient(
            server.target,
            timeout=30,
            root_certificates=server_cert,
            private_key=client_key,
            certificate_chain=client_cert,
        ) as member:
            assert "tls=True" in repr(member)
            assert await member.health() == "SERVING"
            page = await member.query_persons(name="person 10")
            assert [p.name for p in page.persons] == ["person 10"]
        async with AsyncClient(server.target, timeout=10, root_certificates=server_cert) as anon:
            with pytest.raises(Unavailable):
                await anon.health()

    run(scenario())


# Enum names.


def test_enums_name_the_proto_values(server: ServerThread, session_id: str) -> None:
    async def query() -> sesscache_pb2.QueryPersonsResponse:
        async with (
            AsyncClient(server.target, timeout=30) as client,
            client.session(session_id) as session,
        ):
            return await session.query_persons(name="person 40")

    response = run(query())
    assert type(response.cache_status) is int, "protobuf reads enums as ints"
    status = CacheStatus(response.cache_status)
    assert repr(status) == "<CacheStatus.MISS: 2>"
    assert (str(status), status.proto_name) == ("MISS", "CACHE_STATUS_MISS")
    assert "cache_status: CACHE_STATUS_MISS" in repr(response)
    # Derived from the descriptors: every proto value, nothing else.
    for derived, proto in [
        (CacheStatus, sesscache_pb2.CacheStatus),
        (CacheEventType, sesscache_pb2.CacheEventType),
        (PersonView, sesscache_pb2.PersonView),
        (CacheEntryOrder, sesscache_pb2.CacheEntryOrder),
    ]:
        assert [(m.proto_name, int(m)) for m in derived] == list(proto.items())
    assert repr(CacheStatus(99)) == "<CacheStatus.99: 99>", "a value this client does not know"


def test_both_clients_have_the_same_calls() -> None:
    def calls(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert calls(Client) == calls(AsyncClient)
    from sesscache_client import AsyncSession, Session

    assert calls(Session) == calls(AsyncSession)
    # One description each: the sync and the async method are the same object.
    assert Client.__dict__.get("get_stats") is None, "inherited, not redefined"
    assert Client.get_stats is AsyncClient.get_stats
    assert Session.watch is AsyncSession.watch


# The README's examples run as they are.

ROOT = Path(__file__).resolve().parents[1]


def _readme_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The Python client library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_examples_run(server: ServerThread, tmp_path: Path) -> None:
    sync_example, async_example = _readme_examples()
    outputs = []
    for example in (sync_example, async_example):
        code = example.replace("127.0.0.1:50051", server.target)
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.splitlines())
    sync_lines, async_lines = outputs
    assert sync_lines[0] == "MISS HIT"
    assert sync_lines[1].endswith(" local_session 1")
    assert async_lines[0].startswith("MISS ")
    assert async_lines[1:] == ["[1, 2, 3]", "SERVING 1"]


def test_the_readme_names_the_retried_methods() -> None:
    from sesscache_client._surface import RETRIED

    readme = (ROOT / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `retry_policy=None` |")]
    reads = row.split("idempotent reads only (", 1)[1].split(")", 1)[0]
    named = {name.strip(" `") for name in reads.split(",")}
    assert named == {"health" if service.endswith("Health") else name for service, name in RETRIED}
