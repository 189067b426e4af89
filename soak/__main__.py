"""``python -m soak`` / ``make soak ARGS=...``: run the soak (see ``--help``); exit 1 on failure.

``--hostile`` runs :mod:`soak.hostile` instead of the plain soak of :mod:`soak`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from soak import SoakConfig, run
from soak.hostile import HostileConfig
from soak.hostile import run as run_hostile

#: Options of one mode only: given in the other, they are an error.
PLAIN_ONLY = ("clients",)
_PLAIN_FIELDS = {f.name for f in dataclasses.fields(SoakConfig)}
HOSTILE_ONLY = tuple(
    f.name for f in dataclasses.fields(HostileConfig) if f.name not in _PLAIN_FIELDS
)


def parser() -> argparse.ArgumentParser:
    plain, hostile = SoakConfig(), HostileConfig()
    result = argparse.ArgumentParser(
        prog="python -m soak",
        description="Many clients over many sessions against a real sesscache server for a "
        "bounded time. Fails (exit 1) on any error, or when the server's resident memory "
        "after every session is gone is not back within the tolerance of its start. "
        "With --hostile: an honest principal's load, quiet and then with a hostile "
        "principal's traffic mixed in (watch storms, padded requests, session churn); "
        "fails when a check of its table fails.",
    )
    result.add_argument(
        "--hostile",
        action="store_true",
        help="the hostile variant: --duration is split 40%% quiet, 40%% hostile, 20%% idle",
    )

    def option(name: str, kind: type, help_: str, group: Any = result) -> None:
        key = name.replace("-", "_")
        defaults = [
            f"{mode} {getattr(config, key)!r}"
            for mode, config in (("plain", plain), ("hostile", hostile))
            if hasattr(config, key)
        ]
        if len(defaults) == 2 and getattr(plain, key) == getattr(hostile, key):
            defaults = [repr(getattr(plain, key))]
        group.add_argument(
            f"--{name}", type=kind, default=None, help=f"{help_} (default: {', '.join(defaults)})"
        )

    option("duration", float, "seconds of load (hostile: of quiet, hostile and idle together)")
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

    group = result.add_argument_group("--hostile only")
    option("alice-clients", int, "the honest principal's client threads", group)
    option("max-sessions-per-principal", int, "the server's sessions per principal", group)
    option("max-watchers", int, "the server's WatchCacheEvents streams at once", group)
    option("max-watchers-per-principal", int, "the server's streams per principal", group)
    option("max-response-bytes", int, "the server's bytes per listing response", group)
    option("watchers", int, "watch streams bob wants open at once", group)
    option("read-interval", float, "seconds bob waits after each event he reads", group)
    option("padded-rate", float, "bob's padded QueryPersons per second", group)
    option("padding", int, "bytes of the unknown field of a padded request", group)
    option("ids-rate", float, "bob's QueryPersons of 1,000 ids per second", group)
    option("churn-rate", float, "bob's new sessions per second", group)
    option("ratio-limit", float, "alice's hit p50 hostile/quiet allowed at most", group)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser()
    args = vars(arguments.parse_args(argv))
    hostile = args.pop("hostile")
    given = {key: value for key, value in args.items() if value is not None}
    wrong = [key for key in (PLAIN_ONLY if hostile else HOSTILE_ONLY) if key in given]
    if wrong:
        mode = "--hostile" if hostile else "the plain soak (add --hostile)"
        arguments.error(f"--{wrong[0].replace('_', '-')} does not apply to {mode}")
    if hostile:
        config = HostileConfig(**given)
        if config.duration <= 0 or config.alice_clients < 1:
            arguments.error("--duration must be positive and --alice-clients at least 1")
        outcome = run_hostile(config)
        print(outcome.report(), flush=True)
        return 0 if outcome.ok else 1
    plain = SoakConfig(**given)
    if plain.duration <= 0 or plain.clients < 1:
        arguments.error("--duration must be positive and --clients at least 1")
    result = run(plain)
    print(result.report(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
