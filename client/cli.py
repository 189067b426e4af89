"""The sesscache command line tool: ``python -m client [options] COMMAND``.

Commands::

    query   --session ID [filters]   one page of persons, and how the cache served it
    keys    --session ID             the entries of a session's cache
    end     --session ID             end a session
    health  [--service NAME]         serving status; exit 0 only if SERVING

Connection options come before the command: ``--target`` (env ``SESSCACHE_TARGET``,
default 127.0.0.1:50051), ``--timeout``, ``--token`` (env ``SESSCACHE_TOKEN``),
``--tls-ca``, ``--tls-cert``/``--tls-key``.

Exit status: 0 on success, 2 for a usage error or INVALID_ARGUMENT, 1 for any
other error (printed as one ``error: ...`` line on stderr, never a traceback).

To add a command: write ``cmd_<name>(client, args) -> int`` and an
``_add_<name>_parser(subparsers)`` that registers it with ``set_defaults(handler=...)``,
then call the latter from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC

from google.protobuf import timestamp_pb2

from client._client import DEFAULT_TARGET, DEFAULT_TIMEOUT, Client, PersonViewArg
from client.errors import InvalidArgument, SesscacheError
from sesscache.v1 import sesscache_pb2

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "build_parser", "format_table", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

TARGET_ENV = "SESSCACHE_TARGET"
TOKEN_ENV = "SESSCACHE_TOKEN"  # noqa: S105 (a variable name, not a secret)

Handler = Callable[[Client, argparse.Namespace], int]


class UsageError(Exception):
    """A bad command line the parser could not catch (e.g. an unreadable file)."""


# Formatting helpers.


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """A plain text table: a header, a rule, then the rows; columns in ``right`` align right."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if i in right else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * width for width in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _cell(value: str) -> str:
    # Keep one row on one line whatever the server sends.
    return "".join(ch if ch.isprintable() else " " for ch in value)


def _format_timestamp(timestamp: timestamp_pb2.Timestamp | None) -> str:
    if timestamp is None:
        return "-"
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    unit = "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value /= 1024
        unit = bigger
    return f"{value:.1f} {unit}"


def _cache_status_name(status: sesscache_pb2.CacheStatus.ValueType) -> str:
    return sesscache_pb2.CacheStatus.Name(status).removeprefix("CACHE_STATUS_")


# Commands.


def cmd_query(client: Client, args: argparse.Namespace) -> int:
    """Print one page of persons as a table, then the cache status and next page token."""
    view: PersonViewArg = "basic" if args.basic else None
    response = client.session(args.session).query_persons(
        name=args.name,
        name_first=args.first,
        name_last=args.last,
        ids=args.ids,
        bypass_cache=args.bypass_cache,
        page_size=args.page_size,
        page_token=args.page_token,
        view=view,
    )
    if not response.persons:
        print("no persons")
    elif args.basic:
        rows = [[str(person.id), person.name] for person in response.persons]
        print(format_table(["ID", "NAME"], rows, right={0}))
    else:
        headers = ["ID", "NAME", "STREET", "POSTAL CODE", "CITY", "COUNTRY"]
        print(format_table(headers, _person_rows(response.persons), right={0}))
    print(
        f"cache: {_cache_status_name(response.cache_status)}  "
        f"sql statements: {response.sql_statements}  key: {_cell(response.cache_key) or '-'}"
    )
    if response.next_page_token:
        print(f"next page token: {response.next_page_token}")
    return EXIT_OK


def _person_rows(persons: Iterable[sesscache_pb2.Person]) -> list[list[str]]:
    rows: list[list[str]] = []
    for person in persons:
        if not person.addresses:
            rows.append([str(person.id), person.name, "", "", "", ""])
        for i, address in enumerate(person.addresses):
            # Id and name on the first address of a person only.
            who = [str(person.id), person.name] if i == 0 else ["", ""]
            rows.append([*who, address.street, address.postal_code, address.city, address.country])
    return rows


def cmd_keys(client: Client, args: argparse.Namespace) -> int:
    """Print the entries of a session's cache, oldest first."""
    entries = client.session(args.session).list_cache_keys(page_size=args.page_size)
    if not entries:
        print("no cache entries")
        return EXIT_OK
    headers = ["KEY" if args.full_keys else "DIGEST", "REGION", "ROWS", "STORED AT", "HITS", "SIZE"]
    rows = [
        [
            entry.key if args.full_keys or not entry.digest else entry.digest,
            entry.region,
            str(entry.rows),
            _format_timestamp(entry.stored_at if entry.HasField("stored_at") else None),
            str(entry.hits),
            _format_bytes(entry.size_bytes),
        ]
        for entry in entries
    ]
    print(format_table(headers, rows, right={2, 4, 5}))
    print(f"entries: {len(entries)}")
    return EXIT_OK


def cmd_end(client: Client, args: argparse.Namespace) -> int:
    """End a session and print whether it existed and how many cache keys it dropped."""
    response = client.session(args.session).end()
    existed = "yes" if response.existed else "no"
    print(f"session: {args.session}  existed: {existed}  keys dropped: {response.keys_dropped}")
    return EXIT_OK


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    """Print the serving status; succeed only if it is SERVING (a container healthcheck)."""
    status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


# The parser.


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _add_session_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session", required=True, metavar="ID", help="session id (1-128 of [A-Za-z0-9._~-])"
    )


def _add_query_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "query", help="query persons through a session's cache", description=cmd_query.__doc__
    )
    _add_session_argument(parser)
    parser.add_argument("--name", default="", metavar="N", help="exact name, e.g. 'person 10'")
    parser.add_argument("--first", default="", metavar="A", help="lowest name of a name range")
    parser.add_argument("--last", default="", metavar="B", help="highest name of a name range")
    parser.add_argument(
        "--id",
        dest="ids",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        metavar="N",
        help="only these ids (repeatable)",
    )
    parser.add_argument(
        "--bypass-cache", action="store_true", help="neither read nor write the cache"
    )
    parser.add_argument(
        "--page-size", type=int, default=0, metavar="N", help="persons per page (0: default)"
    )
    parser.add_argument(
        "--page-token", default="", metavar="T", help="next page token of a previous query"
    )
    parser.add_argument("--basic", action="store_true", help="ids and names only, no addresses")
    parser.set_defaults(handler=cmd_query)


def _add_keys_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keys", help="list the entries of a session's cache", description=cmd_keys.__doc__
    )
    _add_session_argument(parser)
    parser.add_argument(
        "--full-keys", action="store_true", help="show full cache keys instead of digests"
    )
    parser.add_argument(
        "--page-size", type=int, default=0, metavar="N", help="entries fetched per call"
    )
    parser.set_defaults(handler=cmd_keys)


def _add_end_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("end", help="end a session", description=cmd_end.__doc__)
    _add_session_argument(parser)
    parser.set_defaults(handler=cmd_end)


def _add_health_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check serving status (exit 0 only if SERVING)",
        description=cmd_health.__doc__,
    )
    parser.add_argument(
        "--service", default="", metavar="NAME", help="service to check ('' is the whole server)"
    )
    parser.set_defaults(handler=cmd_health)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the tool, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Query a sesscache server and inspect its session caches.",
    )
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"server address (env {TARGET_ENV}, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per call (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--token", metavar="T", help=f"bearer token sent with every call (env {TOKEN_ENV})"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle: connect with TLS")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM client private key (mutual TLS)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_query_parser(subparsers)
    _add_keys_parser(subparsers)
    _add_end_parser(subparsers)
    _add_health_parser(subparsers)
    return parser


def _read_file(path: str | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


def _make_client(args: argparse.Namespace) -> Client:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key must be given together")
    target = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    try:
        return Client(
            target,
            timeout=args.timeout,
            token=token,
            root_certificates=_read_file(args.tls_ca, "--tls-ca"),
            private_key=_read_file(args.tls_key, "--tls-key"),
            certificate_chain=_read_file(args.tls_cert, "--tls-cert"),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Run the tool on ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error, or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        with _make_client(args) as client:
            status = handler(client, args)
    except (UsageError, InvalidArgument) as exc:
        status = _fail(str(exc), EXIT_USAGE)
    except SesscacheError as exc:
        status = _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        status = _fail("interrupted", 130)
    except Exception as exc:  # the tool promises one line, never a traceback
        status = _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR)
    return status


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status
