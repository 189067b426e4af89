"""The child-process helper (:mod:`harness.child`) on small programs of its own.

Shows that a :class:`~harness.child.Child` finds its port in the ``serving on``
line, measures the process, keeps its log across a restart, tells ERROR
records and tracebacks apart from other lines, stops with SIGTERM and then
SIGKILL, and dies when the process that started it is killed. The real
server under it is shown by every test that starts one (test_faults,
test_startup, the soak, bench and scale tests).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from harness.child import ROOT, Child, problem_blocks
from tests.support.polling import wait_until

#: Says it serves on port 4321, logs a line each SIGHUP, exits 3 on SIGTERM.
SERVES = textwrap.dedent(
    """\
    import signal, sys, time
    signal.signal(signal.SIGHUP, lambda *_: print("2026-01-01 00:00:00 INFO x: hup", flush=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    print("2026-01-01 00:00:00 INFO x: fake serving on 127.0.0.1:4321", flush=True)
    while True:
        time.sleep(0.05)
    """
)
#: Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + (
    "print('serving on 127.0.0.1:1', flush=True)\nwhile True: time.sleep(0.05)\n"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_serves_is_measured_and_stops_with_its_exit_status(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    with Child(command=python(SERVES), name="fake", log_path=log) as child:
        assert (child.port, child.target) == (4321, "127.0.0.1:4321")
        assert child.running
        assert child.rss() > 1024 * 1024
        assert child.cpu_seconds() > 0
        child.signal(signal.SIGHUP)
        wait_until(lambda: child.lines[-1].endswith("INFO x: hup"), timeout=10)
        assert child.stop(10) == 3
        assert not child.running
    assert child.stop() == 3, "stopping again tells the same status"
    assert "fake serving on" in log.read_text()


def test_a_restart_keeps_the_log_and_finds_the_port_again(tmp_path: Path) -> None:
    child = Child(command=python(SERVES), log_path=tmp_path / "child.log").start()
    try:
        first = child.pid
        child.restart()
        assert child.pid != first
        assert child.port == 4321
        assert child.log_text().count("serving on") == 2
    finally:
        child.stop()


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    child = Child(command=python(STUBBORN)).start()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    second = Child(command=python(STUBBORN)).start()
    assert second.kill() == -signal.SIGKILL


def test_a_child_that_exits_before_serving_says_so_with_its_log() -> None:
    child = Child(command=python("print('no database'); raise SystemExit(2)"), name="broken")
    with pytest.raises(RuntimeError, match=r"broken exited with 2:\nno database"):
        child.start(timeout=30)
    assert child.wait() == 2


def test_problems_are_error_records_and_tracebacks_with_what_follows() -> None:
    log = "\n".join(
        [
            "2026-01-01 00:00:01 INFO a: fine",
            "2026-01-01 00:00:02 ERROR a: broke",
            "Traceback (most recent call last):",
            '  File "x.py", line 1',
            "ValueError: bad",
            "2026-01-01 00:00:03 WARNING a: noted",
            "Traceback (most recent call last):",
            "KeyError: 'k'",
        ]
    )
    assert problem_blocks(log) == [
        [
            "2026-01-01 00:00:02 ERROR a: broke",
            "Traceback (most recent call last):",
            '  File "x.py", line 1',
            "ValueError: bad",
        ],
        ["Traceback (most recent call last):", "KeyError: 'k'"],
    ]
    assert len(problem_blocks(log, blocks=1)) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_the_process_that_started_it() -> None:
    parent = textwrap.dedent(
        f"""\
        import os, sys
        from harness.child import Child
        child = Child(command=[sys.executable, "-c", {SERVES!r}]).start()
        print(child.pid, flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    done = subprocess.run(
        python(parent), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    orphan = int(done.stdout)

    def gone() -> bool:
        try:
            return bool(psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout=10)


def test_the_real_server_waits_for_its_health_service(tmp_path: Path) -> None:
    args = ["--listen=127.0.0.1:0", f"--database-url=sqlite:///{tmp_path / 'child.db'}"]
    with Child(args).start(health=True) as server:
        assert server.name == "sesscache_server"
        assert server.target == f"127.0.0.1:{server.port}"
        assert server.problems() == []
        assert server.stop() == 0, server.log_text()
