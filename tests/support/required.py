"""When a missing server or tool fails the tests instead of skipping them."""

from __future__ import annotations

import os


def required(variable: str) -> bool:
    """True on CI (``CI=true``, any case) or when ``variable`` is set to ``1``.

    Locally a missing PostgreSQL, Redis, nginx or Node skips the tests that
    need it; on CI, and wherever ``SESSCACHE_REQUIRE_<TOOL>=1`` is set, it fails them.
    """
    return (
        os.environ.get("CI", "").strip().lower() == "true"
        or os.environ.get(variable, "").strip() == "1"
    )
