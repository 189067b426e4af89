"""Entry point of ``python -m client``: the sesscache command line tool."""

from client.cli import main

raise SystemExit(main())
