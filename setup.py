"""Build hook of ``sesscache``: the ``sesscache.v1`` stubs, generated at build time.

Everything else is in ``pyproject.toml``; the commands are ``client/stubs.py``'s.
"""

import importlib.util
from pathlib import Path

from setuptools import setup

spec = importlib.util.spec_from_file_location(
    "stubs", Path(__file__).parent / "client" / "stubs.py"
)
assert spec is not None
assert spec.loader is not None
stubs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stubs)

setup(cmdclass=stubs.setup_commands("sesscache.v1"))
