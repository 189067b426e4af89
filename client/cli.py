"""The sesscache command line tool: ``python -m client [options] COMMAND``.

Commands::

    query       --session ID [filters]     one page of persons, and how the cache served it
    keys        --session ID | --handle H  the entries of a session's cache (--region,
                                           --entity, --order stored|hits|size, --long)
    end         --session ID               end a session
    health      [--service NAME]           serving status; exit 0 only if SERVING
    stats       [--session ID] [--server] [--reset]
                                           cache statistics of a session and the server
    sessions    [--end-idle SECONDS]       the live sessions (admin); end the idle ones
    invalidate  --session ID (--key K | [filters] | --all) | --shared
                                           remove cache entries; print what was removed
    watch       --session ID | --all  [--type T ...] [--count N] [--duration S]
                                           live cache events, one line each, as they come

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
import collections
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from google.protobuf import duration_pb2, timestamp_pb2

from client._client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    Client,
    EntryOrderArg,
    EventTypeArg,
    PersonViewArg,
)
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


def _event_type_name(value: sesscache_pb2.CacheEventType.ValueType) -> str:
    try:
        name = sesscache_pb2.CacheEventType.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix("CACHE_EVENT_TYPE_").lower()


def _format_duration(duration: duration_pb2.Duration) -> str:
    """A duration as ``59m 58s``, ``3.2s``, ``2h 5m`` or ``1d 3h``."""
    total = duration.ToNanoseconds() / 1e9
    if total < 60:
        return f"{total:.1f}s"
    whole = int(total)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _format_expiry(entry: sesscache_pb2.CacheEntry) -> str:
    if entry.no_expiry:
        return "never"
    return _format_duration(entry.expires_in) if entry.HasField("expires_in") else "-"


def _format_ago(timestamp: timestamp_pb2.Timestamp, now: float) -> str:
    seconds = max(now - timestamp.ToNanoseconds() / 1e9, 0.0)
    return _format_duration(duration_pb2.Duration(seconds=int(seconds), nanos=0)) + " ago"


def _format_ratio(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


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
    """Print the entries of a session's cache (and/or the shared region), oldest first."""
    order: EntryOrderArg = args.order
    if args.handle is not None:
        entries = client.list_cache_keys_of(
            args.handle,
            region=args.region,
            entity=args.entity,
            order_by=order,
            page_size=args.page_size,
        )
    else:
        entries = client.session(args.session).list_cache_keys(
            page_size=args.page_size, region=args.region, entity=args.entity, order_by=order
        )
    if not entries:
        print("no cache entries")
        return EXIT_OK
    print(_entries_table(entries, full_keys=args.full_keys, long=args.long))
    print(f"entries: {len(entries)}")
    return EXIT_OK


def _entries_table(
    entries: Sequence[sesscache_pb2.CacheEntry], *, full_keys: bool, long: bool
) -> str:
    headers = ["KEY" if full_keys else "DIGEST", "REGION", "ROWS", "STORED AT", "HITS", "SIZE"]
    if long:
        headers += ["ENTITY", "EXPIRES IN", "LAST ACCESS", "LIVE", "SQL"]
    rows: list[list[str]] = []
    for entry in entries:
        row = [
            entry.key if full_keys or not entry.digest else entry.digest,
            entry.region,
            str(entry.rows),
            _format_timestamp(entry.stored_at if entry.HasField("stored_at") else None),
            str(entry.hits),
            _format_bytes(entry.size_bytes),
        ]
        if long:
            row += [
                entry.entity or "-",
                _format_expiry(entry),
                _format_timestamp(entry.last_access if entry.HasField("last_access") else None),
                str(entry.live_objects),
                str(entry.sql_statements),
            ]
        rows.append(row)
    right = {2, 4, 5, 7, 9, 10} if long else {2, 4, 5}
    return format_table(headers, rows, right=right)


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


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    """Print what the server is: version, uptime, libraries, database, settings, replica."""
    info = client.server_info()
    uptime = info.uptime.ToTimedelta()
    rows = [
        ("version", info.version),
        ("uptime", str(uptime - timedelta(microseconds=uptime.microseconds))),
        ("started", _format_timestamp(info.started)),
        ("python", info.python_version),
        ("database", f"{info.database_kind}  {info.database_url}"),
        ("replica", info.replica),
        *sorted(info.library_versions.items()),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if info.settings:
        print("settings:")
        width = max(len(name) for name in info.settings)
        for name, value in sorted(info.settings.items()):
            print(f"  {name:<{width}}  {value}")
    return EXIT_OK


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    """Print cache statistics: a session's and the server's, side by side."""
    if args.reset:
        if args.server:
            before = client.reset_server_stats()
            print(_stats_table([("SERVER (BEFORE RESET)", before)], server=True, gauges=False))
            print("server statistics reset")
        elif args.session is not None:
            before = client.session(args.session).reset_stats()
            print(_stats_table([("SESSION (BEFORE RESET)", before)], server=False, gauges=False))
            print(f"session {args.session}: statistics reset")
        else:
            raise UsageError("--reset needs --session ID or --server")
        return EXIT_OK
    if args.session is not None and not args.server:
        response = client.session(args.session).get_stats()
        columns = [("SESSION", response.session), ("SERVER", response.server)]
    else:
        columns = [("SERVER", client.server_stats())]
    print(_stats_table(columns, server=any(name == "SERVER" for name, _ in columns)))
    return EXIT_OK


_COUNTERS = (
    ("hits", "hits"),
    ("misses", "misses"),
    ("stores", "stores"),
    ("evictions", "evictions"),
    ("expirations", "expirations"),
    ("invalidations", "invalidations"),
    ("sql statements", "sql_statements"),
    ("sql saved by hits", "sql_statements_saved"),
)


def _stats_table(
    columns: Sequence[tuple[str, sesscache_pb2.CacheStats]], *, server: bool, gauges: bool = True
) -> str:
    """One row per statistic, one column per set of statistics.

    ``gauges``: also entries and size (and, for ``server``, the session counts),
    which a reset's "before" does not carry.
    """
    rows = [[label, *(str(getattr(s, field)) for _, s in columns)] for label, field in _COUNTERS]
    rows.append(["hit ratio", *(_format_ratio(s.hit_ratio) for _, s in columns)])
    if gauges:
        rows.append(["entries", *(str(s.entries) for _, s in columns)])
        rows.append(["size", *(_format_bytes(s.size_bytes) for _, s in columns)])
    if gauges and server:
        for label, field in (("sessions", "sessions"), ("sessions ended", "sessions_ended")):
            # Session counts mean nothing for one session's statistics.
            values = (str(getattr(s, field)) if name == "SERVER" else "-" for name, s in columns)
            rows.append([label, *values])
    since = (_format_timestamp(s.since if s.HasField("since") else None) for _, s in columns)
    rows.append(["since", *since])
    headers = ["STATISTIC", *(name for name, _ in columns)]
    return format_table(headers, rows, right=set(range(1, len(headers))))


def cmd_sessions(client: Client, args: argparse.Namespace) -> int:
    """Print the live sessions (admin), least recently active first; end the idle ones."""
    if args.end_idle is not None:
        ended = client.end_idle_sessions(args.end_idle)
        print(
            f"ended {ended.ended} session(s) idle for at least {args.end_idle:g}s "
            f"({ended.keys_dropped} cache keys dropped)"
        )
    sessions = client.list_sessions(page_size=args.page_size)
    if not sessions:
        print("no sessions")
        return EXIT_OK
    now = time.time()
    headers = ["ID", "HANDLE", "PEER", "CREATED", "LAST ACTIVE", "ENTRIES", "SIZE", "HITS"]
    headers += ["MISSES", "CALLS"]
    rows = [
        [
            info.id,
            info.handle,
            info.peer,
            _format_timestamp(info.created if info.HasField("created") else None),
            _format_ago(info.last_active, now) if info.HasField("last_active") else "-",
            str(info.entries),
            _format_bytes(info.size_bytes),
            str(info.hits),
            str(info.misses),
            str(info.calls_in_flight),
        ]
        for info in sessions
    ]
    print(format_table(headers, rows, right={4, 5, 6, 7, 8, 9}))
    print(f"sessions: {len(sessions)}")
    return EXIT_OK


def cmd_invalidate(client: Client, args: argparse.Namespace) -> int:
    """Remove cache entries and print what was removed.

    One target: ``--key`` (a key or a digest), a query (the same filters as
    ``query``: the entry that query would hit), ``--all`` (the whole session
    cache; the session stays) or ``--shared`` (the shared region, admin).
    """
    query_given = bool(args.name or args.first or args.last or args.ids or args.page_token)
    targets = [args.key is not None, query_given, args.all, args.shared]
    if sum(targets) != 1:
        raise UsageError(
            "give exactly one of --key, a query (--name/--first/--last/--id), --all, --shared"
        )
    if args.shared:
        if args.session is not None:
            raise UsageError("--shared works on the server's shared region: drop --session")
        removed = client.invalidate_shared_region()
    else:
        if args.session is None:
            raise UsageError("--session ID is required (except with --shared)")
        session = client.session(args.session)
        if args.key is not None:
            removed = session.invalidate_key(args.key)
        elif args.all:
            removed = session.clear_cache()
        else:
            view: PersonViewArg = "basic" if args.basic else None
            removed = session.invalidate_query(
                name=args.name,
                name_first=args.first,
                name_last=args.last,
                ids=args.ids,
                page_size=args.page_size,
                page_token=args.page_token,
                view=view,
            )
    if not removed:
        print("nothing removed")
        return EXIT_OK
    print(_entries_table(removed, full_keys=args.full_keys, long=False))
    print(f"removed: {len(removed)}")
    return EXIT_OK


_WATCH_COLUMNS = (("TIME", 13), ("TYPE", 11), ("SESSION", 24), ("REGION", 13), ("DIGEST", 12))


def _watch_line(values: Sequence[str], rows: str, lost: str) -> str:
    cells = [
        _cell(value).ljust(width) for value, (_, width) in zip(values, _WATCH_COLUMNS, strict=True)
    ]
    return "  ".join([*cells, rows.rjust(5), lost.rjust(5)]).rstrip()


def _event_line(event: sesscache_pb2.CacheEvent) -> str:
    when = event.time.ToDatetime(tzinfo=UTC) if event.HasField("time") else datetime.now(UTC)
    return _watch_line(
        [
            when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            _event_type_name(event.type),
            event.session or "-",
            event.region or "-",
            event.digest or "-",
        ],
        str(event.rows),
        str(event.lost) if event.lost else "",
    )


def _watch_summary(counts: collections.Counter[str], received: int, lost: int) -> str:
    parts = [f"{name} {counts[name]}" for name in sorted(counts)]
    by_type = f"  ({', '.join(parts)})" if parts else ""
    return f"events: {received}  lost: {lost}{by_type}"


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    """Print live cache events, one line each as they arrive, then a summary.

    On a terminal the summary is a running line kept under the events. Stops
    after ``--count`` events, after ``--duration`` seconds, or on Ctrl-C.
    """
    types: list[EventTypeArg] = args.types
    if args.all:
        stream = client.watch_all(types=types, duration=args.duration)
    else:
        stream = client.session(args.session).watch(types=types, duration=args.duration)
    out = sys.stdout
    live = out.isatty()
    scope = "every session" if args.all else f"session {args.session}"
    print(f"watching {scope}" + (f" for {args.duration:g}s" if args.duration else ""), flush=True)
    print(_watch_line([name for name, _ in _WATCH_COLUMNS], "ROWS", "LOST"), flush=True)
    counts: collections.Counter[str] = collections.Counter()
    with stream:
        try:
            for event in stream:
                counts[_event_type_name(event.type)] += 1
                _show(out, _event_line(event), live=live)
                if live:
                    out.write(_watch_summary(counts, stream.received, stream.lost))
                    out.flush()
                if args.count is not None and stream.received >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    _show(out, _watch_summary(counts, stream.received, stream.lost), live=live)
    return EXIT_OK


def _show(out: TextIO, line: str, *, live: bool) -> None:
    """Print ``line``; on a terminal, over the running summary line first."""
    if live:
        out.write("\r\033[K")
    out.write(line + "\n")
    out.flush()


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
    _add_query_filters(parser)
    parser.add_argument(
        "--bypass-cache", action="store_true", help="neither read nor write the cache"
    )
    parser.set_defaults(handler=cmd_query)


def _add_keys_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keys", help="list the entries of a session's cache", description=cmd_keys.__doc__
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="ID", help="session id (1-128 of [A-Za-z0-9._~-])")
    which.add_argument(
        "--handle", metavar="H", help="admin: another session, by its handle (see 'sessions')"
    )
    parser.add_argument(
        "--full-keys", action="store_true", help="show full cache keys instead of digests"
    )
    parser.add_argument(
        "--region",
        default="",
        metavar="R",
        help="local_session (default), default (the shared region) or '*' (both)",
    )
    parser.add_argument("--entity", default="", metavar="E", help="only entries of this entity")
    parser.add_argument(
        "--order",
        choices=("stored", "hits", "size"),
        default=None,
        help="stored (oldest first, the default), hits (most first) or size (largest first)",
    )
    parser.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="also show entity, expiry, last access, live objects and SQL statements",
    )
    parser.add_argument(
        "--page-size", type=int, default=0, metavar="N", help="entries fetched per call"
    )
    parser.set_defaults(handler=cmd_keys)


def _add_stats_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stats", help="cache statistics of a session and the server", description=cmd_stats.__doc__
    )
    parser.add_argument("--session", metavar="ID", help="also show (or reset) this session's")
    parser.add_argument(
        "--server", action="store_true", help="the server's only (with --reset: admin)"
    )
    parser.add_argument(
        "--reset", action="store_true", help="reset the counters; print them as they were"
    )
    parser.set_defaults(handler=cmd_stats)


def _add_sessions_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sessions", help="list live sessions (admin)", description=cmd_sessions.__doc__
    )
    parser.add_argument(
        "--end-idle",
        type=_positive_float,
        metavar="SECONDS",
        help="first end every session idle for at least this long",
    )
    parser.add_argument(
        "--page-size", type=int, default=0, metavar="N", help="sessions fetched per call"
    )
    parser.set_defaults(handler=cmd_sessions)


def _add_query_filters(parser: argparse.ArgumentParser) -> None:
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
        "--page-size", type=int, default=0, metavar="N", help="persons per page (0: default)"
    )
    parser.add_argument(
        "--page-token", default="", metavar="T", help="next page token of a previous query"
    )
    parser.add_argument("--basic", action="store_true", help="ids and names only, no addresses")


def _add_invalidate_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "invalidate",
        help="remove cache entries, print what was removed",
        description=cmd_invalidate.__doc__,
    )
    parser.add_argument("--session", metavar="ID", help="the session whose cache to change")
    parser.add_argument("--key", metavar="K", help="one entry: its key or digest")
    parser.add_argument("--all", action="store_true", help="the whole session cache")
    parser.add_argument(
        "--shared", action="store_true", help="the whole shared region (admin; no --session)"
    )
    _add_query_filters(parser)
    parser.add_argument(
        "--full-keys", action="store_true", help="show full cache keys instead of digests"
    )
    parser.set_defaults(handler=cmd_invalidate)


def _event_type(text: str) -> str:
    names = [
        name.removeprefix("CACHE_EVENT_TYPE_").lower()
        for name, number in sesscache_pb2.CacheEventType.items()
        if number != sesscache_pb2.CACHE_EVENT_TYPE_UNSPECIFIED
    ]
    value = text.strip().lower().replace("-", "_")
    if value not in names:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(names)}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _add_watch_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch", help="print live cache events as they happen", description=cmd_watch.__doc__
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", metavar="ID", help="the session to watch")
    which.add_argument("--all", action="store_true", help="every session (admin)")
    parser.add_argument(
        "--type",
        dest="types",
        type=_event_type,
        nargs="+",
        action="extend",
        default=[],
        metavar="T",
        help="only these types: hit miss store invalidate evict expire session_end",
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")
    parser.add_argument(
        "--duration", type=_positive_float, metavar="S", help="stop after S seconds"
    )
    parser.set_defaults(handler=cmd_watch)


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


def _add_info_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "info", help="what the server is: version, uptime, settings", description=cmd_info.__doc__
    )
    parser.set_defaults(handler=cmd_info)


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
    _add_info_parser(subparsers)
    _add_stats_parser(subparsers)
    _add_sessions_parser(subparsers)
    _add_invalidate_parser(subparsers)
    _add_watch_parser(subparsers)
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
