"""The docker-compose stack and the Dockerfile, checked without a Docker engine.

- ``docker-compose.yml`` is valid against the Compose specification
  (check-jsonschema's built-in copy of the schema: no network).
- Every ``SESSCACHE_*`` variable the compose file or the Dockerfile sets is one
  the server reads, and the container's settings load (``server.config.load``).
- The Dockerfile: slim Python 3.11, multi-stage, non-root, SIGTERM, health
  check, a volume for the SQLite data, the gRPC and metrics ports; it builds
  the two wheels (their build hook generates the stubs) and installs them over
  exactly the pinned runtime list; the image runs the installed commands
  (``sesscache-server``, ``sesscache``), with no source tree.
- One image: ``server`` builds it; ``client`` and ``replica`` only name it.
- The server's metrics port (``SESSCACHE_HTTP_LISTEN``) is on and published
  on loopback.
- The stack runs: the server is started natively with exactly the compose
  file's command and environment (the Dockerfile's CMD and ENV beneath it) on
  the test PostgreSQL, then the ``client`` service's command (the walk-through)
  and the server's compose health check run natively against it. The only
  rewrites are what a container network gives for free: the ``postgres`` host
  becomes the test cluster's 127.0.0.1:PORT, ``0.0.0.0:50051`` becomes
  ``127.0.0.1:0`` (the port is read from the log), so does the metrics
  port ``0.0.0.0:9464`` (then ``/metrics`` is read), ``server:50051`` and the
  health check's ``127.0.0.1:50051`` become the real address, ``python`` is
  this interpreter, ``sesscache`` and ``sesscache-server`` are the commands
  installed beside it, and ``/data`` a temporary directory. The compose file's
  PostgreSQL user, password and database are created on the test cluster.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg import sql
from sqlalchemy import make_url

from harness.child import Child
from sesscache_server import config
from tests.support.postgres import PostgresServer
from tests.support.servers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"

CONTAINER_PORT = 50051
METRICS_PORT = 9464
IMAGE = "sesscache:local"
HEALTH_TARGET = f"127.0.0.1:{CONTAINER_PORT}"
SERVER_TARGET = f"server:{CONTAINER_PORT}"


# -- reading the files -----------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = load_compose()["services"]
    assert name in services, f"no service {name!r} in docker-compose.yml"
    result = services[name]
    assert isinstance(result, dict)
    return result


def unescape(value: str) -> str:
    """A compose string as the container sees it: ``$$`` is ``$``; no interpolation."""
    assert "$" not in value.replace("$$", ""), (
        f"{value!r} interpolates a variable: the stack must not depend on the host's"
    )
    return value.replace("$$", "$")


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment``, list or mapping form, as strings."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        pairs = [str(item).split("=", 1) for item in raw]
        assert all(len(pair) == 2 for pair in pairs), f"unset variables in {raw!r}"
        return {key: unescape(value) for key, value in pairs}
    assert isinstance(raw, dict)
    result: dict[str, str] = {}
    for key, value in raw.items():
        assert value is not None, f"{key} is passed through from the host"
        text = str(value).lower() if isinstance(value, bool) else str(value)
        result[str(key)] = unescape(text)
    return result


def exec_form(value: Any, what: str) -> list[str]:
    """A command as an argv list (compose's list form, or a Dockerfile JSON array)."""
    if isinstance(value, str):
        value = json.loads(value)
    assert isinstance(value, list), f"{what} is not in exec (list) form: {value!r}"
    assert all(isinstance(part, str) for part in value)
    return [unescape(part) for part in value]


def duration_seconds(text: str) -> float:
    """A compose duration such as ``15s``, ``1m30s`` or ``500ms``, in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(number + unit for number, unit in parts) == text, f"bad duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, one list per stage."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments (and the syntax directive), also inside continuations
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    assert not current.strip(), "the Dockerfile ends in a continuation"
    stages: list[list[Instruction]] = [[]]
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def only(stage: list[Instruction], keyword: str) -> str:
    found = [i.arguments for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def dockerfile_env() -> dict[str, str]:
    """The final stage's ``ENV`` (``K=V ...`` form; ``$PATH`` style values kept as text)."""
    result: dict[str, str] = {}
    for arguments in (i.arguments for i in final_stage() if i.keyword == "ENV"):
        for token in shlex.split(arguments):
            key, sep, value = token.partition("=")
            assert sep, f"use the ENV KEY=VALUE form: {arguments!r}"
            result[key] = value
    return result


def container_env(svc: Mapping[str, Any]) -> dict[str, str]:
    """The ``SESSCACHE_*`` variables a container of the service sees: image ENV, then compose."""
    merged = {**dockerfile_env(), **environment(svc)}
    return {key: value for key, value in merged.items() if key.startswith(config.ENV_PREFIX)}


def service_command(svc: Mapping[str, Any]) -> list[str]:
    """The service's ``command``, or the image's CMD when it has none."""
    if "command" in svc:
        return exec_form(svc["command"], "command")
    return exec_form(only(final_stage(), "CMD"), "CMD")


def healthcheck_command(svc: Mapping[str, Any]) -> list[str]:
    test = svc["healthcheck"]["test"]
    assert isinstance(test, list)
    assert test[0] == "CMD", f"use the CMD (exec) form: {test!r}"
    return exec_form(test[1:], "healthcheck")


def installed_commands() -> set[str]:
    """The console scripts of the two distributions (``sesscache``, ``sesscache-server``)."""
    return {
        entry.name
        for dist in ("sesscache", "sesscache-client")
        for entry in importlib.metadata.distribution(dist).entry_points
        if entry.group == "console_scripts"
    }


def native(argv: list[str], replacements: Mapping[str, str]) -> list[str]:
    """``argv`` run here: ``python`` is this interpreter, a command the one installed
    beside it (by the same distributions as in the image); container addresses replaced."""
    if argv[0] == "python":
        program = sys.executable
    else:
        assert argv[0] in installed_commands(), f"{argv[0]!r} is not a command of the wheels"
        program = str(Path(sys.executable).parent / argv[0])
    return [program, *(replacements.get(part, part) for part in argv[1:])]


def collapse(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


# -- the compose file --------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_postgres_service() -> None:
    postgres = service("postgres")
    image = str(postgres["image"])
    assert re.fullmatch(r"postgres:\d+(\.\d+)*(-alpine)?", image), image
    env = environment(postgres)
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= env.keys()
    volume, _, mount = str(postgres["volumes"][0]).partition(":")
    assert volume in (load_compose().get("volumes") or {}), f"{volume!r} is not a named volume"
    assert mount.startswith("/var/lib/postgresql")
    test = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in test


def test_server_service() -> None:
    server = service("server")
    build = server["build"]
    assert build == "." or (build["context"] == "." and build.get("dockerfile") == "Dockerfile")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["ports"] == [
        f"127.0.0.1:{CONTAINER_PORT}:{CONTAINER_PORT}",
        f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}",
    ]
    assert healthcheck_command(server) == [
        "sesscache",
        "--target",
        HEALTH_TARGET,
        "--timeout",
        "3",
        "health",
    ]
    assert server.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_one_image_built_once() -> None:
    """``server`` builds the image; every other service of it only names it, never pulls it."""
    services: dict[str, Any] = load_compose()["services"]
    builders = sorted(name for name, svc in services.items() if "build" in svc)
    assert builders == ["server"]
    users = sorted(name for name, svc in services.items() if svc.get("image") == IMAGE)
    assert users == ["client", "replica", "server"]
    for name in ("client", "replica"):
        assert services[name].get("pull_policy") == "never", f"{name} would pull {IMAGE}"


def test_client_service_is_a_one_off_tool() -> None:
    client = service("client")
    assert client["profiles"] == ["tools"]
    assert client["depends_on"]["server"]["condition"] == "service_healthy"
    assert client["image"] == service("server")["image"]
    assert service_command(client) == [
        "python",
        "-m",
        "sesscache_client.walkthrough",
        "--target",
        SERVER_TARGET,
    ]


@pytest.mark.parametrize("name", ["server", "client", "replica"])
def test_compose_sets_only_variables_the_server_reads(name: str) -> None:
    known = set(config.environment_variables())
    names = [key for key in environment(service(name)) if key.startswith(config.ENV_PREFIX)]
    unknown = sorted(set(names) - known)
    assert not unknown, f"service {name} sets variables the server never reads: {unknown}"


def test_dockerfile_sets_only_variables_the_server_reads() -> None:
    known = set(config.environment_variables())
    env = dockerfile_env()
    assert env["SESSCACHE_LISTEN"] == f"0.0.0.0:{CONTAINER_PORT}"
    assert env["SESSCACHE_DATA_DIR"] == "/data"
    unknown = sorted(key for key in env if key.startswith(config.ENV_PREFIX) and key not in known)
    assert not unknown, f"the Dockerfile sets variables the server never reads: {unknown}"


def test_server_settings_in_the_container() -> None:
    """The settings the container's server loads: PostgreSQL, all interfaces, a drain."""
    server = service("server")
    command = service_command(server)
    assert command[0] == "sesscache-server"
    settings = config.load(command[1:], environ=container_env(server))
    assert settings.listen == f"0.0.0.0:{CONTAINER_PORT}"
    url = make_url(settings.database_url)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    postgres_env = environment(service("postgres"))
    assert url.username == postgres_env["POSTGRES_USER"]
    assert url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.database == postgres_env["POSTGRES_DB"]
    assert settings.effective_http_listen() == f"0.0.0.0:{METRICS_PORT}"
    # Docker sends SIGKILL after stop_grace_period: the drain must end before it.
    grace_period = duration_seconds(str(server["stop_grace_period"]))
    assert grace_period > settings.grace, (grace_period, settings.grace)


# -- the Dockerfile ---------------------------------------------------------------


def test_dockerfile_image() -> None:
    stages = dockerfile_stages()
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    froms = [i.arguments for stage in stages for i in stage if i.keyword == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    stage = final_stage()
    user = only(stage, "USER").split(":")[0]
    assert user not in ("", "root", "0"), "the image must run as a non-root user"
    assert only(stage, "STOPSIGNAL") == "SIGTERM"
    assert only(stage, "EXPOSE").split() == [str(CONTAINER_PORT), str(METRICS_PORT)]
    data_dir = dockerfile_env()["SESSCACHE_DATA_DIR"]
    assert exec_form(only(stage, "VOLUME"), "VOLUME") == [data_dir]
    # The volume is declared after /data is made and handed to the server's user.
    keywords = [(i.keyword, i.arguments) for i in stage]
    volume_at = keywords.index(("VOLUME", only(stage, "VOLUME")))
    chown_at = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "chown" in a)
    assert chown_at < volume_at
    assert exec_form(only(stage, "CMD"), "CMD") == ["sesscache-server"]
    health = only(stage, "HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert options.startswith("--")
    assert exec_form(command, "HEALTHCHECK") == healthcheck_command(service("server"))


def test_dockerfile_installs_the_two_wheels_over_exactly_the_runtime_list() -> None:
    """The builder builds both wheels (the stub tools stay in pip's build environment), then
    the runtime venv gets requirements.txt alone and the wheels, with no dependency resolved;
    the final image has that venv and no source tree."""
    builder = dockerfile_stages()[1]
    runs = [i.arguments for i in builder if i.keyword == "RUN"]
    steps = [
        "/opt/venv/bin/pip install --no-deps -r requirements.txt",
        "pip wheel --no-deps --wheel-dir /wheels . ./client",
        "/opt/venv/bin/pip install --no-deps /wheels/*.whl",
        "/opt/venv/bin/pip check",
    ]
    joined = " ; ".join(runs)
    positions = [joined.find(step) for step in steps]
    assert all(at >= 0 for at in positions), dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), "install the list, build, install the wheels, check"
    # The stubs come from the wheels' build hook, not from a step of the Dockerfile.
    assert not [run for run in runs if "stubs.py" in run]
    copied_in = " ".join(i.arguments for i in builder if i.keyword == "COPY")
    for needed in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "protos/", "client/"):
        assert needed in copied_in, needed
    copied = [i.arguments for i in final_stage() if i.keyword == "COPY"]
    assert copied == ["--from=builder /opt/venv /opt/venv"]
    assert "PYTHONPATH" not in dockerfile_env()
    commands = [
        exec_form(only(final_stage(), "CMD"), "CMD"),
        healthcheck_command(service("server")),
    ]
    assert {command[0] for command in commands} <= installed_commands()


def test_runtime_requirements_are_complete() -> None:
    """requirements.txt pins every dependency of what it lists (the image uses --no-deps)."""
    pinned: dict[str, set[str]] = {}
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert len(requirement.specifier) == 1, f"not pinned: {line}"
            assert str(next(iter(requirement.specifier))).startswith("=="), f"not pinned: {line}"
            pinned.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    missing: set[str] = set()
    for name, extras in pinned.items():
        environments = [{"extra": extra} for extra in ("", *sorted(extras))]
        for text in importlib.metadata.requires(name) or []:
            dependency = Requirement(text)
            if dependency.marker is not None and not any(
                dependency.marker.evaluate(env) for env in environments
            ):
                continue
            if canonicalize_name(dependency.name) not in pinned:
                version = importlib.metadata.version(dependency.name)
                missing.add(f"{dependency.name}=={version}  (needed by {name})")
    assert not missing, "add to requirements.txt:\n" + "\n".join(sorted(missing))


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    expected = {".git", ".venv", "data", "tests", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    assert expected <= patterns, expected - patterns
    assert "**/__pycache__" in patterns
    needed = ("requirements.txt", "protos", "sesscache", "pyproject.toml", "setup.py", "README.md")
    for name in (*needed, "MANIFEST.in", "client/setup.py", "client/stubs.py"):
        assert name not in patterns
    assert not {"server", "client"} & patterns


# -- the stack, run natively -------------------------------------------------------


@contextlib.contextmanager
def compose_database(postgres: PostgresServer) -> Iterator[dict[str, str]]:
    """The compose file's role and database on the test cluster; yields POSTGRES_* settings."""
    env = environment(service("postgres"))
    user, password, dbname = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    created_role = False
    with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
            created_role = True
    postgres.create_database(dbname)
    try:
        with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(user)
                )
            )
        yield env
    finally:
        postgres.drop_database(dbname)
        if created_role:
            with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def run_native(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.postgres
def test_stack_runs_natively(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(config.ENV_PREFIX):  # only what the compose file says
            monkeypatch.delenv(key)
    server_svc, client_svc = service("server"), service("client")

    # The postgres healthcheck, as the container's shell would run it.
    check = " ".join(service("postgres")["healthcheck"]["test"][1:])
    with compose_database(postgres) as pg_env:
        if shutil.which("pg_isready"):
            pg_ready = subprocess.run(
                ["sh", "-c", unescape(check)],
                env={
                    **os.environ,
                    **pg_env,
                    "PGHOST": postgres.host,
                    "PGPORT": str(postgres.port),
                },
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert pg_ready.returncode == 0, pg_ready.stdout + pg_ready.stderr

        env = container_env(server_svc)
        assert env["SESSCACHE_LISTEN"] == f"0.0.0.0:{CONTAINER_PORT}"
        env["SESSCACHE_LISTEN"] = "127.0.0.1:0"
        url = make_url(env["SESSCACHE_DATABASE_URL"])
        assert (url.host, url.port) == ("postgres", 5432)
        env["SESSCACHE_DATABASE_URL"] = url.set(
            host=postgres.host, port=postgres.port
        ).render_as_string(hide_password=False)
        env["SESSCACHE_DATA_DIR"] = str(tmp_path / "data")
        assert env["SESSCACHE_HTTP_LISTEN"] == f"0.0.0.0:{METRICS_PORT}"
        env["SESSCACHE_HTTP_LISTEN"] = "127.0.0.1:0"
        command = native(service_command(server_svc), {})

        with Child(command=command, env=env) as server:
            target = server.target
            serving = next(line for line in server.lines if "serving on" in line)
            assert f"serving on {target}" in serving
            assert f"@{postgres.host}:{postgres.port}/{url.database}" in serving
            assert f"{url.username}:***@" in serving  # the compose credentials, hidden
            metrics_line = next(line for line in server.lines if "metrics on http://" in line)
            metrics_url = re.search(r"http://\S+/metrics", metrics_line)
            assert metrics_url is not None, metrics_line
            assert metrics_url.group(0).startswith("http://127.0.0.1:")
            with urllib.request.urlopen(metrics_url.group(0), timeout=10) as response:  # noqa: S310
                assert response.status == 200
                assert "sesscache_sessions" in response.read().decode()

            walkthrough = run_native(
                native(service_command(client_svc), {SERVER_TARGET: target}),
                container_env(client_svc),
            )
            output = walkthrough.stdout
            assert walkthrough.returncode == 0, (
                f"{output}{walkthrough.stderr}\n-- server log:\n{server.log_text()}"
            )
            lines = output.splitlines()
            steps = [line for line in lines if re.match(r"\d\. ", line)]
            assert [line.split(":", 2)[1].split()[0] for line in steps if "query" in line] == [
                "MISS",
                "HIT",
                "MISS",
            ], output
            assert any(line.startswith("   key: SELECT") for line in lines), output
            assert any(line.endswith("<- the key of steps 1 and 2") for line in lines), output
            assert re.search(r"^4\. end: session \S+ ended  existed: yes", output, re.M), output
            assert lines[-1].startswith("walk-through OK"), output

            health = run_native(
                native(healthcheck_command(server_svc), {HEALTH_TARGET: target}),
                container_env(server_svc),
            )
            assert health.returncode == 0, health.stdout + health.stderr
            assert health.stdout.strip() == "SERVING"

            # The server made and seeded its tables in the compose database, as the compose role.
            with psycopg.connect(postgres.conninfo(url.database), autocommit=True) as conn:
                owner = conn.execute(
                    "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'person'"
                ).fetchone()
                persons = conn.execute("SELECT count(*) FROM person").fetchone()
            assert owner == (url.username,)
            assert persons is not None
            assert persons[0] > 0

            # `docker compose stop`: SIGTERM, then the drain, well within stop_grace_period.
            assert server.stop() == 0, server.log_text()
        assert "stopped" in server.log_text()
