"""Entry point of ``python -m sesscache_client``: the sesscache command line tool."""

from sesscache_client.cli import main

raise SystemExit(main())
