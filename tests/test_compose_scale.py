"""The ``scale`` profile of docker-compose.yml, checked without a Docker engine.

``docker compose --profile scale up --scale replica=3 nginx`` runs PostgreSQL,
Redis, three ``replica`` containers of the server image and nginx with
``deploy/nginx/sesscache.conf``. Checked here:

- the profile leaves the default stack alone (``docker compose up`` still
  starts postgres and server only) and the whole file stays valid
  (tests/test_compose.py validates it against the Compose specification);
- every replica shares the database, the Redis region and the page-token
  secret, serves on 0.0.0.0:50051 without a host port, drains within its stop
  grace period, and sets only variables the server reads;
- nginx (a maintained image, ``http2 on;``) mounts the repository's config
  and entrypoint, publishes only on loopback and waits for healthy replicas;
  the config names no container (nothing depends on the project name or the
  scale): its upstream includes the list deploy/nginx/entrypoint.sh writes,
  one ``server ADDR:50051 ...`` line per address ``replica`` resolves to
  (one name resolving to several addresses would break session affinity:
  nginx's consistent hash builds its ring from the names);
- entrypoint.sh, run natively with a stand-in ``getent`` on PATH (or the
  real one on ``localhost``): one sorted line per address, rewritten when the
  set changes and only then, a placeholder marked ``down`` when nothing
  resolves, the list kept when resolution fails later;
- the config plus the generated list pass ``nginx -t`` (Debian's nginx 1.22,
  with scale/nginx.py's documented native rewrites: loopback ``listen``, log
  and temporary paths, and ``http2 on;`` as ``listen ... http2``, which 1.22
  needs), and nginx really reads the generated lines (``nginx -T``);
- nginx started through entrypoint.sh in front of two native servers (on
  127.0.0.1 and 127.0.0.2, one port, like two containers): UNAVAILABLE
  while no replica resolves, then it follows the resolved set by itself
  (rewrite and reload), sessions stay on one replica each and are spread
  over both, and it restarts with one replica down and keeps serving;
- Redis keeps no data on disk and evicts when full.

tests/test_scale.py runs the same topology natively from the same nginx config.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.child import Child
from scale.nginx import (
    CONFIG,
    CONTAINER_PORT,
    ENTRYPOINT,
    HTTP2_DIRECTIVE_SINCE,
    UPSTREAM_INCLUDE,
    Nginx,
    nginx_version,
    upstream_parameters,
    upstream_servers,
)
from sesscache.fixtures import person_name
from sesscache_client import Client
from sesscache_client.errors import SesscacheError, Unavailable
from sesscache_client.v1 import sesscache_pb2 as pb
from sesscache_server import config
from tests.support import nginx as nginx_support
from tests.test_compose import (
    METRICS_PORT,
    container_env,
    duration_seconds,
    environment,
    healthcheck_command,
    load_compose,
    service,
    service_command,
)

PROFILE = "scale"
PROXY_PORT = 50052


def services_in(profile: str | None) -> set[str]:
    services: dict[str, Any] = load_compose()["services"]
    return {
        name
        for name, svc in services.items()
        if (profile in (svc.get("profiles") or []) if profile else not svc.get("profiles"))
    }


def test_profile_adds_redis_replicas_and_nginx_beside_the_default_stack() -> None:
    assert services_in(PROFILE) == {"redis", "replica", "nginx"}
    assert services_in(None) == {"postgres", "server"}


def test_replica_is_the_server_image_scaled() -> None:
    replica, server = service("replica"), service("server")
    assert replica["image"] == server["image"]
    assert "build" not in replica, "the image is built once, by `server`"
    assert replica["pull_policy"] == "never"
    assert replica["deploy"]["replicas"] == 3
    assert "ports" not in replica, "replicas are reached through nginx only"
    assert "container_name" not in replica, "a fixed name cannot be scaled"
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    assert healthcheck_command(replica) == healthcheck_command(server)
    assert replica.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_replica_settings_share_database_region_and_page_tokens() -> None:
    replica = service("replica")
    command = service_command(replica)
    assert command[0] == "sesscache-server"
    settings = config.load(command[1:], environ=container_env(replica))
    standalone = config.load(
        service_command(service("server"))[1:], environ=container_env(service("server"))
    )
    assert settings.listen == f"0.0.0.0:{CONTAINER_PORT}"
    assert settings.database_url == standalone.database_url
    backend, arguments = settings.shared_region()
    assert backend == "dogpile.cache.redis"
    assert arguments["url"] == "redis://redis:6379/0"
    assert settings.page_token_secret, "replicas need one page-token secret"
    assert settings.effective_http_listen() == f"0.0.0.0:{METRICS_PORT}"
    assert [str(port) for port in replica["expose"]] == [str(METRICS_PORT)]
    grace_period = duration_seconds(str(replica["stop_grace_period"]))
    assert grace_period > settings.grace


def test_scale_services_set_only_variables_the_server_reads() -> None:
    known = set(config.environment_variables())
    names = [k for k in environment(service("replica")) if k.startswith(config.ENV_PREFIX)]
    assert set(names) <= known, sorted(set(names) - known)
    # nginx's entrypoint has settings of its own, none that look like the server's.
    assert not [k for k in environment(service("nginx")) if k.startswith(config.ENV_PREFIX)]


#: Where the nginx service mounts entrypoint.sh, and nginx.conf's folder in the image.
ENTRYPOINT_MOUNT = "/sesscache/entrypoint.sh"
NGINX_CONF_DIR = "/etc/nginx"


def test_nginx_is_a_maintained_image_with_the_repository_config() -> None:
    nginx = service("nginx")
    image = str(nginx["image"])
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(-alpine)?", image)
    assert match, f"pin the nginx version: {image}"
    version = tuple(int(part or 0) for part in match.groups()[:3])
    # 1.22 and older are end of life; `http2 on;` needs 1.25.1.
    assert version >= HTTP2_DIRECTIVE_SINCE, image
    root = CONFIG.parents[2]
    assert nginx["volumes"] == [
        f"./{CONFIG.relative_to(root)}:{NGINX_CONF_DIR}/nginx.conf:ro",
        f"./{ENTRYPOINT.relative_to(root)}:{ENTRYPOINT_MOUNT}:ro",
    ]
    assert nginx["entrypoint"] == ["/bin/sh", ENTRYPOINT_MOUNT]
    assert nginx["command"] == ["nginx", "-g", "daemon off;"]
    assert nginx["ports"] == [f"127.0.0.1:{PROXY_PORT}:{CONTAINER_PORT}"]
    assert nginx["depends_on"]["replica"]["condition"] == "service_healthy"
    assert nginx.get("stop_signal") == "SIGQUIT"  # nginx's graceful stop (nginx is PID 1)


def test_nginx_config_names_no_container() -> None:
    """The upstream is the list entrypoint.sh writes; nothing depends on project or scale."""
    text = CONFIG.read_text(encoding="utf-8")
    assert upstream_servers(text) == []
    block = re.search(r"^\s*upstream\s+sesscache\s*\{(.*?)^\s*\}", text, re.M | re.S)
    assert block is not None
    assert re.search(rf"^\s*include {re.escape(UPSTREAM_INCLUDE)};", block.group(1), re.M)
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    project = load_compose()["name"]
    assert f"{project}-replica" not in code  # no container names ...
    assert f"{project}_replica" not in code
    assert "replica" not in code  # ... nor the service name, which the entrypoint resolves
    # The maintained syntax: `http2 on;`, not the deprecated `listen ... http2`.
    assert re.search(r"^\s*http2 on;", code, re.M)
    assert re.search(rf"^\s*listen {CONTAINER_PORT};", code, re.M)
    assert not re.search(r"^\s*listen [^;]*\bhttp2\b", code, re.M)


def test_entrypoint_resolves_the_replica_service_next_to_nginx_conf() -> None:
    nginx, script = service("nginx"), ENTRYPOINT.read_text(encoding="utf-8")
    env = environment(nginx)
    assert env["REPLICAS_HOST"] == "replica"
    assert env["REPLICAS_HOST"] in load_compose()["services"]
    assert env["REPLICAS_PORT"] == str(CONTAINER_PORT)
    assert float(env["RESOLVE_INTERVAL"]) <= 10
    # The file nginx.conf includes (relative paths are relative to its folder).
    default_file = f"UPSTREAM_FILE=${{UPSTREAM_FILE:-{NGINX_CONF_DIR}/{UPSTREAM_INCLUDE}}}"
    assert default_file in script.splitlines()
    assert upstream_parameters(script) == "max_fails=1 fail_timeout=10s"
    assert script.splitlines()[-1] == 'exec "$@"', "nginx must be PID 1 (signals, reload)"


# -- entrypoint.sh, run natively ---------------------------------------------------------


def dns_answer(addresses: list[str]) -> str:
    """What glibc's ``getent ahostsv4 replica`` prints for these addresses."""
    lines = []
    for address in addresses:
        lines += [f"{address:<15} STREAM replica", f"{address:<15} DGRAM", f"{address:<15} RAW"]
    return "".join(line + "\n" for line in lines)


class FakeDns:
    """A ``getent`` on PATH that answers ``ahostsv4 replica`` from a file the test writes."""

    def __init__(self, directory: Path) -> None:
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.answer = directory / "dns-answer"
        self.answer.write_text("")
        getent = self.bin / "getent"
        getent.write_text(
            "#!/bin/sh\n"
            '[ "$1" = ahostsv4 ] && [ "$2" = replica ] || exit 2\n'
            f"[ -s '{self.answer}' ] || exit 2\n"
            f"cat '{self.answer}'\n"
        )
        getent.chmod(0o755)
        # No answer from the DNS either (the fallback of entrypoint.sh), whatever is installed.
        nslookup = self.bin / "nslookup"
        nslookup.write_text("#!/bin/sh\nexit 1\n")
        nslookup.chmod(0o755)

    def set(self, addresses: list[str]) -> None:
        temporary = self.answer.with_suffix(".new")
        temporary.write_text(dns_answer(addresses))
        temporary.replace(self.answer)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "REPLICAS_HOST": "replica"}


def render(upstream: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "render"],
        env={**os.environ, "UPSTREAM_FILE": str(upstream), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def server_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("server ")]


def line(address: str) -> str:
    return f"server {address}:{CONTAINER_PORT} max_fails=1 fail_timeout=10s;"


def test_entrypoint_writes_one_sorted_line_per_resolved_address(tmp_path: Path) -> None:
    dns, upstream = FakeDns(tmp_path), tmp_path / UPSTREAM_INCLUDE
    dns.set(["172.18.0.9", "172.18.0.10", "172.18.0.9"])
    first = render(upstream, dns.env())
    assert server_lines(upstream) == [line("172.18.0.10"), line("172.18.0.9")]
    assert "replicas: 172.18.0.10:50051 172.18.0.9:50051" in first.stderr

    # The same set: the file is left alone (no reload).
    same = render(upstream, dns.env())
    assert "replicas:" not in same.stderr
    assert server_lines(upstream) == [line("172.18.0.10"), line("172.18.0.9")]

    # A changed set (a replica gone, two new): rewritten.
    dns.set(["172.18.0.11", "172.18.0.9", "172.18.0.12"])
    changed = render(upstream, dns.env())
    assert "replicas: 172.18.0.11:50051 172.18.0.12:50051 172.18.0.9:50051" in changed.stderr
    assert server_lines(upstream) == [line(a) for a in ("172.18.0.11", "172.18.0.12", "172.18.0.9")]

    # Nothing resolves any more (a DNS hiccup): the list in place is kept.
    dns.set([])
    kept = render(upstream, dns.env())
    assert "nothing resolved; the list in place is kept" in kept.stderr
    assert len(server_lines(upstream)) == 3


def test_entrypoint_starts_with_a_placeholder_when_nothing_resolves(tmp_path: Path) -> None:
    dns, upstream = FakeDns(tmp_path), tmp_path / UPSTREAM_INCLUDE
    render(upstream, dns.env())
    assert server_lines(upstream) == ["server 127.0.0.1:9 down;"]
    dns.set(["172.18.0.3"])
    render(upstream, dns.env())
    assert server_lines(upstream) == [line("172.18.0.3")]


def test_entrypoint_resolves_with_the_real_getent(tmp_path: Path) -> None:
    if shutil.which("getent") is None:
        pytest.skip("no getent here")
    upstream = tmp_path / UPSTREAM_INCLUDE
    render(upstream, {"REPLICAS_HOST": "localhost"})
    assert server_lines(upstream) == [line("127.0.0.1")]


def test_entrypoint_falls_back_to_nslookup(tmp_path: Path) -> None:
    """Where getent knows no ahostsv4 (or answers nothing), busybox's nslookup answers."""
    bin_dir, upstream = tmp_path / "bin", tmp_path / UPSTREAM_INCLUDE
    bin_dir.mkdir()
    (bin_dir / "getent").write_text('#!/bin/sh\necho "Unknown database: $1" >&2\nexit 1\n')
    (bin_dir / "nslookup").write_text(
        "#!/bin/sh\n"
        '[ "$1" = -type=a ] && [ "$2" = replica ] || exit 1\n'
        "printf 'Server:\\t\\t127.0.0.11\\nAddress:\\t127.0.0.11:53\\n\\n'\n"
        "printf 'Non-authoritative answer:\\nName:\\treplica\\nAddress: 172.18.0.5\\n'\n"
        "printf 'Name:\\treplica\\nAddress: 172.18.0.4\\n\\n'\n"
    )
    for tool in ("getent", "nslookup"):
        (bin_dir / tool).chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    render(upstream, {"PATH": path, "REPLICAS_HOST": "replica"})
    assert server_lines(upstream) == [line("172.18.0.4"), line("172.18.0.5")]


def test_entrypoint_takes_static_addresses(tmp_path: Path) -> None:
    upstream = tmp_path / UPSTREAM_INCLUDE
    render(upstream, {"REPLICAS_ADDRESSES": "10.0.0.2, 10.0.0.1 127.0.0.1:7001"})
    assert server_lines(upstream) == [
        line("10.0.0.1"),
        line("10.0.0.2"),
        "server 127.0.0.1:7001 max_fails=1 fail_timeout=10s;",
    ]


# -- nginx from the config and the generated list ----------------------------------


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return nginx_support.binary_or_skip()


@pytest.mark.nginx
@pytest.mark.parametrize("addresses", [["172.18.0.3", "172.18.0.4"], []])
def test_config_and_generated_list_pass_nginx_t(
    nginx_binary: str, tmp_path: Path, addresses: list[str]
) -> None:
    dns = FakeDns(tmp_path / "dns")
    dns.set(addresses)
    nginx = Nginx(tmp_path / "nginx", None, binary=nginx_binary, entrypoint=dns.env())
    assert "syntax is ok" in nginx.check_config()
    expected = [line(a) for a in addresses] or ["server 127.0.0.1:9 down;"]
    assert server_lines(nginx.upstream_file) == expected
    # What nginx parsed (-T dumps it): the generated lines, inside the upstream.
    dumped = subprocess.run(
        nginx._command("-T"), capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert f"# configuration file {nginx.upstream_file}:" in dumped
    assert all(entry in dumped for entry in expected)
    # The 1.22 adaptation is the native run's only (`http2 on;` stays in the real file).
    assert "http2 on;" in CONFIG.read_text(encoding="utf-8")
    if nginx_version(nginx_binary) < HTTP2_DIRECTIVE_SINCE:
        rendered = nginx.config_path.read_text()
        assert not re.search(r"^\s*http2 on;", rendered, re.M)
        assert re.search(r"^\s*listen 127\.0\.0\.1:\d+ http2;", rendered, re.M)


def two_loopback_port() -> int:
    """A port free on both 127.0.0.1 and 127.0.0.2 (two "containers", one port)."""
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            second = stack.enter_context(socket.socket())
            try:
                second.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


@contextlib.contextmanager
def replica(address: str, port: int, data: Path) -> Iterator[Child]:
    """A native server on ``address:port`` (SQLite), as one replica container."""
    with Child(["--listen", f"{address}:{port}", "--data-dir", str(data)]) as server:
        yield server


def eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def query(target: str, session: str) -> int:
    with Client(target, timeout=10) as client:
        response = client.session(session).query_persons(name=person_name(10))
    return int(response.cache_status)


def sessions_on(target: str) -> set[str]:
    with Client(target, timeout=10) as client:
        return {info.id for info in client.list_sessions()}


@pytest.mark.nginx
@pytest.mark.slow
def test_nginx_follows_the_replicas_through_the_entrypoint(
    nginx_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(config.ENV_PREFIX):  # the replicas get only their command line
            monkeypatch.delenv(key)
    port = two_loopback_port()
    a, b = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    dns = FakeDns(tmp_path / "dns")
    env = {**dns.env(), "REPLICAS_PORT": str(port), "RESOLVE_INTERVAL": "0.2"}
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(
            Nginx(tmp_path / "nginx", None, binary=nginx_binary, entrypoint=env)
        )

        # No replica yet: nginx runs, and calls get UNAVAILABLE.
        with pytest.raises(Unavailable):
            query(proxy.target, "early")

        # One replica appears in the DNS: written, reloaded, served.
        stack.enter_context(replica("127.0.0.1", port, tmp_path / "a"))
        dns.set(["127.0.0.1"])
        one = [f"server {a} max_fails=1 fail_timeout=10s;"]
        eventually(lambda: server_lines(proxy.upstream_file) == one, "the list follows the DNS")
        eventually(lambda: serves(proxy.target), "nginx reloaded with the replica")
        assert reloads(proxy) == 1

        # A second one: both lines, and sessions spread over both, each on one replica.
        server_b = stack.enter_context(replica("127.0.0.2", port, tmp_path / "b"))
        dns.set(["127.0.0.2", "127.0.0.1"])
        both = [f"server {x} max_fails=1 fail_timeout=10s;" for x in (a, b)]
        eventually(lambda: server_lines(proxy.upstream_file) == both, "two lines")
        eventually(lambda: reloads(proxy) == 2, "nginx reloaded with both replicas")
        time.sleep(1)  # new workers, with the two-replica ring, take the new connections
        sessions = [f"s-{uuid.uuid4().hex[:12]}" for _ in range(40)]
        for session in sessions:
            assert query(proxy.target, session) == pb.CACHE_STATUS_MISS
            assert query(proxy.target, session) == pb.CACHE_STATUS_HIT
        on_a, on_b = sessions_on(a), sessions_on(b)
        assert set(sessions) <= on_a | on_b
        assert not (on_a & on_b), "a session on two replicas"
        assert set(sessions) & on_a, "sessions not spread"
        assert set(sessions) & on_b, "sessions not spread"

        # nginx restarts while a replica is down (still in the DNS answer): it
        # starts, and every session is served; those of the stopped one afresh.
        server_b.stop()
        proxy.stop()
        proxy.start()
        assert server_lines(proxy.upstream_file) == both
        for session in sessions:
            expected = pb.CACHE_STATUS_HIT if session in on_a else pb.CACHE_STATUS_MISS
            assert query(proxy.target, session) == expected, session


def serves(target: str) -> bool:
    try:
        query(target, "probe")
    except SesscacheError:
        return False
    return True


def reloads(proxy: Nginx) -> int:
    return proxy.log_text().count("sesscache-upstream: reloading nginx")
