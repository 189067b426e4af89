"""Prometheus metrics: the counters, gauges and latency histogram a scrape shows.

A real server with ``--http-listen`` (or its alias ``--metrics-listen``) on a
free loopback port, driven by the real client, then scraped over HTTP: the
cache counters match what the calls did, the gauges match the live sessions,
and each call was observed in the latency histogram under its method and
cache status.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sesscache_client import Client
from tests.support.servers import ServerThread


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_calls_and_sessions(
    tmp_path: object, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(f"sqlite:///{tmp_path}/m.db", http_listen="127.0.0.1:0")
    assert server.running is not None
    assert server.running.http is not None
    port = server.running.http.port
    with Client(server.target, timeout=20) as client:
        session = client.session("metrics")
        miss = session.query_persons(name="person 10")
        session.query_persons(name="person 10")
        session.query_persons(name="person 10")
        client.session("other").query_persons(name="person 11")
    samples = _scrape(port)
    assert samples["sesscache_cache_hits_total{}"] == 2
    assert samples["sesscache_cache_misses_total{}"] == 2
    assert samples["sesscache_cache_stores_total{}"] == 2
    assert samples["sesscache_cache_sql_statements_saved_total{}"] == 2 * miss.sql_statements
    assert samples["sesscache_sessions{}"] == 2
    assert samples["sesscache_cache_entries{}"] == 2
    assert samples["sesscache_cache_bytes{}"] > 0
    hits = "sesscache_rpc_duration_seconds_count{cache=HIT,method=QueryPersons,status=OK}"
    misses = "sesscache_rpc_duration_seconds_count{cache=MISS,method=QueryPersons,status=OK}"
    assert samples[hits] == 2
    assert samples[misses] == 2


def test_reset_stats_does_not_move_prometheus_counters(
    tmp_path: object, make_server: Callable[..., ServerThread]
) -> None:
    # The alias of --http-listen, kept for existing set-ups.
    server = make_server(f"sqlite:///{tmp_path}/m.db", metrics_listen="127.0.0.1:0")
    assert server.running is not None
    assert server.running.http is not None
    with Client(server.target, timeout=20) as client:
        session = client.session("reset")
        session.query_persons(name="person 10")
        session.query_persons(name="person 10")
        server.running.inspector.counters.reset()
        assert server.running.inspector.counters.snapshot().hits == 0
    samples = _scrape(server.running.http.port)
    assert samples["sesscache_cache_hits_total{}"] == 1


def test_limit_hits_are_counted_by_setting_name(
    tmp_path: object, make_server: Callable[..., ServerThread]
) -> None:
    """A limit that refuses a call shows in the metrics and in GetStats, by its name."""
    server = make_server(
        f"sqlite:///{tmp_path}/m.db",
        http_listen="127.0.0.1:0",
        max_response_bytes=1,  # every listing of two entries is cut short
    )
    assert server.running is not None
    assert server.running.http is not None
    with Client(server.target, timeout=20) as client:
        session = client.session("limits")
        session.query_persons(name="person 10")
        session.query_persons(name="person 11")
        assert len(list(session.list_cache_keys())) == 2  # one entry per page
        stats = session.get_stats()
    samples = _scrape(server.running.http.port)
    assert samples["sesscache_limit_hits_total{limit=max_response_bytes}"] >= 1
    assert stats.server.limits_hit["max_response_bytes"] >= 1
