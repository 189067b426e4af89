"""The hostile soak's traffic: the honest principal ``alice`` and the hostile ``bob``.

Each runs in processes of its own (``spawn``), apart from the soak's own
process, so the clients' work never shares an interpreter lock with the
thread that times alice's calls or with another attack:

* :func:`alice_main`: ``alice_clients`` threads, each with its own client
  and one session per stretch of load, repeating the small set
  :data:`ALICE_QUERIES` with a short think time, so almost every call is a
  HIT; each hit is timed and every answer checked against the database. One
  more thread holds one ``WatchCacheEvents`` stream on her first session
  (session-end, eviction and expiry events only), to see that an honest
  watcher is not refused.
* :func:`bob_main` ``"watch"``: a watch storm. Bob wants ``watchers`` streams
  open at once (more than ``max_watchers_per_principal``): a refused open is
  retried after a short pause, every held stream is read slowly (one event
  per ``read_interval``), and the oldest is closed and reopened every
  second, so opening never stops.
* :func:`bob_main` ``"big"``: padded requests, QueryPersons whose bytes carry
  ``padding`` bytes of an unknown length-delimited field (number 1000, each
  one distinct), sent raw through a generic ``unary_unary`` method; and
  requests of 1,000 random ids. Both go to the sessions the storm watches.
* :func:`bob_main` ``"churn"``: ``churn_rate`` new session ids per second,
  each with one query, never ended.

The soak steers every process with one shared :class:`Phase` value:
``WARM`` (alice runs; each bob process makes its calls once, small, then
reports ready), ``PAUSE`` (alice ends her sessions and waits), ``QUIET`` and
``HOSTILE`` (alice runs unchanged; bob only in ``HOSTILE``), ``STOP``. Each
process then puts its :class:`Tally` on the result queue: the status of
every call by phase and kind of call (``OK`` or the gRPC code's name; a
stream closed by its own client counts as ``OK``), and for alice her hit
latencies by phase.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from harness.child import die_with_parent
from sesscache_client import Client, EventStream, SesscacheError, Session
from sesscache_client.v1 import sesscache_pb2 as pb
from soak.load import Truth, person_name

WARM, PAUSE, QUIET, HOSTILE, STOP = range(5)
PHASE_NAMES = {WARM: "warm", PAUSE: "pause", QUIET: "quiet", HOSTILE: "hostile", STOP: "stop"}
#: alice's queries: few enough that each of her sessions keeps them all.
ALICE_QUERIES: tuple[dict[str, Any], ...] = (
    {"name": person_name(1), "view": "basic"},
    {"name": person_name(2), "view": "full"},
    {"name": person_name(3), "view": "basic"},
    {"ids": (4, 5, 6), "view": "full"},
    {"ids": (7, 11, 13, 17), "view": "basic"},
    {"name_first": person_name(20), "name_last": person_name(24), "view": "basic"},
)
QUERY_METHOD = "/sesscache.v1.SessionCache/QueryPersons"
#: The unknown field padded requests carry (length-delimited).
PADDING_FIELD = 1000
#: Sessions bob's big requests go to, and his watch storm watches.
WATCHED_SESSIONS = 4
#: Threads sharing bob's churn rate, so one slow call does not hold it down.
CHURN_THREADS = 4
MAX_ERRORS_KEPT = 20
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Traffic:
    """What the processes need to know (picklable: it crosses to spawned processes)."""

    target: str
    tokens: dict[str, str]  # principal -> bearer token
    truth: Truth
    seed: int
    alice_clients: int = 4
    think_ms: float = 2.0
    watchers: int = 12
    read_interval: float = 1.0
    padded_rate: float = 10.0
    padding: int = 1024 * 1024
    ids_rate: float = 10.0
    churn_rate: float = 50.0


@dataclass
class Tally:
    """What one process saw; put on the result queue when it ends."""

    who: str
    #: (phase, kind of call, status) -> calls.
    statuses: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (phase, hit | miss | bypass) -> QueryPersons responses (alice).
    cache: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: phase -> seconds each HIT took, as the client saw it (alice).
    hit_seconds: dict[str, list[float]] = field(default_factory=dict)
    #: Most watch streams open at once (bob's watch storm).
    peak_watchers: int = 0
    #: Wrong answers and failures of the soak itself (a client thread died).
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, phase: str, kind: str, status: str) -> None:
        with self.lock:
            self.statuses[phase, kind, status] += 1

    def error(self, text: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(text)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


class Phase:
    """The soak's current phase, shared by every process (a ``RawValue("i")``)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> int:
        return int(self._value.value)

    def set(self, phase: int) -> None:
        self._value.value = phase

    def wait_for(self, wanted: Callable[[int], bool], poll: float = 0.02) -> int:
        """Block until ``wanted(phase)``; return the phase. Ends the process when the
        soak (its parent) is gone."""
        parent = os.getppid()
        while not wanted(phase := self.get()):
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(poll)
        return phase


def status_of(error: BaseException) -> str:
    """The gRPC status name of a failed call."""
    if isinstance(error, SesscacheError):
        return error.code.name
    if isinstance(error, grpc.Call):
        return error.code().name
    return "UNKNOWN"


class Pacer:
    """Sleeps so that successive :meth:`wait` calls return ``rate`` times a second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def wait(self) -> None:
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # far behind (a slow server): do not burst to catch up
            self.next = time.monotonic()


def _paced(send: Callable[[int], None], rate: float, phase: Phase) -> None:
    """``send(0)``, ``send(1)``, ... ``rate`` times a second while the phase is HOSTILE."""
    if rate <= 0:
        return
    pacer = Pacer(rate)
    number = 0
    while phase.get() == HOSTILE:
        send(number)
        number += 1
        pacer.wait()


class _Reader(threading.Thread):
    """Reads a stream in a thread, pausing ``read_interval`` after each event, until it
    is cancelled or the server ends it; :attr:`status` is then the stream's status."""

    def __init__(self, stream: EventStream, *, read_interval: float) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.read_interval = read_interval
        self.status = "OK"
        self.start()

    def run(self) -> None:
        try:
            for _ in self.stream:
                if self.read_interval:
                    time.sleep(self.read_interval)
        except SesscacheError as error:
            self.status = status_of(error)


_CACHE_STATUS = {
    pb.CACHE_STATUS_HIT: "hit",
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_BYPASS: "bypass",
}


# -- alice -------------------------------------------------------------------------------


def alice_main(traffic: Traffic, phase_value: Any, ready: Any, results: Any) -> None:
    """alice's process (see the module docstring): "alice" on ``ready`` once her
    clients run, her :class:`Tally` on ``results`` once the soak stops."""
    die_with_parent()
    phase = Phase(phase_value)
    tally = Tally("alice")
    threads = [
        threading.Thread(target=_alice_client, args=(traffic, phase, tally, n), daemon=True)
        for n in range(traffic.alice_clients)
    ]
    threads.append(threading.Thread(target=_alice_watch, args=(traffic, phase, tally), daemon=True))
    for thread in threads:
        thread.start()
    ready.put(tally.who)
    for thread in threads:
        thread.join()
    results.put(tally)


def _expected(truth: Truth, query: dict[str, Any]) -> list[str]:
    if "name" in query:
        return truth.named(query["name"])
    if "ids" in query:
        return truth.with_ids(query["ids"])
    return truth.in_range(query["name_first"], query["name_last"])


def _alice_client(traffic: Traffic, phase: Phase, tally: Tally, index: int) -> None:
    rng = random.Random(traffic.seed * 1000 + index)
    think = traffic.think_ms / 1000
    expected = [_expected(traffic.truth, query) for query in ALICE_QUERIES]
    try:
        with Client(traffic.target, timeout=CALL_TIMEOUT, token=traffic.tokens["alice"]) as client:
            while (now := phase.wait_for(lambda p: p in (WARM, QUIET, HOSTILE, STOP))) != STOP:
                # One session per stretch of load: the warm-up; quiet and hostile together.
                stretch = (WARM,) if now == WARM else (QUIET, HOSTILE)
                session = client.session(f"alice-{index}-{PHASE_NAMES[now]}")
                while (now := phase.get()) in stretch:
                    number = rng.randrange(len(ALICE_QUERIES))
                    _alice_query(session, number, expected[number], PHASE_NAMES[now], tally)
                    if think:
                        time.sleep(rng.uniform(0, 2 * think))
                last = PHASE_NAMES[stretch[-1]]
                try:
                    session.end()
                except SesscacheError as error:
                    tally.count(last, "end", status_of(error))
                else:
                    tally.count(last, "end", "OK")
    except Exception as error:  # a bug of the soak: an error, never silent
        tally.error(f"alice client {index} died: {error!r}")


def _alice_query(
    session: Session, number: int, expected: list[str], phase: str, tally: Tally
) -> None:
    """One of alice's queries, timed; its answer checked."""
    started = time.perf_counter()
    try:
        response = session.query_persons(**ALICE_QUERIES[number])
    except SesscacheError as error:
        tally.count(phase, "query", status_of(error))
        return
    seconds = time.perf_counter() - started
    tally.count(phase, "query", "OK")
    status = _CACHE_STATUS.get(response.cache_status, "?")
    with tally.lock:
        tally.cache[phase, status] += 1
        if status == "hit":
            tally.hit_seconds.setdefault(phase, []).append(seconds)
    names = [person.name for person in response.persons]
    if names != expected:
        query = ALICE_QUERIES[number]
        tally.error(f"alice {session.id}: {query}: expected {expected}, got {names}")


def _alice_watch(traffic: Traffic, phase: Phase, tally: Tally) -> None:
    """One stream on alice's first measured session, open through quiet and hostile."""
    if phase.wait_for(lambda p: p in (QUIET, HOSTILE, STOP)) == STOP:
        return
    name = PHASE_NAMES[phase.get()]
    try:
        with Client(traffic.target, token=traffic.tokens["alice"]) as client:
            try:
                stream = client.session("alice-0-quiet").watch(
                    types=["evict", "expire", "session_end"]
                )
            except SesscacheError as error:
                tally.count(name, "watch", status_of(error))
                return
            reader = _Reader(stream, read_interval=0.0)
            phase.wait_for(lambda p: p == STOP or not reader.is_alive(), poll=0.1)
            stream.cancel()
            reader.join(10)
            tally.count(name, "watch", reader.status)
    except Exception as error:
        tally.error(f"alice watcher died: {error!r}")


# -- bob -------------------------------------------------------------------------------


def bob_main(kind: str, traffic: Traffic, phase_value: Any, ready: Any, results: Any) -> None:
    """One of bob's attacks (``watch``, ``big`` or ``churn``) in a process of its own.

    First each of its calls once, small (the warm-up: the server's start figure
    has seen them), then ``f"bob {kind}"`` on ``ready``; the attack itself
    through the hostile phase; its :class:`Tally` on ``results`` at the end.
    """
    die_with_parent()
    phase = Phase(phase_value)
    tally = Tally(f"bob {kind}")
    attack = {"watch": _watch_storm, "big": _big_requests, "churn": _churn}[kind]
    told = False
    try:
        with Client(traffic.target, timeout=CALL_TIMEOUT, token=traffic.tokens["bob"]) as client:
            attack(client, traffic, phase, tally, warm=True)
            ready.put(tally.who)
            told = True
            if phase.wait_for(lambda p: p in (HOSTILE, STOP)) == HOSTILE:
                attack(client, traffic, phase, tally, warm=False)
    except Exception as error:  # a bug of the soak: an error, never silent
        tally.error(f"bob {kind} died: {error!r}")
    if not told:
        ready.put(tally.who)
    results.put(tally)


def _watched(number: int, *, warm: bool = False) -> str:
    return f"bob-watched-{number % WATCHED_SESSIONS}{'-warm' if warm else ''}"


def _watch_storm(
    client: Client, traffic: Traffic, phase: Phase, tally: Tally, *, warm: bool
) -> None:
    if warm:
        try:
            stream = client.session(_watched(0, warm=True)).watch()
        except SesscacheError as error:
            tally.count("warm", "watch", status_of(error))
        else:
            stream.cancel()
            tally.count("warm", "watch", "OK")
        return
    held: list[_Reader] = []
    recycled = time.monotonic()
    number = 0
    while phase.get() == HOSTILE:
        for reader in [r for r in held if not r.is_alive()]:
            held.remove(reader)
            tally.count("hostile", "watch", reader.status)
        if len(held) < traffic.watchers:
            number += 1
            try:
                stream = client.session(_watched(number)).watch()
            except SesscacheError as error:
                tally.count("hostile", "watch", status_of(error))
                time.sleep(0.05)  # refused: try again soon
                continue
            held.append(_Reader(stream, read_interval=traffic.read_interval))
            tally.peak_watchers = max(tally.peak_watchers, len(held))
            continue
        if held and time.monotonic() - recycled > 1.0:
            # Keep opening: close the oldest stream; another opens on the next turn.
            recycled = time.monotonic()
            held[0].stream.cancel()
        time.sleep(0.05)
    for reader in held:
        reader.stream.cancel()
    for reader in held:
        reader.join(10)
        tally.count("hostile", "watch", reader.status)


def padded(request: pb.QueryPersonsRequest, size: int, salt: bytes = b"") -> bytes:
    """``request``'s bytes followed by an unknown length-delimited field of ``size``
    bytes (field :data:`PADDING_FIELD`), starting with ``salt``."""
    payload = (salt + bytes(max(0, size - len(salt))))[:size]
    return request.SerializeToString() + _varint(PADDING_FIELD << 3 | 2) + _varint(size) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _big_requests(
    client: Client, traffic: Traffic, phase: Phase, tally: Tally, *, warm: bool
) -> None:
    """Padded requests and requests of 1,000 ids, each kind at its own pace."""
    name = "warm" if warm else "hostile"
    rng = random.Random(traffic.seed + 2)
    channel = grpc.insecure_channel(traffic.target)
    method = channel.unary_unary(
        QUERY_METHOD,
        request_serializer=None,
        response_deserializer=pb.QueryPersonsResponse.FromString,
    )
    auth = ("authorization", f"Bearer {traffic.tokens['bob']}")

    def send_padded(number: int) -> None:
        request = pb.QueryPersonsRequest(
            name=person_name(rng.randint(1, 50)), view=pb.PERSON_VIEW_BASIC
        )
        body = padded(request, 1024 if warm else traffic.padding, rng.randbytes(16))
        metadata = (("session-id", _watched(number, warm=warm)), auth)
        try:
            method(body, timeout=CALL_TIMEOUT, metadata=metadata)
        except grpc.RpcError as error:
            tally.count(name, "padded", status_of(error))
        else:
            tally.count(name, "padded", "OK")

    def send_ids(number: int) -> None:
        ids = rng.sample(range(1, 1_000_001), 1000)
        try:
            client.session(_watched(number, warm=warm)).query_persons(ids=ids, view="basic")
        except SesscacheError as error:
            tally.count(name, "ids1000", status_of(error))
        else:
            tally.count(name, "ids1000", "OK")

    try:
        if warm:
            send_padded(0)
            send_ids(0)
            client.session(_watched(0, warm=True)).end()
            return
        threads = [
            threading.Thread(target=_paced, args=(send_padded, traffic.padded_rate, phase)),
            threading.Thread(target=_paced, args=(send_ids, traffic.ids_rate, phase)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        channel.close()


def _churn(client: Client, traffic: Traffic, phase: Phase, tally: Tally, *, warm: bool) -> None:
    """New session ids, one query each, never ended (left to quotas and the reaper)."""
    name = "warm" if warm else "hostile"
    numbers = iter(range(1 << 62))
    lock = threading.Lock()
    prefix = f"bob-churn-{os.getpid()}-{name}"

    def one(_: int) -> None:
        with lock:
            number = next(numbers)
        session = client.session(f"{prefix}-{number}")
        try:
            session.query_persons(name=person_name(number % 50 + 1), view="basic")
        except SesscacheError as error:
            tally.count(name, "churn", status_of(error))
        else:
            tally.count(name, "churn", "OK")

    if warm:
        for number in range(3):
            one(number)
        return
    rate = traffic.churn_rate / CHURN_THREADS
    threads = [
        threading.Thread(target=_paced, args=(one, rate, phase)) for _ in range(CHURN_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
