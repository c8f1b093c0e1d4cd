"""Prometheus metrics of one app: what the server measured plus a live view of the engine.

Design choices:

* **One registry per app** (no ``prometheus_client`` global), so two apps in one process — tests,
  embedding — never share or collide.
* **Server side, per request:** requests by adapter / endpoint / outcome, prompt and completion
  tokens by adapter, time to first token and per-token latency histograms as the client sees
  them (HTTP included), and refusals by error type.
* **Engine side, read at scrape time** by a custom collector from ``Engine.stats()``: queue depth,
  running rows, slot residency (one series per resident adapter), cache hits and misses, and the
  engine's own TTFT / per-token latency as summaries, so HTTP overhead shows as the difference.
* **Replicas** (``--engine vllm``): per replica and adapter, requests, tokens, loads and load
  time, and routing hits (sent where the adapter was loaded) and misses (sent elsewhere, which
  loaded it); health, requests in flight and adapters loaded per replica read at scrape time.
* The ``adapter`` label is the resolved version (``pirate@3``), ``base`` or ``mix``: bounded by
  what is registered, never by what clients type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """The app's registry and the instruments the request path updates (event loop only)."""

    def __init__(self, engine_stats: Callable[[], Any] | None,
                 replica_stats: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "adapterhub_requests", "Generation requests answered, by adapter, endpoint and outcome "
            "(finish reason, 'cancelled' or 'error').", ["adapter", "endpoint", "outcome"], registry=r,
        )
        self.refusals = Counter(
            "adapterhub_refused_requests", "Generation requests refused before any token, by error type.",
            ["endpoint", "error"], registry=r,
        )
        self.prompt_tokens = Counter(
            "adapterhub_prompt_tokens", "Prompt tokens processed, by adapter.", ["adapter"], registry=r
        )
        self.completion_tokens = Counter(
            "adapterhub_completion_tokens", "Tokens generated, by adapter.", ["adapter"], registry=r
        )
        self.ttft = Histogram(
            "adapterhub_time_to_first_token_seconds",
            "From request arrival to the row's first token, as the server sees it.",
            buckets=_TTFT_BUCKETS, registry=r,
        )
        self.token_latency = Histogram(
            "adapterhub_time_per_output_token_seconds",
            "Time between consecutive tokens of one row, as the server sees it.",
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "adapterhub_request_duration_seconds", "Whole generation requests, arrival to last token.",
            buckets=_REQUEST_BUCKETS, registry=r,
        )
        if engine_stats is not None:
            r.register(_EngineCollector(engine_stats))
        if replica_stats is not None:
            self._replica_instruments(replica_stats)

    def _replica_instruments(self, replica_stats: Callable[[], Any]) -> None:
        r = self.registry
        self.replica_requests = Counter(
            "adapterhub_replica_requests", "Requests forwarded, by replica, adapter and outcome "
            "(HTTP status, 'error' for a failed connection).", ["replica", "adapter", "outcome"], registry=r,
        )
        self.replica_tokens = Counter(
            "adapterhub_replica_tokens", "Tokens a replica reported, by replica, adapter and kind "
            "(prompt or completion).", ["replica", "adapter", "kind"], registry=r,
        )
        self.replica_loads = Counter(
            "adapterhub_replica_adapter_loads", "Adapter loads into a replica, by outcome.",
            ["replica", "adapter", "outcome"], registry=r,
        )
        self.replica_unloads = Counter(
            "adapterhub_replica_adapter_unloads", "Adapters unloaded to make room (least recently used).",
            ["replica"], registry=r,
        )
        self.replica_load_seconds = Histogram(
            "adapterhub_replica_adapter_load_seconds", "Time to load one adapter into a replica.",
            ["replica"], buckets=_TTFT_BUCKETS, registry=r,
        )
        self.routing = Counter(
            "adapterhub_routing", "Routing decisions for adapter requests: 'hit' (a replica that held "
            "the adapter) or 'miss' (another, which loaded it); 'base' for base requests.",
            ["replica", "result"], registry=r,
        )
        self.replica_retries = Counter(
            "adapterhub_replica_retries", "Requests retried on another replica, by the replica that failed.",
            ["replica"], registry=r,
        )
        r.register(_ReplicaCollector(replica_stats))

    def first_tokens(self, started: float, rows: int) -> None:
        elapsed = time.perf_counter() - started
        for _ in range(rows):
            self.ttft.observe(elapsed)

    def token_gap(self, seconds: float, tokens: int) -> None:
        if tokens:
            per_token = seconds / tokens
            for _ in range(tokens):
                self.token_latency.observe(per_token)

    def request_done(self, label: str, endpoint: str, outcome: str, prompt_tokens: int,
                     completion_tokens: int, seconds: float) -> None:
        self.requests.labels(label, endpoint, outcome).inc()
        self.prompt_tokens.labels(label).inc(prompt_tokens)
        self.completion_tokens.labels(label).inc(completion_tokens)
        self.duration.observe(seconds)

    def refused(self, endpoint: str, error: str) -> None:
        self.refusals.labels(endpoint, error).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Reads ``Engine.stats()`` at scrape time; nothing when the engine is not up."""

    def __init__(self, engine_stats: Callable[[], Any]) -> None:
        self._stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("adapterhub_ready", "1 when the base and engine are loaded.")
        stats = self._stats()
        ready.add_metric([], 1 if stats is not None else 0)
        yield ready
        if stats is None:
            return
        gauges = {
            "queue_depth": ("Requests waiting for a row.", stats.queue_depth),
            "running_rows": ("Rows decoding now.", stats.running_rows),
            "max_rows": ("Rows the engine decodes at most at once.", stats.max_rows),
            "slots": ("Adapter slots.", stats.max_slots),
            "slots_used": ("Adapter slots holding an adapter.", len(stats.resident)),
            "cached_adapters": ("Prepared adapters in the LRU cache behind the slots.", stats.cached_adapters),
            "adapter_loads_in_flight": ("Adapters being read from the registry now.", stats.loads_in_flight),
            "prefix_cache_blocks": ("Blocks of prompt prefixes kept for reuse.", stats.prefix_cache_blocks),
            "prefix_cache_bytes": ("Memory of the kept prefix blocks.", stats.prefix_cache_bytes),
        }
        for name, (doc, value) in gauges.items():
            family = GaugeMetricFamily(f"adapterhub_engine_{name}", doc)
            family.add_metric([], value)
            yield family
        resident = GaugeMetricFamily(
            "adapterhub_adapter_resident", "1 per adapter in a slot, with its slot and pin state; "
            "value is rows using it now.", labels=["adapter", "slot", "pinned"],
        )
        for r in stats.resident:
            resident.add_metric([r.ref, str(r.slot), "true" if r.pinned else "false"], r.active_rows)
        yield resident
        counters = {
            "cache_hits": ("Adapter acquisitions served from a slot or the cache.", stats.cache_hits),
            "cache_misses": ("Adapter acquisitions that read the registry.", stats.cache_misses),
            "prefix_cache_queries": ("Prompt tokens looked up in the prefix cache.",
                                     stats.prefix_cache_queried_tokens),
            "prefix_cache_hits": ("Prompt tokens reused from the prefix cache, not prefilled.",
                                  stats.prefix_cache_hit_tokens),
            "requests_finished": ("Requests the engine finished.", stats.requests_finished),
            "prompt_tokens": ("Prompt tokens the engine prefilled.", stats.prompt_tokens),
            "completion_tokens": ("Tokens the engine generated.", stats.completion_tokens),
            "steps": ("Decode steps run.", stats.steps),
        }
        for name, (doc, value) in counters.items():
            counter = CounterMetricFamily(f"adapterhub_engine_{name}", doc)
            counter.add_metric([], value)
            yield counter
        ttft = SummaryMetricFamily(
            "adapterhub_engine_time_to_first_token_seconds", "Engine-side time to first token."
        )
        ttft.add_metric([], stats.ttft_count, stats.ttft_sum)
        yield ttft
        itl = SummaryMetricFamily(
            "adapterhub_engine_time_per_output_token_seconds", "Engine-side time between tokens."
        )
        itl.add_metric([], stats.token_latency_count, stats.token_latency_sum)
        yield itl


class _ReplicaCollector(Collector):
    """Reads the router's replicas at scrape time: ``(url, healthy, in_flight, loaded)`` each."""

    def __init__(self, replica_stats: Callable[[], Any]) -> None:
        self._stats = replica_stats

    def collect(self) -> Iterator[Metric]:
        replicas = list(self._stats())
        ready = GaugeMetricFamily("adapterhub_ready", "1 when at least one replica is healthy.")
        ready.add_metric([], 1 if any(healthy for _, healthy, _, _ in replicas) else 0)
        yield ready
        families = {
            "healthy": GaugeMetricFamily("adapterhub_replica_healthy", "1 while the replica passes health checks.",
                                         labels=["replica"]),
            "in_flight": GaugeMetricFamily("adapterhub_replica_in_flight", "Requests on the replica now.",
                                           labels=["replica"]),
            "loaded": GaugeMetricFamily("adapterhub_replica_loaded_adapters", "Adapters the router has loaded there.",
                                        labels=["replica"]),
        }
        for url, healthy, in_flight, loaded in replicas:
            families["healthy"].add_metric([url], 1 if healthy else 0)
            families["in_flight"].add_metric([url], in_flight)
            families["loaded"].add_metric([url], loaded)
        yield from families.values()


__all__ = ["CONTENT_TYPE", "ServerMetrics"]
