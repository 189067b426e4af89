"""``sesscache-server`` and ``python -m sesscache_server``: run the sesscache gRPC server.

Both run :func:`main`. Unless ``PYTHONMALLOC`` is set, the process first
re-executes itself (as ``python -m sesscache_server``) with ``PYTHONMALLOC=malloc``:
memory freed after a burst of sessions then goes back to the system (see
:mod:`sesscache_server.memory`). Set ``PYTHONMALLOC=pymalloc`` to keep Python's
own allocator. See ``--help`` for the settings.
"""

import os
import sys


def main() -> int:
    """The server's command line entry point (the allocator first, then :func:`app.main`)."""
    if "PYTHONMALLOC" not in os.environ:
        os.environ["PYTHONMALLOC"] = "malloc"
        os.execv(sys.executable, [sys.executable, "-m", "sesscache_server", *sys.argv[1:]])  # noqa: S606

    from sesscache_server.app import main as serve_main

    return serve_main()


if __name__ == "__main__":
    sys.exit(main())
