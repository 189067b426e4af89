"""``python -m sesscache_server``: run the sesscache gRPC server (see ``--help``).

Unless ``PYTHONMALLOC`` is set, the process first re-executes itself with
``PYTHONMALLOC=malloc``: memory freed after a burst of sessions then goes
back to the system (see :mod:`sesscache_server.memory`). Set ``PYTHONMALLOC=pymalloc``
to keep Python's own allocator.
"""

import os
import sys

if "PYTHONMALLOC" not in os.environ:
    os.environ["PYTHONMALLOC"] = "malloc"
    os.execv(sys.executable, [sys.executable, "-m", "sesscache_server", *sys.argv[1:]])  # noqa: S606

from sesscache_server.app import main

sys.exit(main())
