"""Load with hang-ups on a real ``adapterhub serve`` process (loopback only), and the bounded
queue under a burst.

64 concurrent streaming clients over 16 adapters for ``ADAPTERHUB_LOAD_SECONDS`` (a few seconds
in ``make test``; ``make load`` runs a minute), every third client hanging up mid-stream. Then:
no 5xx and no transport errors, every request accounted for in the metrics, nothing left behind
(no running or queued rows, no loads in flight, no adapter with active rows, the per-key budget
whole again) and memory back near where it was after warm-up. The figures are printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from load_driver import LoadPlan, run_load
from server_harness import (
    ADMIN_KEY,
    INFERENCE_KEY,
    RunningServer,
    assert_error_shape,
    auth,
    start_server,
)
from test_server_fuzz import report

LOAD_SECONDS = float(os.environ.get("ADAPTERHUB_LOAD_SECONDS", "4"))
ADAPTERS = [f"load{i:02d}" for i in range(16)]
CLIENTS = 64


@pytest.fixture(scope="module")
def load_home(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path,
              make_lora: Callable[..., Path]) -> Path:
    """A hub home on the tiny base with 16 distinct adapters."""
    from adapterhub import Hub

    home = tmp_path_factory.mktemp("load-home")
    loras = tmp_path_factory.mktemp("load-loras")
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for seed, name in enumerate(ADAPTERS):
        hub.import_adapter(make_lora(tiny_base_dir, loras / name, seed=100 + seed), name)
    return home


def engine_state(server: RunningServer) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/admin/adapters", headers=auth("admin"), timeout=30).json())


def wait_for(server: RunningServer, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = engine_state(server)
    while not predicate(state) and time.monotonic() < deadline:
        time.sleep(0.05)
        state = engine_state(server)
    return state


def idle(state: dict[str, Any]) -> bool:
    return (state["running_rows"] == 0 and state["queue_depth"] == 0 and state["loads_in_flight"] == 0
            and all(r["active_rows"] == 0 for r in state["resident"]))


def rss_bytes(server: RunningServer) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def requests_by_outcome(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", headers=auth("admin"), timeout=30).text
    found: dict[str, float] = {}
    for outcome, value in re.findall(r'^adapterhub_requests_total\{[^}]*outcome="([^"]+)"[^}]*\} (\S+)$',
                                     text, flags=re.M):
        found[outcome] = found.get(outcome, 0.0) + float(value)
    return found


def test_64_streams_over_16_adapters_with_hang_ups_leave_nothing_behind(
        load_home: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = {"ADAPTERHUB_API_KEYS": INFERENCE_KEY, "ADAPTERHUB_ADMIN_KEYS": ADMIN_KEY,
           "ADAPTERHUB_MAX_STREAMS_PER_KEY": str(CLIENTS)}
    server = start_server(load_home, tmp_path, env=env)
    try:
        warm_up = run_load(LoadPlan(server.url, tuple(ADAPTERS), clients=len(ADAPTERS), duration_s=0.1,
                                    max_tokens=4, disconnect_every=0, api_key=INFERENCE_KEY))
        # every client makes at least one request; a fast machine fits a second inside the window
        assert set(warm_up.outcomes) == {"completed"} and warm_up.completed >= len(ADAPTERS), warm_up.outcomes
        assert idle(wait_for(server, idle))
        rss_warm = rss_bytes(server)

        load = run_load(LoadPlan(server.url, tuple(ADAPTERS), clients=CLIENTS, duration_s=LOAD_SECONDS,
                                 api_key=INFERENCE_KEY))
        report(request, load.summary())
        assert set(load.outcomes) == {"completed", "hung up"}, load.outcomes  # no 4xx/5xx/SSE errors
        assert load.completed >= CLIENTS - CLIENTS // 3 and load.disconnected >= CLIENTS // 3

        state = wait_for(server, idle)
        assert idle(state), state
        outcomes = requests_by_outcome(server)
        assert "error" not in outcomes, outcomes
        assert sum(outcomes.values()) == warm_up.requests + load.requests, outcomes  # each counted once
        assert outcomes.get("cancelled", 0) >= 1, outcomes  # hang-ups cancel their rows

        # the per-key budget is whole again: CLIENTS streams at once still fit under the key
        again = run_load(LoadPlan(server.url, tuple(ADAPTERS), clients=CLIENTS, duration_s=0.1, max_tokens=2,
                                  disconnect_every=0, api_key=INFERENCE_KEY))
        assert set(again.outcomes) == {"completed"} and again.completed >= CLIENTS, again.outcomes
        assert idle(wait_for(server, idle))
        rss_after = rss_bytes(server)
        report(request, f"load: server RSS {rss_warm / 2**20:.0f} MiB after warm-up, "
                        f"{rss_after / 2**20:.0f} MiB after {load.requests + again.requests} more requests")
        assert rss_after < rss_warm * 1.25, (rss_warm, rss_after)
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()[-4000:]


def test_bounded_queue_answers_429_beyond_its_size(load_home: Path, tmp_path: Path) -> None:
    """4 rows + 4 queued long requests fill the engine; every request beyond that is a 429
    with ``Retry-After``; hanging up frees rows and queue alike."""
    rows, queue, extra = 4, 4, 5
    env = {"ADAPTERHUB_ENGINE__MAX_ROWS": str(rows), "ADAPTERHUB_ENGINE__MAX_QUEUE": str(queue),
           "ADAPTERHUB_ENGINE__MAX_SEQ_LEN": "100000", "ADAPTERHUB_MAX_TOKENS_LIMIT": "100000"}
    server = start_server(load_home, tmp_path, env=env)

    def long_body(i: int) -> dict[str, Any]:
        return {"model": ADAPTERS[i % 4], "messages": [{"role": "user", "content": f"hold {i}"}],
                "max_tokens": 50_000, "ignore_eos": True, "stream": True}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            held = [asyncio.create_task(http.post("/v1/chat/completions", json=long_body(i)))
                    for i in range(rows + queue)]
            state = await asyncio.to_thread(
                wait_for, server, lambda s: s["running_rows"] == rows and s["queue_depth"] == queue)
            assert (state["running_rows"], state["queue_depth"]) == (rows, queue), state
            refused = await asyncio.gather(*(http.post("/v1/chat/completions", json={
                **long_body(i), "stream": False}) for i in range(extra)))
            for task in held:  # hang up: closes every held connection
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            return list(refused)

    try:
        refused = asyncio.run(burst())
        for reply in refused:
            error = assert_error_shape(reply, 429, "rate_limit_error")
            assert f"queue is full ({queue} waiting)" in error["message"], error
            assert int(reply.headers["retry-after"]) >= 1
        assert idle(wait_for(server, idle))
        after = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": ADAPTERS[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert after.status_code == 200, after.text
    finally:
        server.stop()
    assert server.shut_down_cleanly(), server.logs()[-4000:]
