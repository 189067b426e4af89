"""A client in a second language: Node's @grpc/grpc-js against a real server.

grpc-js is a separate gRPC implementation (HTTP/2 from Node, not C-core),
and it reacts to oversized trailers differently from the Python client. Where
C-core fails the call with RESOURCE_EXHAUSTED "Stream removed" (trailers past
8 KiB), grpc-js takes trailers of many kilobytes; past about 115 KB its whole
connection stalls, so that every later call on the channel waits for its
deadline. Error messages and details quote client input only up to a bound,
so the trailers of a rejected call stay under 4 KiB whatever the input.

The test runs ``tests/node/client.mjs`` (see it for the scenario: a MISS and
a HIT, a 5,000-character ``region`` and ``session`` handle, a 50,000-character
``region``, then a normal call and EndSession on the same channel) against
the module server, on both backends, and checks the one JSON line it prints.
Node and the client's npm packages are set up by ``make node-deps``; without
them the test is skipped, except under ``CI=true``, where it fails (see
:mod:`tests.support.node`).
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.node import NODE_DIR, node_or_skip, run_node
from tests.support.servers import ServerThread

CLIENT = NODE_DIR / "client.mjs"

#: Deadline of each call the Node client makes: a stalled connection fails a
#: call after this long instead of hanging.
DEADLINE_MS = 3000

#: The whole client run, stalls included (seven calls of at most DEADLINE_MS each).
TIMEOUT = 30.0

#: The most a rejected call's trailers may take, whatever the input.
MAX_TRAILER_BYTES = 4096

INVALID_ARGUMENT, NOT_FOUND = 3, 5
CODE_NAMES = {INVALID_ARGUMENT: "INVALID_ARGUMENT", NOT_FOUND: "NOT_FOUND"}

#: The client's steps that send an oversized value, and the codes they may end
#: with: a region that is not one is a bad argument; a handle too long to be one
#: names no session (or is refused as a bad argument).
REJECTED = {
    "oversized_region": (INVALID_ARGUMENT,),
    "oversized_handle": (NOT_FOUND, INVALID_ARGUMENT),
    "huge_region": (INVALID_ARGUMENT,),
}


def _brief(step: dict[str, Any]) -> str:
    return json.dumps(step, sort_keys=True)


def test_grpc_js_client_survives_oversized_input(server: ServerThread) -> None:
    node = node_or_skip()
    run = run_node(
        node, CLIENT, [server.target, "--deadline-ms", str(DEADLINE_MS)], timeout=TIMEOUT
    )
    assert run.returncode == 0, run.describe()
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.describe()
    steps: dict[str, dict[str, Any]] = json.loads(lines[0])["steps"]

    problems: list[str] = []

    statuses = [steps[name].get("cache_status") for name in ("query_first", "query_again")]
    if statuses != ["CACHE_STATUS_MISS", "CACHE_STATUS_HIT"]:
        problems.append(
            f"QueryPersons twice: {statuses}, expected MISS then HIT: "
            f"{_brief(steps['query_first'])} {_brief(steps['query_again'])}"
        )

    for name, codes in REJECTED.items():
        step = steps[name]
        what = f"ListCacheKeys {step['field']} of {step['length']} characters"
        if step.get("code") not in codes:
            expected = " or ".join(CODE_NAMES[code] for code in codes)
            problems.append(
                f"{what}: {step.get('code_name')} ({step.get('code')}), expected {expected}: "
                f"{_brief(step)}"
            )
        elif step["trailer_bytes"] >= MAX_TRAILER_BYTES:
            problems.append(
                f"{what}: trailers of {step['trailer_bytes']} bytes "
                f"(details {step['details_length']} characters), "
                f"expected under {MAX_TRAILER_BYTES}"
            )

    follow_up = steps["follow_up"]
    if not follow_up["ok"]:
        problems.append(
            f"a normal ListCacheKeys on the same channel then failed (the connection "
            f"stalled?): {_brief(follow_up)}"
        )
    elif follow_up["total_size"] != 1:
        problems.append(f"the follow-up ListCacheKeys lists {_brief(follow_up)}, expected 1 entry")

    ended = steps["end_session"]
    if not (ended["ok"] and ended["existed"]):
        problems.append(f"EndSession: {_brief(ended)}, expected existed")

    assert not problems, "\n".join(problems)
