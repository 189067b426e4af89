"""Scaling out: replicas behind nginx, natively on loopback (the scenario of ``python -m scale``).

- The nginx config kept in the repository (``deploy/nginx/sesscache.conf``,
  the compose service's nginx.conf) routes on the ``session-id`` header with
  a consistent hash, retries on the next replica, and marks failed replicas
  (passive checks); the native rendering changes only addresses and paths
  (plus ``http2 on;`` as ``listen ... http2`` for Debian's nginx 1.22), and
  Debian's nginx accepts it (``nginx -t``).
- The whole scenario (:mod:`scale.scenario`) on a real PostgreSQL, a real
  Redis, 3 replicas and nginx: shared region across replicas, 1,000 sessions
  HIT on their second query, each on exactly one replica (asked directly),
  session-less calls spread, throughput figures produced (a short run: the
  figures themselves are not asserted), and the failover of a stopped replica.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scale.nginx import (
    CONFIG,
    CONTAINER_PORT,
    UPSTREAM_INCLUDE,
    Nginx,
    NginxError,
    render_native,
    upstream_parameters,
    upstream_servers,
)
from scale.scenario import Check, Settings, run_scenario
from scale.topology import Topology
from tests.support import nginx as nginx_support
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer

#: A Redis database of its own, so other tests' keys never meet the scenario's.
REDIS_DB = 7


def config_text() -> str:
    return CONFIG.read_text(encoding="utf-8")


def directives(text: str) -> list[str]:
    """The config's directives, comments dropped, whitespace collapsed."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [" ".join(line.split()) for line in lines if line]


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return nginx_support.binary_or_skip()


# -- the config --------------------------------------------------------------------


def test_config_routes_on_the_session_id_with_a_consistent_hash() -> None:
    found = directives(config_text())
    assert "map $http_session_id $sesscache_affinity_key {" in found
    # Calls without a session id get a random key, so they are spread.
    assert '"" $request_id;' in found
    assert "default $http_session_id;" in found
    assert "hash $sesscache_affinity_key consistent;" in found
    assert "zone sesscache 64k;" in found  # failure marks shared by the workers
    assert f"listen {CONTAINER_PORT};" in found
    assert "http2 on;" in found
    assert f"include {UPSTREAM_INCLUDE};" in found  # written by entrypoint.sh
    assert "grpc_pass grpc://sesscache;" in found


def test_config_fails_over_passively() -> None:
    found = directives(config_text())
    retry = next(d for d in found if d.startswith("grpc_next_upstream "))
    assert set(retry.rstrip(";").split()[1:]) == {
        "error",
        "timeout",
        "invalid_header",
        "non_idempotent",
    }
    parameters = upstream_parameters()  # entrypoint.sh's, on every replica's server line
    assert re.search(r"\bmax_fails=1\b", parameters)
    assert re.search(r"\bfail_timeout=\d+s\b", parameters)


def test_native_rendering_changes_only_addresses_and_paths(tmp_path: Path) -> None:
    original = config_text()
    upstreams = ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]
    rendered = render_native(
        original, listen="127.0.0.1:2000", upstreams=upstreams, directory=tmp_path
    )
    before, after = directives(original), directives(rendered)
    parameters = upstream_parameters()
    assert upstream_servers(rendered) == [(address, parameters) for address in upstreams]
    # Debian's nginx 1.22 has no `http2` directive: the parameter of `listen` instead.
    assert "listen 127.0.0.1:2000 http2;" in after
    assert "http2 on;" not in after
    assert f"error_log {tmp_path / 'error.log'} warn;" in after
    modern = render_native(
        original,
        listen="127.0.0.1:2000",
        upstreams=upstreams,
        directory=tmp_path,
        http2_directive=True,
    )
    assert {"listen 127.0.0.1:2000;", "http2 on;"} <= set(directives(modern))

    def rewritten(directive: str) -> bool:
        prefixes = ("server ", "include ", "listen ", "http2 ", "error_log ", "access_log ")
        return directive.startswith(prefixes)

    assert [d for d in before if not rewritten(d)] == [
        d for d in after if not rewritten(d) and "_temp_path " not in d
    ]
    access = [d for d in after if d.startswith("access_log ")]
    assert access == [
        d.replace("/dev/stdout", str(tmp_path / "access.log"))
        for d in before
        if d.startswith("access_log ")
    ]


def test_native_rendering_refuses_a_config_it_does_not_understand(tmp_path: Path) -> None:
    text = config_text().replace(f"listen {CONTAINER_PORT};", "listen 8080;")
    with pytest.raises(NginxError, match="listen"):
        render_native(text, listen="127.0.0.1:1", upstreams=["127.0.0.1:2"], directory=tmp_path)
    include = f"include {UPSTREAM_INCLUDE};"
    text = config_text().replace(include, "server sesscache-replica-1:50051;")
    with pytest.raises(NginxError, match=r"entrypoint\.sh writes them"):
        render_native(text, listen="127.0.0.1:1", upstreams=["127.0.0.1:2"], directory=tmp_path)
    text = config_text().replace(include, "")
    with pytest.raises(NginxError, match="include"):
        render_native(text, listen="127.0.0.1:1", upstreams=["127.0.0.1:2"], directory=tmp_path)
    text = config_text().replace("http2 on;", "")
    with pytest.raises(NginxError, match="http2 on"):
        render_native(text, listen="127.0.0.1:1", upstreams=["127.0.0.1:2"], directory=tmp_path)


@pytest.mark.nginx
def test_native_config_is_valid(nginx_binary: str, tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], binary=nginx_binary)
    assert "syntax is ok" in nginx.check_config()


def test_missing_nginx_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_support, "find_nginx", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nginx is not installed"):
        nginx_support.binary_or_skip()
    monkeypatch.setenv("CI", "false")
    monkeypatch.delenv(nginx_support.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        nginx_support.binary_or_skip()


# -- the topology ------------------------------------------------------------------


@pytest.fixture
def scale_database(postgres: PostgresServer) -> Iterator[str]:
    name = f"scale_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture
def scale_redis_url(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()
    return url


def _report(checks: list[Check], topology: Topology) -> str:
    lines = [f"{c.status} {c.name}: {c.summary} {c.details}" for c in checks]
    for replica in topology.replicas:
        lines.append(f"-- {replica.name} log (tail):")
        lines.extend(replica.lines[-15:])
    if topology.proxy is not None:
        lines.append("-- nginx error log (tail):")
        lines.extend(topology.proxy.error_lines()[-15:])
    return "\n".join(lines)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.nginx
@pytest.mark.slow
def test_scale_out(
    nginx_binary: str, scale_database: str, scale_redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(bench_duration=0.5, bench_warmup=0.2, bench_rounds=1)
    with Topology(
        tmp_path / "scale",
        database_url=scale_database,
        redis_url=scale_redis_url,
        replicas=3,
        nginx_binary=nginx_binary,
    ) as topology:
        scenario = run_scenario(topology, settings)
        checks = scenario.checks
        report = _report(checks, topology)
    assert [c.status for c in checks] == ["PASS"] * 4 + ["INFO", "PASS", "INFO"] + ["PASS"] * 5, (
        report
    )
    by_name = {c.name: c for c in checks}

    psql = by_name["psql write reaches every replica"]
    assert sorted(psql.figures) == ["replica-1_ms", "replica-2_ms", "replica-3_ms"], report
    affinity = by_name["1,000 sessions through nginx: HIT on the second query"]
    assert affinity.figures["second"] == {"HIT": 1000}, report

    placement = by_name["every session's entries live on exactly one replica (asked directly)"]
    per_replica = placement.figures["per_replica"]
    assert sorted(per_replica) == ["replica-1", "replica-2", "replica-3"], report
    assert sum(per_replica.values()) == 1000
    assert min(per_replica.values()) > 150, report  # the ring spreads sessions

    throughput = by_name["throughput of cache hits"].figures
    assert all(rate > 0 for rate in throughput["hits_per_s"].values()), report
    assert throughput["errors"] == 0, report
    assert throughput["not_hit"] == 0, report
    assert throughput["proxy_overhead_throughput"] > 0
    assert by_name["memory per session"].figures["rss_bytes_per_session"] > 0

    moved = by_name["stopping replica-2 loses only the sessions it held"].figures
    assert moved["moved"] == per_replica["replica-2"]
    assert moved["others_hit"] == 1000 - per_replica["replica-2"]
