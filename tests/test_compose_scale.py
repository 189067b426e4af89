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
- nginx mounts the repository's config, publishes only on loopback and waits
  for healthy replicas; the config lists exactly the replica containers of
  the default scale, by name, one ``server`` line each (one name resolving to
  several addresses would break session affinity: nginx's consistent hash
  builds its ring from the names);
- Redis keeps no data on disk and evicts when full.

tests/test_scale.py runs the same topology natively from the same nginx config.
"""

from __future__ import annotations

import re
from typing import Any

from scale.nginx import CONFIG, CONTAINER_PORT, upstream_servers
from server import config
from tests.test_compose import (
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
    assert replica["build"] == server["build"]
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
    assert command[:3] == ["python", "-m", "server"]
    settings = config.load(command[3:], environ=container_env(replica))
    standalone = config.load(
        service_command(service("server"))[3:], environ=container_env(service("server"))
    )
    assert settings.listen == f"0.0.0.0:{CONTAINER_PORT}"
    assert settings.database_url == standalone.database_url
    backend, arguments = settings.shared_region()
    assert backend == "dogpile.cache.redis"
    assert arguments["url"] == "redis://redis:6379/0"
    assert settings.page_token_secret, "replicas need one page-token secret"
    grace_period = duration_seconds(str(replica["stop_grace_period"]))
    assert grace_period > settings.grace


def test_scale_services_set_only_variables_the_server_reads() -> None:
    known = set(config.environment_variables())
    names = [k for k in environment(service("replica")) if k.startswith(config.ENV_PREFIX)]
    assert set(names) <= known, sorted(set(names) - known)


def test_nginx_serves_the_repository_config_on_loopback() -> None:
    nginx = service("nginx")
    image = str(nginx["image"])
    assert re.fullmatch(r"nginx:\d+\.\d+(\.\d+)?(-alpine)?", image), "pin the nginx version"
    assert nginx["volumes"] == [
        f"./{CONFIG.relative_to(CONFIG.parents[2])}:/etc/nginx/nginx.conf:ro"
    ]
    assert nginx["ports"] == [f"127.0.0.1:{PROXY_PORT}:{CONTAINER_PORT}"]
    assert nginx["depends_on"]["replica"]["condition"] == "service_healthy"
    assert nginx.get("stop_signal") == "SIGQUIT"  # nginx's graceful stop


def test_nginx_upstream_names_each_replica_container() -> None:
    compose = load_compose()
    project = compose["name"]
    count = service("replica")["deploy"]["replicas"]
    servers = upstream_servers(CONFIG.read_text(encoding="utf-8"))
    assert [address for address, _ in servers] == [
        f"{project}-replica-{n}:{CONTAINER_PORT}" for n in range(1, count + 1)
    ]
    assert not any(address.startswith("replica:") for address, _ in servers)


def test_redis_is_a_cache() -> None:
    redis = service("redis")
    assert re.fullmatch(r"redis:\d+(\.\d+)*(-alpine)?", str(redis["image"]))
    command = service_command(redis) if "command" in redis else []
    assert command[0] == "redis-server"
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "volumes" not in redis
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
