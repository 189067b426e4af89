"""The command line: ``python -m bench [--quick] [--duration S] [--rounds N] [--only ...]``.

Runs the selected scenarios (all by default), prints the table and the
targets, and writes the JSON results to ``bench/results/<timestamp>.json``
and ``bench/results/latest.json`` (or only to ``--json PATH``). The exit
status is 0 when every scenario ran without errors, whether or not the
targets are met (``--check`` makes an unmet target exit 3), 1 when a
scenario failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from bench.report import evaluate, format_table, write_json
from bench.scenarios import SCENARIOS, Bench, Config, workdir

RESULTS = Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m bench",
        description="sesscache benchmarks: every gRPC figure is a ratio to an empty-RPC floor "
        "measured in alternating rounds of the same run.",
    )
    result.add_argument(
        "--quick", action="store_true", help="everything, tiny (seconds): a smoke test"
    )
    result.add_argument("--duration", type=float, help="measured seconds per round (default 2)")
    result.add_argument("--warmup", type=float, help="unmeasured seconds before each round")
    result.add_argument("--rounds", type=int, help="rounds of each side (default 3)")
    result.add_argument(
        "--inflight", type=int, nargs="+", metavar="N", help="calls in flight (default 1 64)"
    )
    result.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        help=f"scenarios to run (shell patterns): {', '.join(SCENARIOS)}",
    )
    result.add_argument("--json", type=Path, metavar="PATH", help="write the results here only")
    result.add_argument(
        "--workdir", type=Path, help="keep the database and server logs here (default: temporary)"
    )
    result.add_argument("--check", action="store_true", help="exit 3 when a target is not met")
    result.add_argument("--no-progress", action="store_true", help="no progress line")
    return result


def config_from(args: argparse.Namespace) -> Config:
    config = Config.quick_config() if args.quick else Config()
    overrides: dict[str, object] = {}
    if args.duration is not None:
        overrides["duration"] = args.duration
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    if args.rounds is not None:
        overrides["rounds"] = max(1, args.rounds)
    if args.inflight:
        overrides["inflight"] = tuple(args.inflight)
    if args.only:
        overrides["only"] = tuple(args.only)
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print, write; the exit status (see the module docstring)."""
    args = parser().parse_args(argv)
    config = config_from(args)
    unknown = [p for p in config.only if not any(Config(only=(p,)).selected(s) for s in SCENARIOS)]
    if unknown:
        parser().error(f"no scenario matches {', '.join(unknown)}")
    with workdir(args.workdir) as directory:
        results = Bench(config, directory, progress=not args.no_progress).run()
    print(format_table(results))
    if args.json is not None:
        paths = [args.json]
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(results.started))
        paths = [RESULTS / f"{stamp}.json", RESULTS / "latest.json"]
    write_json(results, paths)
    print(f"\nresults: {', '.join(str(p) for p in paths)}")
    failed = any(m.errors or m.wrong_status for m in results.measurements) or any(
        "failed" in note for note in results.notes
    )
    if failed:
        return 1
    if args.check and any(t.met is False for t in evaluate(results)):
        return 3
    return 0
