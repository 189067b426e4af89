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

from server.errors import InvalidArgument

_MAC_BYTES = 10
_VERSION = 1


class PageTokens:
    """Encodes and decodes page tokens with one secret."""

    def __init__(self, secret: str | bytes = "") -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._key = secret or secrets.token_bytes(32)

    def encode(self, fingerprint: str, position: int) -> str:
        body = json.dumps({"v": _VERSION, "f": fingerprint, "p": position}, separators=(",", ":"))
        raw = body.encode()
        return base64.urlsafe_b64encode(raw + self._mac(raw)).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str, *, field: str = "page_token") -> int:
        """The position carried by ``token``; 0 for the empty token (the first page)."""
        if not token:
            return 0
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
        if body.get("f") != fingerprint:
            raise InvalidArgument.field(
                field,
                "was issued for a different request; repeat the request that returned it "
                "with the same filters, or start again without a token",
            )
        position = body.get("p")
        if body.get("v") != _VERSION or not isinstance(position, int) or position < 0:
            raise InvalidArgument.field(field, "is not a valid page token")
        return position

    def _mac(self, raw: bytes) -> bytes:
        return hmac.new(self._key, raw, hashlib.sha256).digest()[:_MAC_BYTES]
