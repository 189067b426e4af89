"""ListSessions in an order other than creation (``order_by``).

Every live session is ranked on each call: O(n log page) for n live sessions,
on the event loop (n is at most ``--max-sessions``). The page token carries
the (value, serial) of the last session listed, and the next page resumes
strictly after it, so a session whose value changed between pages may be
listed twice or not at all (the proto says so).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from sesscache.registry import SessionRegistry, SessionState
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.errors import InvalidArgument
from sesscache_server.inspection import Inspector, session_message
from sesscache_server.paging import PageTokens

#: What each order ranks by (the largest value first): given the registry and a session.
_VALUES: dict[int, Callable[[SessionRegistry, SessionState], float]] = {
    pb.SESSION_ORDER_LAST_ACTIVE: lambda registry, state: state.last_active,
    pb.SESSION_ORDER_ENTRIES: lambda registry, state: len(registry.store_of(state) or ()),
    pb.SESSION_ORDER_BYTES: lambda registry, state: (
        store.bytes if (store := registry.store_of(state)) is not None else 0
    ),
    pb.SESSION_ORDER_HITS: lambda registry, state: state.counters.snapshot().hits,
}


def ordered_sessions(
    request: pb.ListSessionsRequest,
    size: int,
    registry: SessionRegistry,
    tokens: PageTokens,
    inspector: Inspector,
) -> pb.ListSessionsResponse:
    """One page of ListSessions in ``request.order_by`` (not creation)."""
    value_of = _VALUES.get(request.order_by)
    if value_of is None:
        raise InvalidArgument.field("order_by", f"unknown value {request.order_by}")
    fingerprint = f"sessions:{request.order_by}"
    after: tuple[float, int] | None = None
    if request.page_token:
        position = tokens.open(request.page_token).position_for(fingerprint)
        valid = (
            isinstance(position, list)
            and len(position) == 2
            and all(isinstance(p, int | float) and not isinstance(p, bool) for p in position)
        )
        if not valid:
            raise InvalidArgument.field("page_token", "is not a valid page token")
        after = (float(position[0]), int(position[1]))
    ranked = (
        ((-float(value_of(registry, state)), state.serial), state)
        for state in registry.page(after_serial=0, limit=len(registry) + 1)
    )
    if after is not None:
        ranked = (item for item in ranked if item[0] > after)
    page = heapq.nsmallest(size + 1, ranked, key=lambda item: item[0])
    response = pb.ListSessionsResponse(total_size=len(registry))
    for _, state in page[:size]:
        response.sessions.append(session_message(state, registry.store_of(state), inspector))
    if len(page) > size:
        key = page[size - 1][0]
        response.next_page_token = tokens.encode(fingerprint, [key[0], key[1]])
    return response
