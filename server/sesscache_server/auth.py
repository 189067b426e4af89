"""Optional bearer-token authentication, and who the caller is.

With tokens configured, every call to ``sesscache.v1`` must carry
``authorization: Bearer <token>`` metadata naming a known token, else it is
refused with UNAUTHENTICATED. The health and reflection services stay open,
so probes and generic tools work without a token.

Tokens are configured as ``TOKEN=PRINCIPAL``, ``TOKEN=PRINCIPAL:writer`` or
``TOKEN=PRINCIPAL:admin`` entries, separated by commas or newlines (``#``
starts a comment in a file), from ``--auth-tokens-file`` and/or
``SESSCACHE_AUTH_TOKENS``. Tokens are never logged; they are kept only as
SHA-256 digests.

A session belongs to the principal that created it: sessions are keyed by
(principal, session id), so another principal naming the same id reaches a
session of its own and can neither see nor end the first one; there is
nothing to probe. The admin role may inspect every session. The writer role
may change persons (CreatePerson, UpdatePerson, DeletePerson); admin implies
it.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sesscache_server.errors import Unauthenticated

AUTHORIZATION_KEY = "authorization"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``name`` "" is the anonymous caller (auth off)."""

    name: str
    admin: bool = False
    writer: bool = False

    @property
    def may_write(self) -> bool:
        """Whether the caller may change persons: the writer role, or admin."""
        return self.writer or self.admin


ANONYMOUS = Principal("", admin=True)

#: The roles a token entry may give after its principal ("" is none).
ROLES = ("", "writer", "admin")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "sesscache_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The caller of the current call (anonymous, with every right, when auth is off)."""
    return _current.get()


def parse_tokens(text: str, *, source: str) -> dict[str, Principal]:
    """``{sha256(token): Principal}`` from ``TOKEN=PRINCIPAL[:ROLE]`` entries (ROLE:
    ``writer`` or ``admin``)."""
    tokens: dict[str, Principal] = {}
    entries = (
        part.split("#", 1)[0].strip() for line in text.splitlines() for part in line.split(",")
    )
    for number, entry in enumerate(filter(None, entries), start=1):
        token, separator, who = entry.partition("=")
        name, _, role = who.partition(":")
        if not separator or not token.strip() or not name.strip() or role not in ROLES:
            raise ValueError(
                f"{source}: entry {number} is not TOKEN=PRINCIPAL, TOKEN=PRINCIPAL:writer "
                "or TOKEN=PRINCIPAL:admin"
            )
        tokens[_digest(token.strip())] = Principal(
            name.strip(), admin=role == "admin", writer=role == "writer"
        )
    return tokens


def load_tokens(file: str, inline: str) -> dict[str, Principal]:
    """Tokens from a file and an inline list (either may be empty)."""
    tokens: dict[str, Principal] = {}
    if file:
        tokens.update(parse_tokens(Path(file).read_text(), source=file))
    if inline:
        tokens.update(parse_tokens(inline, source="SESSCACHE_AUTH_TOKENS"))
    return tokens


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(tokens: Mapping[str, Principal], metadata: Any) -> Principal | Unauthenticated:
    """The caller named by the ``authorization`` metadata, or why there is none."""
    values = [v for k, v in metadata or () if k == AUTHORIZATION_KEY]
    if len(values) != 1 or not isinstance(values[0], str):
        return Unauthenticated("send 'authorization: Bearer <token>' metadata")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Unauthenticated("the authorization metadata must be 'Bearer <token>'")
    principal = tokens.get(_digest(token.strip()))
    if principal is None:
        return Unauthenticated("unknown token")
    return principal


def set_current(principal: Principal) -> None:
    """Make ``principal`` the caller of the current call (its task's context)."""
    _current.set(principal)
