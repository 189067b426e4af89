"""Generate the Python stubs of ``sesscache.v1`` into a package of your choice.

``python client/stubs.py PROTO_ROOT OUT_DIR PACKAGE`` runs ``grpc_tools.protoc``
on ``PROTO_ROOT/sesscache/v1/sesscache.proto`` and writes ``*_pb2*.py`` and
``.pyi`` into ``OUT_DIR/<PACKAGE as a path>``. The proto file keeps its name
(``sesscache/v1/sesscache.proto``), so every copy registers the same descriptors;
only the generated modules' import of each other is rewritten to ``PACKAGE``.
The Makefile and both packages' build hooks (``setup.py``) call this one function.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PROTO = "sesscache/v1/sesscache.proto"
GENERATED_PACKAGE = "sesscache.v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(proto_root: Path, out_dir: Path, package: str = GENERATED_PACKAGE) -> list[Path]:
    """Write the stubs for ``package`` under ``out_dir``; return the files written."""
    target = out_dir.joinpath(*package.split("."))
    target.mkdir(parents=True, exist_ok=True)
    scripts = Path(sysconfig.get_path("scripts"))
    env = dict(os.environ, PATH=os.pathsep.join([str(scripts), os.environ.get("PATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                f"--mypy_out=quiet:{tmp}",
                f"--mypy_grpc_out=quiet:{tmp}",
                str(Path(proto_root) / PROTO),
            ],
            check=True,
            env=env,
        )
        written = []
        stem = Path(PROTO).stem
        for suffix in SUFFIXES:
            source = Path(tmp, *GENERATED_PACKAGE.split("."), stem + suffix)
            text = source.read_text()
            if package != GENERATED_PACKAGE:
                text = text.replace(f"from {GENERATED_PACKAGE} import", f"from {package} import")
                text = text.replace(f"import {GENERATED_PACKAGE}.", f"import {package}.")
                text = text.replace(f"{GENERATED_PACKAGE}.{stem}_pb2", f"{package}.{stem}_pb2")
            destination = target / source.name
            destination.write_text(text)
            written.append(destination)
    return written


if __name__ == "__main__":
    root, out, pkg = sys.argv[1:4]
    for path in generate(Path(root), Path(out), pkg):
        print(path)
