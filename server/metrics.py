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

    def __init__(self, engine_stats: Callable[[], Any]) -> None:
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
        r.register(_EngineCollector(engine_stats))

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


__all__ = ["CONTENT_TYPE", "ServerMetrics"]
