"""A short soak (``python -m soak``, ~10 s of load) runs clean and gives its memory back.

Runs the real soak command as ``make soak`` does, shorter: a ``python -m
server`` child with small limits, 16 client threads working through
sessions that they end or leave to the reaper, every answer checked. The
soak exits 0 only with no error at all and the server's resident memory,
once every session is gone, back within 10 % of its figure after the
warm-up (see :mod:`soak`); this test also reads the printed figures, so a
failure shows them, and checks that evictions and expiry really happened.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.servers import ROOT

pytestmark = pytest.mark.slow


def figure(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in the soak's output:\n{text}"
    return match.group(1)


def test_a_short_soak_has_no_errors_and_returns_memory() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "soak", "--duration=8", "--warmup=3", "--seed=7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert int(figure(r"errors: (\d+)", output)) == 0, output
    growth = float(figure(r"\(([+-]\d+\.\d)% of start; limit \+10%\)", output))
    assert growth <= 10.0, output
    assert int(figure(r"calls: (\d+)", output)) > 100, output
    assert int(figure(r"sessions evicted: (\d+)", output)) > 0, output
    assert int(figure(r"sessions expired \(idle\): (\d+)", output)) > 0, output
    assert int(figure(r"entries evicted: (\d+)", output)) > 0, output
    assert "result: OK" in output
    assert completed.returncode == 0, output
