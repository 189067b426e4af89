"""``python -m server``: run the sesscache gRPC server (see ``--help``)."""

import sys

from server.app import main

sys.exit(main())
