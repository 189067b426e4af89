"""Opaque, signed page tokens (AIP-158).

A token carries where the next page starts and a fingerprint of the request
it belongs to, signed with the server's secret (HMAC-SHA256, truncated).
Decoding rejects, as INVALID_ARGUMENT on ``page_token``: anything that is not
one of our tokens, a token altered or cut short, and a token issued for a
different request (other filters, another session's listing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sesscache.store import Entry
from sesscache_server.errors import InvalidArgument

T = TypeVar("T")

_MAC_BYTES = 10
_VERSION = 1


class PageTokens:
    """Encodes and decodes page tokens with one secret."""

    def __init__(self, secret: str | bytes = "") -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._key = secret or secrets.token_bytes(32)

    def encode(self, fingerprint: str, position: Any) -> str:
        """A token for the page at ``position`` (any JSON value) of the request
        ``fingerprint`` names."""
        body = json.dumps({"v": _VERSION, "f": fingerprint, "p": position}, separators=(",", ":"))
        raw = body.encode()
        return base64.urlsafe_b64encode(raw + self._mac(raw)).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str, *, field: str = "page_token") -> int:
        """The position carried by ``token``; 0 for the empty token (the first page)."""
        if not token:
            return 0
        position = self.open(token, field=field).position_for(fingerprint)
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise InvalidArgument.field(field, "is not a valid page token")
        return position

    def open(self, token: str, *, field: str = "page_token") -> OpenedToken:
        """Check ``token`` is one of ours, unaltered; the request it binds to is checked
        later (:meth:`OpenedToken.position_for`), so a bad token is INVALID_ARGUMENT
        before the server looks at any state."""
        if len(token) > 512:
            raise InvalidArgument.field(field, "is not a page token from this server (too long)")
        try:
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument.field(field, "is not a page token from this server") from None
        raw, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if len(data) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(raw)):
            raise InvalidArgument.field(
                field, "is not a valid page token (altered, truncated, or from another server)"
            )
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != _VERSION:
            raise InvalidArgument.field(field, "is not a valid page token")
        return OpenedToken(str(body.get("f")), body.get("p"), field)

    def _mac(self, raw: bytes) -> bytes:
        return hmac.new(self._key, raw, hashlib.sha256).digest()[:_MAC_BYTES]


@dataclass(frozen=True, slots=True)
class OpenedToken:
    """A page token whose signature was checked: the request it was issued for, and
    the position it carries."""

    fingerprint: str
    position: Any
    field: str = "page_token"

    def position_for(self, fingerprint: str) -> Any:
        """The position, if the token was issued for the request ``fingerprint`` names."""
        if self.fingerprint != fingerprint:
            raise InvalidArgument.field(
                self.field,
                "was issued for a different request; repeat the request that returned it "
                "with the same filters, or start again without a token",
            )
        return self.position


#: A page item: its position (what a token carries to resume after it) and its message.
PageItem = tuple[list[Any], T]


def keyset_page(
    sources: Sequence[tuple[int, Sequence[Entry]]],
    *,
    order: int,
    entity: str,
    after: Any,
    limit: int,
    max_bytes: int,
    message: Callable[[Entry], T],
) -> tuple[list[PageItem[T]], str | None]:
    """One page of cache entries, by keyset: resumes strictly after the position ``after``.

    ``sources`` are (phase, entries) listed one after the other (the session's
    entries, then the shared region's). Within a phase entries are ordered by
    ``order``: stored (sequence number), hits or size (most first), ties by
    sequence number then digest, so a position names one place in the order and
    entries removed meanwhile never move a live entry past the page boundary.
    The page holds at most ``limit`` entries and ``max_bytes`` of messages
    (always at least one entry). Returns the page and why more follow: None
    (the last page), "count" or "bytes".
    """
    start = _position(after)
    page: list[PageItem[T]] = []
    budget = max_bytes
    for phase, entries in sources:
        if start is not None and phase < start[0]:
            continue
        ordered = [
            (_sort_key(entry, order), entry)
            for entry in entries
            if not entity or entry.description.entity == entity
        ]
        ordered.sort(key=lambda pair: pair[0])
        for key, entry in ordered:
            if start is not None and phase == start[0] and key <= start[1]:
                continue
            if len(page) == limit:
                return page, "count"
            item = message(entry)
            size = item.ByteSize() + 8  # type: ignore[attr-defined]
            if page and size > budget:
                return page, "bytes"
            budget -= size
            page.append(([phase, *key], item))
    return page, None


def _sort_key(entry: Entry, order: int) -> tuple[Any, ...]:
    # Ties by sequence number, then digest (Redis keeps no sequence numbers).
    if order == 2:  # CACHE_ENTRY_ORDER_HITS: most first
        return (-entry.hits, entry.seq, entry.digest)
    if order == 3:  # CACHE_ENTRY_ORDER_SIZE: largest first
        return (-entry.size, entry.seq, entry.digest)
    return (0, entry.seq, entry.digest)


def _position(after: Any) -> tuple[int, tuple[Any, ...]] | None:
    if after is None:
        return None
    valid = (
        isinstance(after, list)
        and len(after) == 4
        and isinstance(after[0], int)
        and isinstance(after[1], int)
        and isinstance(after[2], int)
        and isinstance(after[3], str)
    )
    if not valid:
        raise InvalidArgument.field("page_token", "is not a valid page token")
    return after[0], (after[1], after[2], after[3])
