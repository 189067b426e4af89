"""Validation of what a client sends: the session id, and each request.

Every check names the field at fault, so the client gets INVALID_ARGUMENT with
a ``google.rpc.BadRequest`` violation per field. All violations of a request
are reported at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sesscache.queries import PersonQuery
from sesscache.store import value_size
from sesscache.v1 import sesscache_pb2 as pb
from sesscache_server.errors import InvalidArgument, quote
from sesscache_server.paging import PageTokens

SESSION_ID_KEY = "session-id"
_SESSION_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")

MAX_NAME = 256
MAX_IDS = 1000
MAX_ID = 2**31 - 1
#: Bad ids named one by one; the rest are counted, so the error fits in gRPC trailers.
MAX_ID_VIOLATIONS = 10
DEFAULT_PERSONS_PAGE = 50
DEFAULT_KEYS_PAGE = 100
MAX_PAGE = 1000
#: A cache key is SQL text and parameter values; no real one comes near this.
MAX_KEY = 100_000
#: A session handle, as ListSessions gives it: 16 hex characters.
_HANDLE = re.compile(r"[0-9a-f]{16}")
#: Validated QueryPersons requests are remembered by their bytes, in at most this
#: many bytes, and only requests of up to KNOWN_REQUEST_MAX bytes.
KNOWN_REQUESTS_BYTES = 4 * 1024 * 1024
KNOWN_REQUEST_MAX = 2048
_VIEWS = frozenset(pb.PersonView.values())


def session_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The caller's session id from call metadata; None when the call names none."""
    values = [value for key, value in metadata or () if key == SESSION_ID_KEY]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidArgument.field(SESSION_ID_KEY, "must be sent once per call (metadata)")
    value = values[0]
    if isinstance(value, bytes) or not _SESSION_ID.fullmatch(value):
        raise InvalidArgument.field(
            SESSION_ID_KEY,
            "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '~' or '-' (metadata)",
        )
    return value


def check_handle(handle: str, *, field: str = "session") -> None:
    """A session handle is empty (the caller's session) or 16 hex characters."""
    if handle and not _HANDLE.fullmatch(handle):
        raise InvalidArgument.field(
            field, f"must be a handle from ListSessions (16 hex characters), got {quote(handle)}"
        )


def known_request_size(raw: bytes, request: PersonsRequest) -> int:
    """Approximate bytes a remembered request holds: its bytes and its validated form."""
    query = request.query
    return 500 + len(raw) + value_size(query.ids) + 2 * len(query.name or "")


def page_size(value: int, *, default: int, field: str = "page_size") -> int:
    """AIP-158: 0 means the default, negative is an error, above the maximum is lowered."""
    if value < 0:
        raise InvalidArgument.field(field, f"must not be negative (got {value})")
    if value == 0:
        return default
    return min(value, MAX_PAGE)


@dataclass(frozen=True, slots=True)
class PersonsRequest:
    """A validated QueryPersons request."""

    query: PersonQuery
    bypass_cache: bool


def persons_request(request: pb.QueryPersonsRequest, tokens: PageTokens) -> PersonsRequest:
    """Validate a QueryPersons request into the page it asks for."""
    violations: list[tuple[str, str]] = []
    _check_text(violations, "name", request.name)
    _check_text(violations, "name_range.first", request.name_range.first)
    _check_text(violations, "name_range.last", request.name_range.last)
    first, last = request.name_range.first, request.name_range.last
    if first and last and first > last:
        violations.append(("name_range.first", "must not come after name_range.last"))
    if len(request.ids) > MAX_IDS:
        violations.append(("ids", f"at most {MAX_IDS} ids (got {len(request.ids)})"))
    else:
        bad = [
            (index, value) for index, value in enumerate(request.ids) if not 1 <= value <= MAX_ID
        ]
        for index, value in bad[:MAX_ID_VIOLATIONS]:
            violations.append((f"ids[{index}]", f"must be between 1 and {MAX_ID} (got {value})"))
        if len(bad) > MAX_ID_VIOLATIONS:
            more = len(bad) - MAX_ID_VIOLATIONS
            violations.append(("ids", f"{more} more ids not between 1 and {MAX_ID}"))
    if request.view not in _VIEWS:
        violations.append(("view", f"unknown value {request.view}"))
    size = DEFAULT_PERSONS_PAGE
    try:
        size = page_size(request.page_size, default=DEFAULT_PERSONS_PAGE)
    except InvalidArgument as error:
        violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    query = PersonQuery(
        name=request.name or None,
        first=first or None,
        last=last or None,
        ids=tuple(sorted(set(request.ids))),
        limit=size,
        full=request.view != pb.PERSON_VIEW_BASIC,
    )
    if request.page_token:
        after_id = tokens.decode(request.page_token, _persons_fingerprint(query))
        query = dataclasses.replace(query, after_id=after_id)
    return PersonsRequest(query=query, bypass_cache=request.bypass_cache)


def persons_next_token(request: PersonsRequest, tokens: PageTokens, last_id: int) -> str:
    return tokens.encode(_persons_fingerprint(request.query), last_id)


def _persons_fingerprint(query: PersonQuery) -> str:
    # The page size may change between pages (AIP-158); the filters may not.
    return "persons:" + query.filters_fingerprint()


def _check_text(violations: list[tuple[str, str]], field: str, value: str) -> None:
    if len(value) > MAX_NAME:
        violations.append((field, f"at most {MAX_NAME} characters (got {len(value)})"))
    elif "\x00" in value:
        violations.append((field, "must not contain NUL characters"))
