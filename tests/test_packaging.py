"""The two distributions, built and installed as a user would, used from outside the checkout.

- ``python -m build`` builds ``sesscache`` (the root) and ``sesscache-client``
  (``client/``): each an sdist, then the wheel from that sdist alone. The sdists
  carry the ``.proto`` and the generator (``stubs.py``) but no generated stubs;
  the wheels carry the stubs, generated at build time.
- The client wheel alone, in a fresh venv: the ``sesscache`` command runs,
  ``sesscache_client`` imports with its clients, and neither SQLAlchemy nor
  dogpile.cache is installed.
- Both wheels in one fresh venv (with the pinned ``requirements.txt``, as the
  image installs them): ``pip check`` passes; ``sesscache-server`` started in an
  empty folder outside the checkout (no ``PYTHONPATH``) seeds its SQLite
  database in its data folder and serves; the README walk-through
  (``python -m sesscache_client.walkthrough``) and ``sesscache query`` (MISS,
  then HIT) run against it from that folder.
- Quick checks of the build files: the build tools are pinned as in
  ``requirements-dev.txt``, and the pinned runtime list satisfies what both
  distributions declare.

Builds and installs use the pip cache and may fetch build tools from the
package index.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.child import ROOT, Child
from sesscache.fixtures import person_name
from sesscache_server import config

CLIENT = ROOT / "client"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PROTO = "protos/sesscache/v1/sesscache.proto"
BUILD_TOOLS = ("grpcio-tools", "mypy-protobuf")
SERVER_ONLY = ("sqlalchemy", "dogpile", "aiohttp")


# -- the build files (quick) ------------------------------------------------------


def pins(path: Path) -> dict[str, Requirement]:
    """``name==version`` lines of a requirements file (``-r`` lines skipped), by name."""
    result: dict[str, Requirement] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            result[canonicalize_name(requirement.name)] = requirement
    return result


def pyproject(folder: Path) -> dict[str, object]:
    with (folder / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"not pinned: {requirement}"
    return spec.version


@pytest.mark.parametrize("folder", [ROOT, CLIENT], ids=["sesscache", "sesscache-client"])
def test_build_tools_are_pinned_as_in_requirements_dev(folder: Path) -> None:
    build_system = pyproject(folder)["build-system"]
    assert isinstance(build_system, dict)
    requires = {canonicalize_name(r.name): r for r in map(Requirement, build_system["requires"])}
    assert set(requires) == {"setuptools", *BUILD_TOOLS}
    dev = pins(ROOT / "requirements-dev.txt")
    for tool in map(canonicalize_name, BUILD_TOOLS):
        assert pinned_version(requires[tool]) == pinned_version(dev[tool]), tool
    setuptools = canonicalize_name("setuptools")
    assert requires[setuptools].specifier.contains(pinned_version(dev[setuptools]))


@pytest.mark.parametrize("folder", [ROOT, CLIENT], ids=["sesscache", "sesscache-client"])
def test_pinned_runtime_list_satisfies_the_dependencies(folder: Path) -> None:
    """What a distribution declares is in requirements.txt, at a version it accepts."""
    project = pyproject(folder)["project"]
    assert isinstance(project, dict)
    runtime = pins(ROOT / "requirements.txt")
    declared = [Requirement(text) for text in project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        declared += [Requirement(text) for text in extra]
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in runtime, f"{requirement} is not pinned in requirements.txt"
        assert requirement.specifier.contains(pinned_version(runtime[name])), (
            f"requirements.txt pins {runtime[name]}, outside {requirement}"
        )
        assert requirement.extras <= runtime[name].extras, (requirement, runtime[name])
    if folder == CLIENT:
        assert not {canonicalize_name(r.name) for r in declared} & {"sqlalchemy", "dogpile-cache"}


# -- building and installing (slow) ------------------------------------------------


@dataclass(frozen=True)
class Dists:
    server_sdist: Path
    server_wheel: Path
    client_sdist: Path
    client_wheel: Path


def clean_env() -> dict[str, str]:
    """This environment without anything pointing into the checkout or at a venv.

    pip (also in the builds' isolated environments) skips byte-compiling what it
    installs: most of the install time on a busy machine, and Python compiles
    what it imports anyway.
    """
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith(config.ENV_PREFIX)
    }
    return {**env, "PIP_NO_COMPILE": "1"}


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def only_file(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Both projects built by ``python -m build`` (sdist, then the wheel from it), in parallel."""
    out = tmp_path_factory.mktemp("dist")
    builds = {
        source: subprocess.Popen(
            [sys.executable, "-m", "build", "--outdir", str(out / name), str(source)],
            cwd=out,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, source in (("server", ROOT), ("client", CLIENT))
    }
    for source, process in builds.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"building {source} failed:\n{output}"
    return Dists(
        server_sdist=only_file(out / "server", "sesscache-*.tar.gz"),
        server_wheel=only_file(out / "server", "sesscache-*.whl"),
        client_sdist=only_file(out / "client", "sesscache_client-*.tar.gz"),
        client_wheel=only_file(out / "client", "sesscache_client-*.whl"),
    )


def venv(folder: Path) -> Path:
    """A fresh venv without pip (this pip installs into it: ``pip --python``); its python."""
    run([sys.executable, "-m", "venv", "--without-pip", str(folder)], cwd=folder.parent)
    return folder / "bin" / "python"


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter's pip, acting on ``python``'s environment (the pip cache is reused)."""
    return run([sys.executable, "-m", "pip", "--python", str(python), *args], cwd=python.parent)


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """requirements.txt as constraints (which take no extras)."""
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    path.write_text(re.sub(r"\[[^]]*\]", "", text), encoding="utf-8")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """An empty working folder, outside the checkout."""
    folder = tmp_path / "work"
    folder.mkdir()
    assert not folder.resolve().is_relative_to(ROOT.resolve())
    return folder


def names_in(archive: Path) -> list[str]:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return wheel.namelist()
    with tarfile.open(archive) as sdist:
        return [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]


def is_stub(name: str) -> bool:
    return name.endswith(STUB_SUFFIXES)


@pytest.mark.slow
def test_sdists_carry_the_proto_and_the_generator_and_wheels_the_stubs(dists: Dists) -> None:
    server_sdist, client_sdist = names_in(dists.server_sdist), names_in(dists.client_sdist)
    assert {PROTO, "client/stubs.py", "setup.py"} <= set(server_sdist)
    assert {PROTO, "stubs.py", "setup.py"} <= set(client_sdist)
    assert not [name for name in server_sdist + client_sdist if is_stub(name)]

    server_wheel, client_wheel = names_in(dists.server_wheel), names_in(dists.client_wheel)
    expected = {f"sesscache/v1/sesscache{suffix}" for suffix in STUB_SUFFIXES}
    assert {name for name in server_wheel if is_stub(name)} == expected
    client_expected = {name.replace("sesscache/", "sesscache_client/") for name in expected}
    assert {name for name in client_wheel if is_stub(name)} == client_expected
    # No file of one wheel is in the other: both install into one venv.
    assert not {n for n in server_wheel if ".dist-info/" not in n} & set(client_wheel)
    # The web console's files are in the server's wheel.
    console = {
        f"sesscache_server/console/static/{n}" for n in ("index.html", "app.js", "style.css")
    }
    assert console <= set(server_wheel)
    tops = {name.split("/", 1)[0] for name in server_wheel if ".dist-info/" not in name}
    assert tops == {"sesscache", "sesscache_server"}
    assert {n.split("/", 1)[0] for n in client_wheel if ".dist-info/" not in n} == {
        "sesscache_client"
    }
    # The generated client stubs import each other as sesscache_client.v1, and keep
    # the descriptor's file name (the same descriptors as the server's copy).
    with zipfile.ZipFile(dists.client_wheel) as wheel:
        grpc_stub = wheel.read("sesscache_client/v1/sesscache_pb2_grpc.py").decode()
        message_stub = wheel.read("sesscache_client/v1/sesscache_pb2.py").decode()
    assert "from sesscache_client.v1 import sesscache_pb2" in grpc_stub
    assert "sesscache.v1 import" not in grpc_stub
    assert "'sesscache/v1/sesscache.proto'" in message_stub


CLIENT_PROBE = """
import importlib.metadata, importlib.util, json
import sesscache_client
print(json.dumps({
    "file": sesscache_client.__file__,
    "client": hasattr(sesscache_client, "Client"),
    "async_client": hasattr(sesscache_client, "AsyncClient"),
    "absent": [m for m in %r if importlib.util.find_spec(m) is None],
    "dists": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
}))
"""


@pytest.mark.slow
def test_client_wheel_alone(dists: Dists, constraints: Path, outside: Path, tmp_path: Path) -> None:
    python = venv(tmp_path / "client-venv")
    pip(python, "install", "--quiet", "-c", str(constraints), str(dists.client_wheel))
    pip(python, "check")

    help_text = run([str(python.parent / "sesscache"), "--help"], cwd=outside).stdout
    assert "usage:" in help_text
    assert "query" in help_text

    probe = run([str(python), "-c", CLIENT_PROBE % (SERVER_ONLY,)], cwd=outside).stdout
    found = json.loads(probe)
    assert Path(found["file"]).is_relative_to(python.parent.parent), found["file"]
    assert found["client"]
    assert found["async_client"]
    assert found["absent"] == list(SERVER_ONLY), found["dists"]
    assert "sesscache" not in found["dists"]


@pytest.fixture
def server_venv(dists: Dists, tmp_path: Path) -> Path:
    """Both wheels in one venv, over exactly the pinned runtime list (as the image has them)."""
    python = venv(tmp_path / "server-venv")
    pip(
        python,
        "install",
        "--quiet",
        "--no-deps",
        "-r",
        str(ROOT / "requirements.txt"),
        str(dists.server_wheel),
        str(dists.client_wheel),
    )
    pip(python, "check")
    return python


@pytest.fixture
def installed_server(server_venv: Path, outside: Path) -> Iterator[Child]:
    command = [str(server_venv.parent / "sesscache-server"), "--listen", "127.0.0.1:0"]
    child = Child(
        command=command,
        name="sesscache-server",
        base_env=clean_env(),
        cwd=outside,
        checkout_path=False,
    )
    with child as server:
        yield server


def cache_status(output: str) -> str:
    match = re.search(r"^cache: (\w+)", output, re.M)
    assert match, output
    return match.group(1)


@pytest.mark.slow
def test_installed_server_and_client_outside_the_checkout(
    server_venv: Path, installed_server: Child, outside: Path
) -> None:
    bin_dir = server_venv.parent
    target = installed_server.target
    # The SQLite default, made and seeded in the data folder under the working folder.
    assert (outside / "data" / "sesscache.db").is_file(), installed_server.log_text()
    assert "sqlite" in installed_server.log_text(), installed_server.log_text()

    walkthrough = run(
        [str(server_venv), "-m", "sesscache_client.walkthrough", "--target", target], cwd=outside
    )
    assert walkthrough.stdout.splitlines()[-1].startswith("walk-through OK"), walkthrough.stdout

    query = [str(bin_dir / "sesscache"), "--target", target, "query"]
    query += ["--session", "packaging", "--name", person_name(10)]
    assert cache_status(run(query, cwd=outside).stdout) == "MISS"
    assert cache_status(run(query, cwd=outside).stdout) == "HIT"

    version = run([str(bin_dir / "sesscache-server"), "--version"], cwd=outside).stdout
    assert version.startswith("sesscache ")
    assert installed_server.stop() == 0, installed_server.log_text()
