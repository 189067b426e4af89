"""Build hook of ``sesscache-client``: the ``sesscache_client.v1`` stubs, generated at build time.

Everything else is in ``pyproject.toml``; the commands are ``stubs.py``'s (shipped
in the sdist, with the ``.proto``).
"""

import importlib.util
from pathlib import Path

from setuptools import setup

spec = importlib.util.spec_from_file_location("stubs", Path(__file__).parent / "stubs.py")
assert spec is not None
assert spec.loader is not None
stubs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stubs)

setup(cmdclass=stubs.setup_commands("sesscache_client.v1"))
