"""A bounded load driver for a running server: N concurrent streaming clients, for a fixed time,
over a set of models, some of which hang up mid-stream.

Used by ``test_server_load.py`` (a few seconds in ``make test``; a minute in ``make load``).
Loopback only: the driver refuses any other host. Each client loops: open a streaming chat
completion, read SSE chunks, and either read to ``[DONE]`` or — for every ``disconnect_every``-th
client — close the connection after ``disconnect_after`` chunks. Everything is counted: requests,
tokens, outcomes by type (HTTP status, SSE error code, transport error), time to first token and
request latency.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LoadPlan:
    """What the driver sends."""

    url: str
    models: tuple[str, ...]
    clients: int = 64
    duration_s: float = 5.0
    max_tokens: int = 16
    disconnect_every: int = 3
    disconnect_after: int = 2
    api_key: str | None = None


@dataclass
class LoadReport:
    """What came back."""

    requests: int = 0
    completed: int = 0
    disconnected: int = 0
    tokens: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for kind, n in self.outcomes.items() if kind.startswith("http 5"))

    def summary(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}ms"

        rate = self.tokens / self.wall_s if self.wall_s else 0.0
        return (
            f"load: {self.requests} requests in {self.wall_s:.1f}s ({self.completed} completed, "
            f"{self.disconnected} hung up mid-stream), {self.tokens} tokens streamed ({rate:.0f}/s); "
            f"outcomes {dict(sorted(self.outcomes.items()))}; time to first token p50 "
            f"{pct(self.ttft_s, 0.5)} p95 {pct(self.ttft_s, 0.95)}; completed request p50 "
            f"{pct(self.latency_s, 0.5)} p95 {pct(self.latency_s, 0.95)}"
            + (f" (mean {statistics.fmean(self.latency_s) * 1000:.0f}ms)" if self.latency_s else "")
        )


def run_load(plan: LoadPlan) -> LoadReport:
    """Drive ``plan`` to the end (every client finishes its request in flight) and report."""
    host = urlsplit(plan.url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"url={plan.url!r}: the load driver only talks to loopback")
    return asyncio.run(_drive(plan))


async def _drive(plan: LoadPlan) -> LoadReport:
    report = LoadReport()
    headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
    limits = httpx.Limits(max_connections=plan.clients + 8, max_keepalive_connections=plan.clients)
    started = time.perf_counter()
    deadline = started + plan.duration_s
    async with httpx.AsyncClient(base_url=plan.url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(120.0)) as http:
        await asyncio.gather(*(_client(http, plan, i, deadline, report) for i in range(plan.clients)))
    report.wall_s = time.perf_counter() - started
    return report


async def _client(http: httpx.AsyncClient, plan: LoadPlan, index: int, deadline: float,
                  report: LoadReport) -> None:
    hangs_up = plan.disconnect_every > 0 and index % plan.disconnect_every == 0
    turn = 0
    while turn == 0 or time.perf_counter() < deadline:  # at least one request per client
        model = plan.models[(index + turn) % len(plan.models)]
        turn += 1
        body = {
            "model": model, "messages": [{"role": "user", "content": f"client {index} turn {turn}"}],
            "max_tokens": plan.max_tokens, "temperature": 0.8, "seed": index * 1000 + turn,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        report.requests += 1
        await _one(http, body, hangs_up, plan.disconnect_after, report)


async def _one(http: httpx.AsyncClient, body: dict[str, object], hangs_up: bool, hang_up_after: int,
               report: LoadReport) -> None:
    sent = time.perf_counter()
    chunks = 0  # content chunks received (one per token, but for bytes still decoding)
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                await reply.aread()
                report.outcomes[f"http {reply.status_code}"] += 1
                return
            usage = 0
            async for line in reply.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: "):]
                if payload == "[DONE]":
                    report.completed += 1
                    report.tokens += usage or chunks
                    report.latency_s.append(time.perf_counter() - sent)
                    report.outcomes["completed"] += 1
                    return
                event = json.loads(payload)
                if "error" in event:
                    report.outcomes[f"sse {event['error']['code']}"] += 1
                    return
                if event.get("usage"):
                    usage = int(event["usage"]["completion_tokens"])
                    continue
                if not event["choices"][0]["delta"].get("content"):
                    continue
                chunks += 1
                if chunks == 1:
                    report.ttft_s.append(time.perf_counter() - sent)
                if hangs_up and chunks >= hang_up_after:
                    report.disconnected += 1
                    report.tokens += chunks
                    report.outcomes["hung up"] += 1
                    return  # leaving the block closes the connection mid-stream
            report.outcomes["stream ended without [DONE]"] += 1
    except httpx.HTTPError as error:
        report.outcomes[f"transport {type(error).__name__}"] += 1
