"""Prometheus metrics, served at ``/metrics`` by :mod:`sesscache_server.http` (``--http-listen``).

The cache counters, session and entry gauges are read from the
:class:`~sesscache_server.inspection.Inspector` and the registry when Prometheus
scrapes (a custom collector), so they cost the cache nothing per call. The
latency histogram (by method, status and cache status) is fed by the access
log in batches, off the calls' path, and brought up to date before each scrape.

Counters are totals since the server started: ``ResetStats`` does not move
them (Prometheus counters never go down).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sesscache.registry import SessionRegistry
from sesscache.stats import COUNTERS
from sesscache_server.inspection import Inspector, limits_hit, server_totals


class CacheCollector(Collector):
    """Reads the counters and gauges at scrape time."""

    def __init__(self, inspector: Inspector, registry: SessionRegistry) -> None:
        self.inspector = inspector
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        totals = self.inspector.counters.totals()
        for name, documentation in COUNTERS.items():
            family = CounterMetricFamily(f"sesscache_cache_{name}", documentation)
            family.add_metric([], getattr(totals, name))
            yield family
        ended = CounterMetricFamily("sesscache_sessions_ended", "Sessions ended, for any reason")
        ended.add_metric([], self.registry.sessions_ended)
        yield ended
        limits = CounterMetricFamily(
            "sesscache_limit_hits",
            "Times a limit refused a call or cut a page short, by setting name",
            labels=["limit"],
        )
        for limit, count in sorted(limits_hit(self.registry, self.inspector).items()):
            limits.add_metric([limit], count)
        yield limits
        entries, size = server_totals(self.registry)
        for name, documentation, value in (
            ("sesscache_sessions", "Live sessions", len(self.registry)),
            ("sesscache_cache_entries", "Entries in session caches", entries),
            ("sesscache_cache_bytes", "Approximate bytes in session caches", size),
        ):
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], value)
            yield gauge


class Metrics:
    """The metrics registry and the latency histogram."""

    def __init__(self, inspector: Inspector, registry: SessionRegistry) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(CacheCollector(inspector, registry))
        self.latency = Histogram(
            "sesscache_rpc_duration_seconds",
            "RPC latency by method, status and cache status",
            ["method", "status", "cache"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self._children: dict[tuple[str, str, str], Any] = {}
        #: Called before each scrape: the access log hands over its pending
        #: observations (they are batched off the calls' path).
        self.flushers: list[Callable[[], None]] = []

    def before_scrape(self) -> None:
        for flush in self.flushers:
            flush()

    def observe(self, method: str, status: str, cache: str, seconds: float) -> None:
        key = (method, status, cache)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(method, status, cache)
        child.observe(seconds)
