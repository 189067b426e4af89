"""Memos bounded in bytes: :class:`sesscache.memo.Memo`, and the server's two memos under load.

The servicer remembers validated QueryPersons requests by their bytes, and
the person service remembers each query's cache key. Clients choose what
they send, so both memos must stay within their byte budgets whatever
arrives: requests padded with a large unknown field are not remembered at
all, and a flood of distinct requests only ages older ones out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sesscache.memo import Memo
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_client.v1 import sesscache_pb2_grpc as pb_grpc
from sesscache_server.persons import KNOWN_KEYS_BYTES
from sesscache_server.validation import KNOWN_REQUEST_MAX, KNOWN_REQUESTS_BYTES
from tests.conftest import settings_for
from tests.support.servers import ServerThread

SERVICE = "/sesscache.v1.SessionCache/QueryPersons"


def _recount(memo: Memo[str, str]) -> int:
    """The bytes ``memo`` holds, recounted from its contents."""
    items = {**memo._old, **memo._young}
    return sum(memo._size(key, value) for key, value in items.items())


def test_two_generations_and_promotion() -> None:
    memo: Memo[str, str] = Memo(lambda key, value: 10, max_bytes=100, max_item=50)
    for index in range(5):
        memo.put(f"k{index}", f"v{index}")
    assert (len(memo), memo.bytes) == (5, 50)
    memo.put("k5", "v5")  # the young generation is full: it becomes the old one
    assert (len(memo), memo.bytes) == (6, 60)
    assert memo.get("k0") == "v0"  # read from the old generation: promoted
    assert (len(memo), memo.bytes) == (6, 60)
    for index in range(6, 10):
        memo.put(f"k{index}", f"v{index}")  # another turn: the old generation goes
    assert memo.get("k0") == "v0", "promoted, so it stayed"
    for gone in ("k1", "k2", "k3", "k4"):
        assert memo.get(gone) is None
    assert memo.get("k5") == "v5"
    assert memo.bytes == _recount(memo) <= 100


def test_repeats_are_counted_once_and_large_items_never_kept() -> None:
    memo: Memo[str, str] = Memo(
        lambda key, value: len(key) + len(value), max_bytes=1000, max_item=40
    )
    memo.put("a", "b" * 10)
    memo.put("a", "b" * 10)
    assert (len(memo), memo.bytes) == (1, 11)
    memo.put("big", "x" * 100)
    assert memo.get("big") is None
    assert (len(memo), memo.bytes) == (1, 11)
    memo.clear()
    assert (len(memo), memo.bytes) == (0, 0)


def test_bytes_never_exceed_the_budget() -> None:
    memo: Memo[str, str] = Memo(
        lambda key, value: len(key) + len(value), max_bytes=4096, max_item=300
    )
    for index in range(5000):
        key = f"key-{index}"
        memo.put(key, "v" * (index % 400))
        if index % 3 == 0:
            memo.get(f"key-{index // 2}")
        assert memo.bytes <= 4096
    assert memo.bytes == _recount(memo)
    assert 0 < len(memo) < 5000


# -- the server's memos ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    database: Path = tmp_path_factory.mktemp("memo") / "sesscache.db"
    with ServerThread(settings_for(f"sqlite:///{database}")) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as opened:
        yield opened


def _padded(request: pb.QueryPersonsRequest, size: int) -> bytes:
    """``request`` with an unknown length-delimited field (number 1000) of ``size`` bytes."""
    header = bytearray()
    for number in (1000 << 3 | 2, size):
        value = number
        while value > 0x7F:
            header.append(value & 0x7F | 0x80)
            value >>= 7
        header.append(value)
    return request.SerializeToString() + bytes(header) + b"\x02" * size


def test_padded_requests_are_not_remembered(server: ServerThread, channel: grpc.Channel) -> None:
    assert server.running is not None
    memo = server.running.servicer._known_requests
    send = channel.unary_unary(
        SERVICE, request_serializer=lambda data: data, response_deserializer=lambda data: data
    )
    before = (len(memo), memo.bytes)
    for index in range(300):
        request = pb.QueryPersonsRequest(ids=[10**9 + index], view=pb.PERSON_VIEW_BASIC)
        # Under max_request_bytes (256 KiB): parsed and answered, never remembered.
        send(_padded(request, 200 * 1024), timeout=30)
    assert (len(memo), memo.bytes) == before
    # 1 MiB of padding is refused before it is parsed.
    with pytest.raises(grpc.RpcError) as refused:
        send(_padded(pb.QueryPersonsRequest(ids=[1]), 1 << 20), timeout=30)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (len(memo), memo.bytes) == before
    # The same requests unpadded are remembered (so the check above means something).
    for index in range(3):
        send(pb.QueryPersonsRequest(ids=[10**9 + index]).SerializeToString(), timeout=30)
    assert len(memo) == before[0] + 3
    assert memo.bytes <= KNOWN_REQUESTS_BYTES
    assert memo.max_item == KNOWN_REQUEST_MAX


def test_a_flood_of_distinct_requests_stays_in_budget(
    server: ServerThread, channel: grpc.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.running is not None
    memo = server.running.servicer._known_requests
    keys = server.running.servicer.service._keys
    assert memo.max_bytes == KNOWN_REQUESTS_BYTES
    assert keys.max_bytes == KNOWN_KEYS_BYTES
    # A smaller budget on the running memos, so a few hundred requests go round it.
    monkeypatch.setattr(memo, "max_bytes", 64 * 1024)
    monkeypatch.setattr(keys, "max_bytes", 256 * 1024)
    stub = pb_grpc.SessionCacheStub(channel)
    sent = 600
    for index in range(sent):
        stub.QueryPersons(
            pb.QueryPersonsRequest(name=f"nobody {index}", view=pb.PERSON_VIEW_BASIC), timeout=30
        )
        assert memo.bytes <= 64 * 1024
    assert 0 < len(memo) < sent
    assert memo.bytes == _recount(memo)  # type: ignore[arg-type]
    for index in range(60):
        start = 2 * 10**9 + index * 1000
        stub.QueryPersons(
            pb.QueryPersonsRequest(ids=range(start, start + 1000), view=pb.PERSON_VIEW_BASIC),
            metadata=(("session-id", "memo-keys"),),
            timeout=30,
        )
        assert keys.bytes <= 256 * 1024
    assert 0 < len(keys) < 60 + sent
    assert keys.bytes == _recount(keys)  # type: ignore[arg-type]
