"""The benchmark harness keeps working: ``python -m bench --quick``, in miniature.

Runs every scenario with tiny rounds (a few seconds in all: the numbers mean
nothing here) and checks the JSON results: each scenario at each number of
calls in flight has a positive throughput and a ratio to the floor, no call
failed or came back with an unexpected cache status, and every target was
evaluated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.report import Progress
from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
INFLIGHT = (1, 4)


def test_quick_bench_measures_every_scenario(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        # Long enough that a 50-row uncached call completes in its window
        # even on a loaded machine (calls still running at its end do not count).
        "--duration",
        "0.4",
        "--warmup",
        "0.02",
        "--inflight",
        *map(str, INFLIGHT),
        "--no-progress",
        "--json",
        str(results),
        "--workdir",
        str(tmp_path / "work"),
    ]
    run = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Targets:" in run.stdout

    data = json.loads(results.read_text())
    rows = {(row["id"], row["inflight"]): row for row in data["scenarios"]}
    for scenario in SCENARIOS:
        if scenario == "library":
            continue
        for inflight in INFLIGHT:
            row = rows[(scenario, inflight)]
            assert row["calls_per_s"] > 0, row
            assert row["floor_calls_per_s"] > 0, row
            assert row["ratio"] > 0, row
            assert row["p50_ms"] > 0, row
            assert (row["errors"], row["wrong_status"]) == (0, 0), row

    library = data["library"]
    assert {case["name"] for case in library["cases"]} == {
        f"{mode}_{label}"
        for mode in ("hit", "uncached", "miss_store")
        for label in ("1row", "50row")
    }
    assert all(case["median_us"] > 0 for case in library["cases"])
    assert data["memory"]["sessions_added"] > 0
    # Only the 64-in-flight targets are out of reach of this run's in-flight levels.
    unmeasured = [t["id"] for t in data["targets"] if t["measured"] is None]
    assert unmeasured == ["query_1row_hit@64", "query_1row_hit@64_cpu"]
    assert not [note for note in data["notes"] if "failed" in note]
    # The log of each server went to a file, not to the terminal.
    assert (tmp_path / "work" / "server-query.log").stat().st_size > 0


def test_progress_line_rewrites_itself_on_a_terminal() -> None:
    class Terminal:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    progress = Progress(2, terminal)  # type: ignore[arg-type]
    progress.step("first step, a long line")
    progress.step("second")
    progress.finish()
    assert terminal.text.count("\r") == 4  # two steps, then the blanking of finish()
    assert "[0m00s 2/2] second" in terminal.text
    assert "\n" not in terminal.text
