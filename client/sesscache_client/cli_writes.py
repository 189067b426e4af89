"""The write commands of the command line tool: ``create``, ``update``, ``delete``.

Each runs in the session named by ``--session`` (so that session's cache stays
right, see the proto) and prints the person as the server committed it, with
its etag; ``--json`` prints the response message. A stale ``--etag`` or a
concurrent change is ABORTED and a duplicate name ALREADY_EXISTS (exit status 1,
the error's ``code`` says which); an unknown person is NOT_FOUND (3).
"""

from __future__ import annotations

import argparse

from sesscache_client._client import Client
from sesscache_client.cli import (
    EXIT_OK,
    _add_session_argument,
    _as_dict,
    _person_rows,
    _print_json,
    format_table,
)
from sesscache_client.v1 import sesscache_pb2

__all__ = ["add_write_parsers", "cmd_create", "cmd_delete", "cmd_update"]

_HEADERS = ["ID", "NAME", "STREET", "POSTAL CODE", "CITY", "COUNTRY"]


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    """Create a person (the writer role, with authentication on); print it and its etag."""
    addresses = [(street, code) for street, code in args.addresses]
    person = client.session(args.session).create_person(args.name, addresses=addresses)
    return _print_person(person, args, "created")


def cmd_update(client: Client, args: argparse.Namespace) -> int:
    """Rename a person and/or change the street of one of its addresses; print it as
    committed, with its new etag. With --etag, only if the person is unchanged since."""
    person = client.session(args.session).update_person(
        args.id, name=args.name, address_id=args.address_id, street=args.street, etag=args.etag
    )
    return _print_person(person, args, "updated")


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    """Delete a person and its addresses; print it as it was. With --etag, only if the
    person is unchanged since."""
    person = client.session(args.session).delete_person(args.id, etag=args.etag)
    return _print_person(person, args, "deleted")


def _print_person(person: sesscache_pb2.Person, args: argparse.Namespace, done: str) -> int:
    if args.json:
        _print_json(_as_dict(person))
        return EXIT_OK
    print(format_table(_HEADERS, _person_rows([person]), right={0}))
    print(f"{done}: person {person.id}  etag: {person.etag}")
    return EXIT_OK


def add_write_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``create``, ``update`` and ``delete``."""
    create = subparsers.add_parser(
        "create", help="create a person (writer role)", description=cmd_create.__doc__
    )
    _add_session_argument(create)
    create.add_argument("--name", required=True, metavar="N", help="the name (unique)")
    create.add_argument(
        "--address",
        dest="addresses",
        nargs=2,
        action="append",
        default=[],
        metavar=("STREET", "CODE"),
        help="an address: street and a known postal code, e.g. 'Main St 1' 60601 (repeatable)",
    )
    create.set_defaults(handler=cmd_create)

    update = subparsers.add_parser(
        "update",
        help="rename a person or change an address's street (writer role)",
        description=cmd_update.__doc__,
    )
    _add_session_argument(update)
    update.add_argument("--id", type=int, required=True, metavar="N", help="the person's id")
    update.add_argument("--name", default=None, metavar="N", help="the new name")
    update.add_argument(
        "--address-id", type=int, default=None, metavar="A", help="the address to change"
    )
    update.add_argument("--street", default=None, metavar="S", help="its new street")
    _add_etag_argument(update)
    update.set_defaults(handler=cmd_update)

    delete = subparsers.add_parser(
        "delete", help="delete a person (writer role)", description=cmd_delete.__doc__
    )
    _add_session_argument(delete)
    delete.add_argument("--id", type=int, required=True, metavar="N", help="the person's id")
    _add_etag_argument(delete)
    delete.set_defaults(handler=cmd_delete)


def _add_etag_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etag",
        default="",
        metavar="E",
        help="only if the person's etag is still E (as printed or queried); else ABORTED",
    )
