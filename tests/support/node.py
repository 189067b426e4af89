"""Node.js clients for the test suite: find ``node``, run a script with a timeout.

The Node test client lives in ``tests/node`` with its npm dependencies
(``@grpc/grpc-js``, ``@grpc/proto-loader``), installed into
``tests/node/node_modules`` by ``make node-deps`` (a prerequisite of
``make test``'s pytest step).

:func:`node_or_skip` is the entry point for tests: the ``node`` program when
it and the dependencies are there; otherwise it skips the test - unless
:func:`node_required` says they must be there (``CI=true`` or
``SESSCACHE_REQUIRE_NODE=1``), in which case the test fails. :func:`run_node`
runs a script as a child process and never waits longer than its timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.required import required
from tests.support.servers import ROOT

__all__ = [
    "NODE_DIR",
    "REQUIRE_ENV",
    "NodeResult",
    "node_or_skip",
    "node_required",
    "run_node",
]

NODE_DIR = ROOT / "tests" / "node"
"""The Node test client's directory (its package.json and node_modules)."""

REQUIRE_ENV = "SESSCACHE_REQUIRE_NODE"
"""Environment variable that, set to ``1``, turns a missing Node into a failure."""

_DEPENDENCIES = ("@grpc/grpc-js", "@grpc/proto-loader")
_SET_UP_HINT = "run `make node-deps` (npm install in tests/node)"


def node_required() -> bool:
    """Whether a missing Node (or its packages) must fail the tests instead of skipping them.

    True on CI (``CI=true``, any case) or when ``SESSCACHE_REQUIRE_NODE=1``.
    """
    return required(REQUIRE_ENV)


def node_or_skip() -> str:
    """The path of ``node`` with the test client's packages installed, or skip / fail."""
    node = shutil.which("node")
    if node is None:
        problem = "Node.js (`node`) is not on PATH; install it (`apt-get install nodejs npm`)"
    else:
        missing = [name for name in _DEPENDENCIES if not _installed(name)]
        if not missing:
            return node
        problem = f"{', '.join(missing)} not installed in {NODE_DIR}; {_SET_UP_HINT}"
    if node_required():
        pytest.fail(f"{problem}; Node is required here (CI=true or {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(problem)


def _installed(package: str) -> bool:
    return (NODE_DIR / "node_modules" / package / "package.json").is_file()


@dataclass(frozen=True)
class NodeResult:
    """What a Node child process did: exit status (None on timeout) and output."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool

    def describe(self) -> str:
        """Exit status and output, for an assertion message."""
        status = "timed out" if self.timed_out else f"exit status {self.returncode}"
        return f"node {status}\n-- stdout:\n{self.stdout}\n-- stderr:\n{self.stderr}".rstrip()


def run_node(node: str, script: Path, args: Sequence[str], *, timeout: float) -> NodeResult:
    """Run ``node SCRIPT ARGS`` in ``tests/node``; kill it after ``timeout`` seconds."""
    try:
        done = subprocess.run(
            [node, str(script), *args],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed the child
        return NodeResult(None, _text(exc.stdout), _text(exc.stderr), timed_out=True)
    return NodeResult(done.returncode, done.stdout, done.stderr, timed_out=False)


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""
