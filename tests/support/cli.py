"""Running the command-line tool in-process against a test server."""

from __future__ import annotations

import pytest

from sesscache_client.cli import main
from tests.support.servers import ServerThread


def run_cli(
    capsys: pytest.CaptureFixture[str], server: ServerThread, *args: str
) -> tuple[int, str, str]:
    """``sesscache ARGS`` in-process against ``server``: (status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["--target", server.target, "--timeout", "20", *args])
    out, err = capsys.readouterr()
    return status, out, err
