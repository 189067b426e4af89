"""The server secret, and the keys derived from it.

One secret (``--secret``, random per process by default; replicas behind one
proxy share it) gives a key for each use, so no use can be turned against
another: page tokens are signed with one, and session ids are hashed with
another wherever a listing or a log line must not reveal them.

Session hashes are keyed (HMAC-SHA256) and cover the principal, so a
dictionary of likely ids does not reverse them, and the same id under two
principals hashes differently.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sesscache.registry import ScopeKey


class ServerKeys:
    """Keys derived from one server secret ("": a random one)."""

    def __init__(self, secret: str | bytes = "") -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._secret = secret or secrets.token_bytes(32)
        #: Signs page tokens (:class:`sesscache_server.paging.PageTokens`).
        self.page_tokens = self._derive(b"page-tokens")
        self._sessions = self._derive(b"session-hash")

    def _derive(self, purpose: bytes) -> bytes:
        return hmac.new(self._secret, b"sesscache:" + purpose, hashlib.sha256).digest()

    def _hash(self, key: ScopeKey, purpose: bytes, length: int) -> str:
        text = b"%s\0%s\0%s" % (purpose, key[0].encode(), key[1].encode())
        return hmac.new(self._sessions, text, hashlib.sha256).hexdigest()[:length]

    def session_label(self, key: ScopeKey) -> str:
        """How a session appears in logs and listings when ids are secrets: ``h:`` and
        12 hex characters."""
        return "h:" + self._hash(key, b"label", 12)

    def session_handle(self, key: ScopeKey) -> str:
        """The opaque handle ListSessions gives a session (16 hex characters)."""
        return self._hash(key, b"handle", 16)
