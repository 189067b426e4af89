"""The sesscache command line tool: ``python -m sesscache_client [options] COMMAND``.

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
    info                                   what the server is: version, uptime, settings
    create      --session ID --name N [--address STREET CODE ...]
                                           create a person (writer role); print it with its etag
    update      --session ID --id N [--name N] [--address-id A --street S] [--etag E]
                                           rename a person and/or change one address's street
    delete      --session ID --id N [--etag E]
                                           delete a person and its addresses
    top         [--session ID] [--interval S] [--count N]
                                           (also ``stats --interval S``) a repeating view of
                                           hits/s, misses/s, hit ratio, SQL saved/s, entries

Connection options come before the command: ``--target`` (env ``SESSCACHE_TARGET``,
default 127.0.0.1:50051; a host without a port means port 50051), ``--timeout``,
``--token`` (env ``SESSCACHE_TOKEN``), ``--tls-ca``, ``--tls-cert``/``--tls-key``.

``--json`` (before or after the command) prints one JSON object on stdout
(``watch`` and ``top``: one per line, per event or update), the response
messages as ``google.protobuf.json_format`` renders them with the proto's field
names and enum value names; an error is then one JSON object on stderr,
``{"error": {"code": ..., "message": ..., "field_violations": [...]}}``.

Exit status: see :data:`EXIT_CODES` (also in ``--help``). Errors are one
``error: ...`` line on stderr, never a traceback.

To add a command: write ``cmd_<name>(client, args) -> int`` and an
``_add_<name>_parser(subparsers)`` that registers it with ``set_defaults(handler=...)``,
then call the latter from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import inspect
import io
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TextIO

from google.protobuf import duration_pb2, json_format, message, timestamp_pb2

from sesscache_client._client import (
    DEFAULT_PORT,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    Client,
    EntryOrderArg,
    EventStream,
    EventTypeArg,
    PersonViewArg,
    cache_digest,
    enum_name,
    with_default_port,
)
from sesscache_client.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SesscacheError,
    Unauthenticated,
    Unavailable,
)
from sesscache_client.v1 import sesscache_pb2

__all__ = [
    "EXIT_CODES",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_INVALID_ARGUMENT",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_RESOURCE_EXHAUSTED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "format_table",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_INVALID_ARGUMENT = 5
EXIT_DENIED = 6
EXIT_RESOURCE_EXHAUSTED = 7

#: The exit statuses of the tool, written once: ``--help`` prints this table, and
#: the README copies it.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "any other error (e.g. health not SERVING, INTERNAL)"),
    (EXIT_USAGE, "usage: a bad command line"),
    (EXIT_NOT_FOUND, "not found: no such session or person, or invalidate removed nothing"),
    (EXIT_UNAVAILABLE, "cannot reach the server, UNAVAILABLE, or the --timeout passed"),
    (EXIT_INVALID_ARGUMENT, "INVALID_ARGUMENT: a value the server (or client) refused"),
    (EXIT_DENIED, "UNAUTHENTICATED or PERMISSION_DENIED"),
    (EXIT_RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED: a server limit refused the call"),
)

#: The exit status of each client error (any other: EXIT_ERROR).
_ERROR_EXITS: tuple[tuple[type[SesscacheError], int], ...] = (
    (NotFound, EXIT_NOT_FOUND),
    (Unavailable, EXIT_UNAVAILABLE),
    (DeadlineExceeded, EXIT_UNAVAILABLE),
    (InvalidArgument, EXIT_INVALID_ARGUMENT),
    (Unauthenticated, EXIT_DENIED),
    (PermissionDenied, EXIT_DENIED),
    (ResourceExhausted, EXIT_RESOURCE_EXHAUSTED),
)

#: Characters of a cache key shown by ``query`` (``--long``: all of it).
KEY_PREVIEW = 60

TARGET_ENV = "SESSCACHE_TARGET"
TOKEN_ENV = "SESSCACHE_TOKEN"  # noqa: S105 (a variable name, not a secret)

Handler = Callable[[Client, argparse.Namespace], int]


class UsageError(Exception):
    """A bad command line the parser could not catch (e.g. an unreadable file)."""


class _ParserError(Exception):
    """Raised by the parser instead of printing and exiting (see :class:`_Parser`)."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors :func:`main` prints (as text, or as JSON)."""

    def error(self, message: str) -> NoReturn:
        raise _ParserError(message, f"{self.format_usage()}{self.prog}: error: {message}\n")


# JSON output.


def _as_dict(msg: message.Message) -> dict[str, Any]:
    """A message as JSON-ready data: the proto's field names, enum value names,
    every field (zeros too), int64 as numbers."""
    return json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _print_json(data: object, file: TextIO | None = None) -> None:
    print(json.dumps(data, ensure_ascii=False), file=file or sys.stdout, flush=True)


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
    name = enum_name(sesscache_pb2.QueryPersonsResponse(cache_status=status), "cache_status")
    return name.removeprefix("CACHE_STATUS_")


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
    if args.json:
        _print_json(_as_dict(response))
        return EXIT_OK
    if not response.persons:
        print("no persons")
    elif args.basic:
        rows = [[str(person.id), person.name] for person in response.persons]
        print(format_table(["ID", "NAME"], rows, right={0}))
    else:
        headers = ["ID", "NAME", "STREET", "POSTAL CODE", "CITY", "COUNTRY"]
        print(format_table(headers, _person_rows(response.persons), right={0}))
    key = _cell(response.cache_key)
    if not args.long and len(key) > KEY_PREVIEW:
        key = key[:KEY_PREVIEW] + "..."
    digest = cache_digest(response.cache_key) if response.cache_key else "-"
    if response.HasField("miss"):
        print(f"miss: {miss_text(response.miss)}")
    print(
        f"cache: {_cache_status_name(response.cache_status)}  "
        f"sql statements: {response.sql_statements}  digest: {digest}  key: {key or '-'}"
    )
    if response.next_page_token:
        print(f"next page token: {response.next_page_token}")
    return EXIT_OK


def miss_text(miss: sesscache_pb2.MissInfo) -> str:
    """Why a lookup missed, in words: "evicted at 12:00:01", "changed by change 42 ..."."""
    reason = sesscache_pb2.MissReason.Name(miss.reason).removeprefix("MISS_REASON_")
    text = reason.lower().replace("_", " ")
    if miss.change_id:
        text += f" by change {miss.change_id}"
    if miss.detail:
        text += f" ({miss.detail})"
    if miss.HasField("removed"):
        text += " at " + miss.removed.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    return text


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """Say whether a session's cache holds a key (or digest), and if not, why.

    Exit status 3 when it is not cached (like 'invalidate' finding nothing)."""
    response = client.session(args.session).explain_cache_key(args.key)
    if args.json:
        _print_json(_as_dict(response))
    elif response.cached:
        entry = response.entry
        print(f"cached: {entry.digest}  rows: {entry.rows}  hits: {entry.hits}")
    else:
        print(f"not cached: {miss_text(response.miss)}")
    return EXIT_OK if response.cached else EXIT_NOT_FOUND


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
    if args.json:
        _print_json({"entries": [_as_dict(entry) for entry in entries]})
        return EXIT_OK
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
    if args.json:
        _print_json(_as_dict(response))
        return EXIT_OK
    existed = "yes" if response.existed else "no"
    print(f"session: {args.session}  existed: {existed}  keys dropped: {response.keys_dropped}")
    return EXIT_OK


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    """Print the serving status; succeed only if it is SERVING (a container healthcheck)."""
    status = client.health(args.service)
    if args.json:
        _print_json({"status": status})
    else:
        print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    """Print what the server is: version, uptime, libraries, database, settings, replica."""
    info = client.server_info()
    if args.json:
        _print_json(_as_dict(info))
        return EXIT_OK
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
    """Print cache statistics: a session's and the server's, side by side.

    With ``--interval`` (or as ``top``), a repeating view instead: rates
    between successive snapshots (below).
    """
    interval: float | None = args.interval
    if interval is None and args.command == "top":
        interval = 1.0
    if interval is not None:
        if args.reset:
            raise UsageError("--reset and --interval do not go together")
        return cmd_top(client, args, interval)
    if args.count is not None:
        raise UsageError("--count needs --interval (or the top command)")
    if args.reset:
        return _reset_stats(client, args)
    if args.session is not None and not args.server:
        response = client.session(args.session).get_stats()
        columns = [("SESSION", response.session), ("SERVER", response.server)]
    else:
        response = sesscache_pb2.GetStatsResponse(server=client.server_stats())
        feed = client.get_stats()  # the change feed's figures (admin)
        if feed.HasField("feed"):
            response.feed.CopyFrom(feed.feed)
        columns = [("SERVER", response.server)]
    if args.json:
        _print_json(_as_dict(response))
        return EXIT_OK
    print(_stats_table(columns, server=any(name == "SERVER" for name, _ in columns)))
    if response.HasField("feed"):
        print(_feed_lines(response.feed))
    return EXIT_OK


def _feed_lines(feed: sesscache_pb2.FeedStats) -> str:
    """The change feed's figures, under the statistics table."""
    removed = ", ".join(f"{k} {v}" for k, v in sorted(feed.invalidations.items())) or "none"
    gaps = ", ".join(f"{k} {v}" for k, v in sorted(feed.gaps.items())) or "none"
    state = "connected" if feed.connected else "DISCONNECTED"
    return (
        f"change feed: {state}, position {feed.position}, head {feed.head}, "
        f"{feed.changes} changes applied\n"
        f"  lag commit->applied: p50 {feed.lag_p50_ms:.1f} ms, p99 {feed.lag_p99_ms:.1f} ms\n"
        f"  removals by reason: {removed}\n"
        f"  gaps by reason: {gaps}"
    )


def _reset_stats(client: Client, args: argparse.Namespace) -> int:
    if args.server:
        before = client.reset_server_stats()
        title, done = "SERVER (BEFORE RESET)", "server statistics reset"
    elif args.session is not None:
        before = client.session(args.session).reset_stats()
        title, done = "SESSION (BEFORE RESET)", f"session {args.session}: statistics reset"
    else:
        raise UsageError("--reset needs --session ID or --server")
    if args.json:
        _print_json(_as_dict(sesscache_pb2.ResetStatsResponse(before=before)))
        return EXIT_OK
    print(_stats_table([(title, before)], server=args.server, gauges=False))
    print(done)
    return EXIT_OK


# top: rates between successive GetStats snapshots.

_TOP_COLUMNS = (
    ("TIME", 9),
    ("SESSIONS", 8),
    ("HITS/S", 9),
    ("MISSES/S", 9),
    ("HIT RATIO", 9),
    ("SQL SAVED/S", 11),
    ("ENTRIES", 8),
    ("BYTES", 10),
    ("EVICTIONS/S", 11),
)


def _top_snapshot(client: Client, session: str | None) -> tuple[str, sesscache_pb2.CacheStats]:
    """(scope, statistics): the session's, else the server's (admin), else the principal's."""
    if session is not None:
        return f"session {session}", client.session(session).get_stats().session
    response = client.get_stats()
    if response.HasField("server"):
        return "server", response.server
    return "principal", response.principal


def _top_rates(
    before: sesscache_pb2.CacheStats, after: sesscache_pb2.CacheStats, seconds: float
) -> dict[str, float | int | None]:
    """One update: rates per second over ``seconds``, and the gauges of ``after``."""

    def delta(field: str) -> int:
        change: int = getattr(after, field) - getattr(before, field)
        return change if change >= 0 else int(getattr(after, field))  # reset in between

    seconds = max(seconds, 1e-9)
    hits, misses = delta("hits"), delta("misses")
    return {
        "sessions": after.sessions,
        "hits_per_second": hits / seconds,
        "misses_per_second": misses / seconds,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "sql_saved_per_second": delta("sql_statements_saved") / seconds,
        "entries": after.entries,
        "size_bytes": after.size_bytes,
        "evictions_per_second": delta("evictions") / seconds,
    }


def _top_cells(rates: dict[str, float | int | None]) -> list[str]:
    ratio = rates["hit_ratio"]
    return [
        datetime.now(UTC).strftime("%H:%M:%S"),
        str(rates["sessions"]),
        f"{rates['hits_per_second']:.1f}",
        f"{rates['misses_per_second']:.1f}",
        "-" if ratio is None else _format_ratio(ratio),
        f"{rates['sql_saved_per_second']:.1f}",
        str(rates["entries"]),
        _format_bytes(int(rates["size_bytes"] or 0)),
        f"{rates['evictions_per_second']:.1f}",
    ]


def _top_line(cells: Sequence[str]) -> str:
    return "  ".join(
        cell.rjust(width) for cell, (_, width) in zip(cells, _TOP_COLUMNS, strict=True)
    )


def _top_updates(
    client: Client, session: str | None, interval: float, count: int | None
) -> Iterable[tuple[str, dict[str, float | int | None]]]:
    """(scope, rates) every ``interval`` seconds, ``count`` times (``None``: forever)."""
    scope, before = _top_snapshot(client, session)
    then = time.monotonic()
    done = 0
    while count is None or done < count:
        time.sleep(max(interval - (time.monotonic() - then), 0.0))
        scope, after = _top_snapshot(client, session)
        now = time.monotonic()
        yield scope, _top_rates(before, after, now - then)
        before, then = after, now
        done += 1


def cmd_top(client: Client, args: argparse.Namespace, interval: float) -> int:
    """A repeating view of the cache, like ``redis-cli --stat`` or ``varnishstat``.

    Every ``interval`` seconds: sessions, hits/s, misses/s, the hit ratio of the
    interval, SQL statements saved/s, entries, bytes and evictions/s, from
    successive GetStats snapshots (the server's for admins, else the caller's
    principal's; ``--session``: that session's). On a terminal with ``rich``
    installed, a live table; otherwise one plain line per update (``--json``:
    one JSON object per line). Stops after ``--count`` updates, or on Ctrl-C.
    """
    updates = _top_updates(client, args.session, interval, args.count)
    if not args.json and sys.stdout.isatty() and _rich_available():
        return _top_live(updates)
    header_printed = False
    try:
        for scope, rates in updates:
            if args.json:
                _print_json({"scope": scope, "interval": interval, **rates})
                continue
            if not header_printed:
                print(f"statistics of the {scope}, every {interval:g}s")
                print(_top_line([name for name, _ in _TOP_COLUMNS]), flush=True)
                header_printed = True
            print(_top_line(_top_cells(rates)), flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


def _top_live(updates: Iterable[tuple[str, dict[str, float | int | None]]]) -> int:
    """The rich live table of :func:`cmd_top`, one row per figure like ``varnishstat``:
    its value over the last interval and its average since the start (rich is
    optional: imported here only)."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    rates = ("hits_per_second", "misses_per_second", "sql_saved_per_second")
    rows = (
        ("sessions", "sessions"),
        ("hits/s", "hits_per_second"),
        ("misses/s", "misses_per_second"),
        ("hit ratio", "hit_ratio"),
        ("sql saved/s", "sql_saved_per_second"),
        ("entries", "entries"),
        ("size", "size_bytes"),
        ("evictions/s", "evictions_per_second"),
    )
    totals: collections.defaultdict[str, float] = collections.defaultdict(float)

    def show(field: str, value: float | int | None) -> str:
        if value is None:
            return "-"
        if field == "hit_ratio":
            return _format_ratio(value)
        if field == "size_bytes":
            return _format_bytes(int(value))
        return f"{value:.1f}" if field.endswith("_per_second") else str(value)

    def render(title: str, now: dict[str, float | int | None], updates: int) -> Table:
        table = Table(title=title, title_justify="left")
        table.add_column("STATISTIC")
        table.add_column("LAST INTERVAL", justify="right")
        table.add_column("AVERAGE", justify="right")
        for label, field in rows:
            average: float | int | None = None
            if updates and (field in rates or field == "evictions_per_second"):
                average = totals[field] / updates
            elif field == "hit_ratio" and totals["lookups"]:
                average = totals["hits"] / totals["lookups"]
            table.add_row(label, show(field, now.get(field)), show(field, average))
        return table

    console = Console(file=sys.stdout)
    count = 0
    try:
        waiting = render("sesscache: waiting for the first interval", {}, 0)
        with Live(waiting, console=console) as live:
            for scope, now in updates:
                count += 1
                for field in (*rates, "evictions_per_second"):
                    totals[field] += float(now[field] or 0)
                # Hits and lookups per interval, for the ratio over the whole run.
                totals["hits"] += float(now["hits_per_second"] or 0)
                totals["lookups"] += float(now["hits_per_second"] or 0) + float(
                    now["misses_per_second"] or 0
                )
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                live.update(render(f"sesscache: {scope}  {stamp}", now, count), refresh=True)
    except KeyboardInterrupt:
        pass
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
    if args.json:
        data: dict[str, Any] = {}
        if args.end_idle is not None:
            data["ended"] = _as_dict(client.end_idle_sessions(args.end_idle))
        sessions = client.list_sessions(page_size=args.page_size)
        data["sessions"] = [_as_dict(info) for info in sessions]
        _print_json(data)
        return EXIT_OK
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
    if args.json:
        response = sesscache_pb2.InvalidateResponse(removed=removed, removed_count=len(removed))
        _print_json(_as_dict(response))
        return EXIT_OK if removed else EXIT_NOT_FOUND
    if not removed:
        print("nothing removed")
        return EXIT_NOT_FOUND
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
    ) + (
        # An invalidation by a committed change: which row, which change.
        f"  change {event.change_id}: {event.table} {event.row_id}" if event.change_id else ""
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
    if args.json:
        return _watch_json(stream, args.count)
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


def _watch_json(stream: EventStream, count: int | None) -> int:
    """``watch --json``: one JSON object (a CacheEvent) per line, flushed as each comes."""
    with stream:
        try:
            for event in stream:
                _print_json(_as_dict(event))
                if count is not None and stream.received >= count:
                    break
        except KeyboardInterrupt:
            pass
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
    parser.add_argument(
        "-l", "--long", action="store_true", help=f"the whole cache key (else {KEY_PREVIEW} chars)"
    )
    parser.set_defaults(handler=cmd_query)


def _add_explain_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="whether a session's cache holds a key, and if not why",
        description=cmd_explain.__doc__,
    )
    parser.add_argument("--session", metavar="ID", required=True, help="session id")
    parser.add_argument("key", help="a cache key or an entry's digest (see 'query' and 'keys')")
    parser.set_defaults(handler=cmd_explain)


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
        "stats",
        aliases=["top"],
        help="cache statistics of a session and the server; top: a repeating view",
        description=f"{inspect.cleandoc(cmd_stats.__doc__ or '')}\n\n"
        f"{inspect.cleandoc(cmd_top.__doc__ or '')}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", metavar="ID", help="also show (or reset) this session's")
    parser.add_argument(
        "--server", action="store_true", help="the server's only (with --reset: admin)"
    )
    parser.add_argument(
        "--reset", action="store_true", help="reset the counters; print them as they were"
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        metavar="SECONDS",
        help="repeat: rates every SECONDS (top: 1 by default)",
    )
    parser.add_argument(
        "--count", type=_positive_int, metavar="N", help="with --interval: stop after N updates"
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
    parser: argparse.ArgumentParser = _Parser(
        prog="sesscache",
        description="Query a sesscache server and inspect its session caches.",
        epilog=_exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"server address (env {TARGET_ENV}, default {DEFAULT_TARGET}; "
        f"a missing port means {DEFAULT_PORT})",
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
    _add_explain_parser(subparsers)
    _add_end_parser(subparsers)
    _add_health_parser(subparsers)
    _add_info_parser(subparsers)
    _add_stats_parser(subparsers)
    _add_sessions_parser(subparsers)
    _add_invalidate_parser(subparsers)
    _add_watch_parser(subparsers)
    from sesscache_client.cli_writes import add_write_parsers  # it imports this module

    add_write_parsers(subparsers)
    seen: set[int] = set()
    for command in subparsers.choices.values():  # aliases share their parser
        if id(command) not in seen:
            seen.add(id(command))
            # Also after the command; SUPPRESS keeps a --json given before it.
            command.add_argument(
                "--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP
            )
    return parser


_JSON_HELP = "print JSON (one object; watch and top: one per line); errors as JSON on stderr"


def _exit_codes_epilog() -> str:
    lines = ["exit status:"]
    lines += [f"  {code}  {meaning}" for code, meaning in EXIT_CODES]
    return "\n".join(lines)


def _read_file(path: str | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


def _target(args: argparse.Namespace) -> str:
    target = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    return with_default_port(target, DEFAULT_PORT)


def _make_client(args: argparse.Namespace) -> Client:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key must be given together")
    target = _target(args)
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
    args = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args
    handler: Handler = args.handler
    try:
        with _make_client(args) as client:
            return handler(client, args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # e.g. `watch --json | head -1`: the reader is gone
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # the tool promises one line, never a traceback
        return _report(exc, args)


def _parse(argv: list[str]) -> argparse.Namespace | int:
    """The parsed command line, or the exit status of a usage error or ``--help``."""
    try:
        return build_parser().parse_args(argv)
    except _ParserError as exc:
        options = argv[: argv.index("--")] if "--" in argv else argv
        if "--json" in options:
            return _fail_json("USAGE", str(exc), [], EXIT_USAGE)
        sys.stderr.write(exc.usage)
        return EXIT_USAGE
    except SystemExit as exc:  # --help: printed already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _report(exc: Exception, args: argparse.Namespace) -> int:
    """Print ``exc`` as one line (or one JSON object) on stderr; return the exit status."""
    violations: Sequence[tuple[str, str]] = ()
    if isinstance(exc, UsageError):
        code, status, text = "USAGE", EXIT_USAGE, str(exc)
        human = text
    elif isinstance(exc, SesscacheError):
        code = exc.code.name
        status = next((value for cls, value in _ERROR_EXITS if isinstance(exc, cls)), EXIT_ERROR)
        tls = args.tls_ca is not None or args.tls_cert is not None
        text = _explain(exc, _target(args), args.timeout, tls=tls)
        human = text if _is_connection_failure(exc) else f"{code}: {text}"
        if isinstance(exc, InvalidArgument):
            violations = exc.field_violations
    else:
        code, status = "UNKNOWN", EXIT_ERROR
        text = human = f"unexpected {type(exc).__name__}: {exc}"
    if args.json:
        return _fail_json(code, text, violations, status)
    return _fail(human, status)


def _is_connection_failure(exc: SesscacheError) -> bool:
    return isinstance(exc, Unavailable) and exc.connection_failed


def _explain(exc: SesscacheError, target: str, timeout: float, *, tls: bool = False) -> str:
    """The message of ``exc`` for a person: what went wrong and what to try, without
    gRPC's own connection text."""
    if isinstance(exc, Unavailable) and exc.tls_failed:
        return (
            f"cannot reach the server at {target}: the TLS handshake failed "
            "(see --tls-ca, --tls-cert, --tls-key)"
        )
    if _is_connection_failure(exc) and tls:
        # A server that refuses our certificate often just closes the connection.
        return (
            f"cannot reach the server at {target} (is it running? see --target; "
            "with TLS, check --tls-ca, --tls-cert, --tls-key)"
        )
    if _is_connection_failure(exc):
        return f"cannot reach the server at {target} (is it running? see --target)"
    if isinstance(exc, DeadlineExceeded):
        return f"no answer from {target} within {timeout:g}s (see --timeout)"
    # str(exc) is "CODE: message", said once; the code is shown apart.
    return str(exc).removeprefix(f"{exc.code.name}: ")


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _fail_json(code: str, message: str, violations: Sequence[tuple[str, str]], status: int) -> int:
    field_violations = [{"field": field, "description": text} for field, text in violations]
    error = {"code": code, "message": message, "field_violations": field_violations}
    _print_json({"error": error}, file=sys.stderr)
    return status
