"""nginx for the test suite: the binary the scale tests run, or a skip.

The tests run Debian's ``nginx`` natively (see :mod:`scale.nginx`), found by
:func:`scale.nginx.find_nginx` (``SESSCACHE_NGINX``, ``nginx`` on PATH, or
``/usr/sbin/nginx``). :func:`binary_or_skip` is the entry point for fixtures:
it returns that binary, or skips the test when nginx is not installed -
unless :func:`nginx_required` says it must be there (``CI=true`` or
``SESSCACHE_REQUIRE_NGINX=1``), in which case the test fails, as for
PostgreSQL and Redis.
"""

from __future__ import annotations

import subprocess

import pytest

from scale.nginx import find_nginx
from tests.support.required import required

REQUIRE_ENV = "SESSCACHE_REQUIRE_NGINX"
"""Environment variable that, set to ``1``, turns a missing nginx into a failure."""

_INSTALL_HINT = "install it with `apt-get install nginx`"


def nginx_required() -> bool:
    """Whether a missing nginx must fail the tests instead of skipping them."""
    return required(REQUIRE_ENV)


def binary_or_skip() -> str:
    """The nginx binary; a skip when it is missing, or a failure when nginx is required."""
    binary = find_nginx()
    if binary is None:
        message = f"nginx is not installed; {_INSTALL_HINT}"
        if nginx_required():
            pytest.fail(f"{message} (required here: CI=true or {REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    result = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 or "--with-http_v2_module" not in result.stderr:
        pytest.fail(f"{binary} cannot proxy gRPC (needs the HTTP/2 module):\n{result.stderr}")
    return binary
