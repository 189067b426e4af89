"""Waiting for a condition in tests, instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(
    check: Callable[[], object], *, timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> float:
    """Poll ``check`` until it is truthy; return the seconds it took.

    Fails the test after ``timeout`` seconds, naming ``what`` it waited for.
    """
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s: {what or check}")
        time.sleep(interval)
    return time.monotonic() - started
