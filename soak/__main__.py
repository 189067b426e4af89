"""``python -m soak`` / ``make soak ARGS=...``: run the soak (see ``--help``); exit 1 on failure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from soak import SoakConfig, run


def parser() -> argparse.ArgumentParser:
    defaults = SoakConfig()
    result = argparse.ArgumentParser(
        prog="python -m soak",
        description="Many clients over many sessions against a real sesscache server for a "
        "bounded time. Fails (exit 1) on any error, or when the server's resident memory "
        "after every session is gone is not back within the tolerance of its start.",
    )

    def option(name: str, kind: type, help_: str) -> None:
        default = getattr(defaults, name.replace("-", "_"))
        result.add_argument(
            f"--{name}", type=kind, default=default, help=f"{help_} (default: {default!r})"
        )

    option("duration", float, "seconds of load")
    option("clients", int, "client threads, each with its own connection")
    option("warmup", float, "seconds of load before the start figure is taken")
    option("think-ms", float, "mean think time between a client's calls, ms")
    option("idle-timeout", float, "the server's session idle timeout, s")
    option("max-sessions", int, "the server's maximum of live sessions")
    option("max-entries", int, "the server's cache entries per session")
    option("max-bytes", int, "the server's approximate cache bytes per session")
    option("local-expiration", float, "seconds session-cache entries stay fresh")
    option("database-url", str, "database (default: a fresh SQLite file)")
    option("tolerance", float, "allowed growth of RSS from start to end, as a fraction")
    option("drain-timeout", float, "seconds to wait for every session to be gone")
    option("seed", int, "random seed (default: random)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = SoakConfig(**{key: value for key, value in vars(args).items()})
    if config.duration <= 0 or config.clients < 1:
        parser().error("--duration must be positive and --clients at least 1")
    result = run(config)
    print(result.report(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
