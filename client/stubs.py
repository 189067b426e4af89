"""Generate the Python stubs of ``sesscache.v1`` into a package of your choice.

``python client/stubs.py PROTO_ROOT OUT_DIR PACKAGE`` runs ``grpc_tools.protoc``
on ``PROTO_ROOT/sesscache/v1/sesscache.proto`` and writes ``*_pb2*.py`` and
``.pyi`` into ``OUT_DIR/<PACKAGE as a path>``. The proto file keeps its name
(``sesscache/v1/sesscache.proto``), so every copy registers the same descriptors;
only the generated modules' import of each other is rewritten to ``PACKAGE``.
The Makefile and both packages' build hooks (``setup.py``) call this one function.

The build hooks: :func:`setup_commands` gives a ``setup.py`` the setuptools
commands that generate the stubs at build time (into the wheel, or in place for
an editable install) and put the ``.proto`` into the sdist, so that a wheel
builds from the sdist alone. The generator needs ``grpcio-tools`` and
``mypy-protobuf`` (the ``[build-system] requires`` of both ``pyproject.toml``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from setuptools import Command

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


def find_proto_root(project: Path) -> Path:
    """Where ``PROTO`` is: the project's own ``protos/`` (the root, an sdist), else ``../protos``.

    The client's folder in a checkout has no ``protos/`` of its own: the proto is
    its parent's, and its sdist gets a copy (see :func:`setup_commands`).
    """
    for root in (project / "protos", project.parent / "protos"):
        if (root / PROTO).is_file():
            return root
    raise FileNotFoundError(
        f"{PROTO} is neither in {project}/protos nor in {project.parent}/protos"
    )


def setup_commands(package: str) -> dict[str, type[Command]]:
    """The ``cmdclass`` of a ``setup.py`` whose packages include ``package`` (the stubs).

    ``build`` runs ``build_stubs`` after ``build_py``: the stubs are written into
    the build folder (so into the wheel), or next to the sources for an editable
    install. ``sdist`` adds ``protos/`` to the release tree when the project has
    none of its own (the client's folder).
    """
    from setuptools import Command
    from setuptools.command.build import build
    from setuptools.command.sdist import sdist

    project = Path.cwd()  # setuptools runs setup.py in the project's folder

    class BuildStubs(Command):
        description = f"generate the {package} stubs from {PROTO}"
        user_options: list[tuple[str, str | None, str]] = []  # noqa: RUF012
        editable_mode = False  # set by setuptools for an editable install

        def initialize_options(self) -> None:
            self.build_lib: str | None = None
            self.outputs: list[str] = []

        def finalize_options(self) -> None:
            self.set_undefined_options("build_py", ("build_lib", "build_lib"))

        def run(self) -> None:
            assert self.build_lib is not None
            out = project if self.editable_mode else Path(self.build_lib)
            written = generate(find_proto_root(project), out, package)
            self.outputs = [] if self.editable_mode else [str(path) for path in written]

        def get_outputs(self) -> list[str]:
            return self.outputs

        def get_output_mapping(self) -> dict[str, str]:
            return {}

    class Build(build):
        sub_commands = [*build.sub_commands, ("build_stubs", None)]  # noqa: RUF012

    class Sdist(sdist):
        def make_release_tree(self, base_dir: str, files: list[str]) -> None:
            super().make_release_tree(base_dir, files)
            bundled = Path(base_dir, "protos", PROTO)
            if not bundled.exists():
                bundled.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(find_proto_root(project) / PROTO, bundled)

    return {"build": Build, "build_stubs": BuildStubs, "sdist": Sdist}


if __name__ == "__main__":
    root, out, pkg = sys.argv[1:4]
    for path in generate(Path(root), Path(out), pkg):
        print(path)
