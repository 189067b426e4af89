"""``python -m scale``: the scale-out demo, natively on loopback (``make scale-demo``).

Starts a throwaway PostgreSQL cluster and Redis server (the test suite's own
launchers, :mod:`tests.support.postgres` and :mod:`tests.support.redis`: they
already handle running PostgreSQL as root, free ports and clean-up), then
:class:`scale.topology.Topology` (the replicas and nginx), runs
:class:`scale.scenario.Scenario` and prints each check as it completes. Exits
0 when every check passes, 1 when one fails, 2 when PostgreSQL, Redis or
nginx is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scale.nginx import find_nginx
from scale.scenario import Check, Settings, run_scenario
from scale.topology import Topology


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    result = argparse.ArgumentParser(
        prog="python -m scale",
        description="sesscache scale-out demo: PostgreSQL, Redis, N server replicas and "
        "nginx (a gRPC proxy with session affinity), natively on loopback.",
    )
    result.add_argument("--replicas", type=int, default=3, help="server replicas (default 3)")
    result.add_argument(
        "--sessions", type=int, default=defaults.sessions, help="sessions (default 1000)"
    )
    result.add_argument(
        "--bench-duration",
        type=float,
        default=defaults.bench_duration,
        help="measured seconds per throughput round (default %(default)s)",
    )
    result.add_argument(
        "--bench-rounds",
        type=int,
        default=defaults.bench_rounds,
        help="throughput rounds per set-up, alternating (default %(default)s)",
    )
    result.add_argument(
        "--inflight",
        type=int,
        default=defaults.bench_inflight,
        help="calls in flight in the throughput rounds (default %(default)s)",
    )
    result.add_argument("--no-bench", action="store_true", help="skip the throughput figures")
    result.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    result.add_argument(
        "--workdir", type=Path, help="keep logs and configs here (default: temporary, removed)"
    )
    return result


def _print_check(check: Check) -> None:
    print(f"{check.status:<5} {check.name}")
    for line in textwrap.wrap(check.summary, 92):
        print(f"      {line}")
    for line in check.details:
        print(f"        {line}")
    sys.stdout.flush()


def _versions(nginx: str) -> str:
    result = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    version = (result.stderr or result.stdout).strip().rsplit("/", 1)[-1]
    return f"nginx {version}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.replicas < 2:
        parser().error("--replicas must be at least 2 (one of them is stopped)")
    settings = Settings(
        sessions=args.sessions,
        bench=not args.no_bench,
        bench_duration=args.bench_duration,
        bench_rounds=args.bench_rounds,
        bench_inflight=args.inflight,
    )
    nginx = find_nginx()
    missing = [
        name
        for name, found in (("nginx", nginx), ("redis-server", shutil.which("redis-server")))
        if found is None
    ]
    if missing or nginx is None:
        print(
            f"not installed: {', '.join(missing)} (apt-get install nginx redis-server)",
            file=sys.stderr,
        )
        return 2

    from tests.support.postgres import PostgresServer, PostgresUnavailableError
    from tests.support.redis import RedisServer

    started = time.monotonic()
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sesscache-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        "sesscache scale-out demo: starting PostgreSQL, Redis, "
        f"{args.replicas} replicas and nginx on loopback...",
        flush=True,
    )
    checks: list[Check] = []
    figures: dict[str, Any] = {}
    try:
        with PostgresServer() as postgres, RedisServer() as redis_server:
            database_url = postgres.create_database("sesscache_scale")
            with Topology(
                workdir,
                database_url=database_url,
                redis_url=redis_server.url,
                replicas=args.replicas,
                nginx_binary=nginx,
            ) as topology:
                assert topology.proxy is not None
                assert topology.single is not None
                replicas = "  ".join(f"{r.name} {r.target}" for r in topology.replicas)
                print(
                    f"  {_versions(nginx)}, PostgreSQL {postgres.version()}, "
                    f"{redis_server.binary}, {os.cpu_count()} CPUs, load average "
                    f"{os.getloadavg()[0]:.1f}"
                )
                print(f"  {replicas}")
                print(
                    f"  nginx {topology.proxy.target} (all replicas), "
                    f"{topology.single.target} (replica-1 only, for the benchmark)"
                )
                print(f"  ready after {time.monotonic() - started:.1f}s\n", flush=True)
                scenario = run_scenario(topology, settings, report=_print_check)
                checks = scenario.checks
                figures = scenario.figures
    except PostgresUnavailableError as error:
        print(f"PostgreSQL is not installed: {error}", file=sys.stderr)
        return 2
    finally:
        failed = [c for c in checks if c.passed is False]
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "checks": [asdict(c) | {"status": c.status} for c in checks],
                        "figures": figures,
                    },
                    indent=2,
                    default=str,
                ),
                encoding="utf-8",
            )
        if not keep and not failed and checks:
            shutil.rmtree(workdir, ignore_errors=True)
    passed = sum(1 for c in checks if c.passed)
    print(
        f"\n{passed} checks passed, {len(failed)} failed "
        f"({time.monotonic() - started:.0f}s)." + (f" Logs: {workdir}" if keep or failed else "")
    )
    return 1 if failed or not checks else 0
