"""The router's choices on their own, fast: affinity and its slack, one load per adapter and
replica however many requests wait, LRU unloads that spare names in use, health.

The replicas here are scripted in-memory HTTP handlers (httpx's ``MockTransport``) answering the
few calls of vLLM's LoRA API that the router makes; they stand for no engine. The real thing
(``adapterhub serve`` replicas, end to end) is ``test_replicas.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from adapterhub.errors import ReplicaError
from adapterhub.registry.export import Exported
from adapterhub_server.metrics import ServerMetrics
from adapterhub_server.replicas import Router

URLS = ["http://r0:8000", "http://r1:8000"]


class ScriptedReplicas:
    """Answers ``/health``, ``/v1/models`` and the load/unload calls; loads wait for ``gate``."""

    def __init__(self) -> None:
        self.loads: Counter[tuple[str, str]] = Counter()
        self.unloads: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.down: set[str] = set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if url in self.down:
            raise httpx.ConnectError("refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base", "max_model_len": 64}]})
        name = httpx.Response(200, content=request.content).json()["lora_name"]
        if path == "/v1/load_lora_adapter":
            await self.gate.wait()
            self.loads[(url, name)] += 1
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        self.unloads.append((url, name))
        return httpx.Response(200, text="Success")


def adapter(name: str) -> Exported:
    return Exported(name, Path(f"/cache/{name}"), f"{name}@1", 4)


async def make_router(replicas: ScriptedReplicas, *, max_loras: int = 8, slack: int = 4,
                      urls: list[str] = URLS) -> Router:
    client = httpx.AsyncClient(transport=httpx.MockTransport(replicas))
    router = Router(urls, client, ServerMetrics(None, replica_stats=lambda: []), max_loras=max_loras,
                    affinity_slack=slack, health_interval_s=60)
    await router.check_all()
    return router


async def test_one_load_however_many_requests_wait() -> None:
    replicas = ScriptedReplicas()
    replicas.gate.clear()
    router = await make_router(replicas, slack=100)
    waiting = [asyncio.create_task(router.lease(adapter("a"))) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)  # all wait on the one load
    replicas.gate.set()
    leases = await asyncio.gather(*waiting)
    assert sum(replicas.loads.values()) == 1
    assert len({lease.replica.url for lease in leases}) == 1
    assert [lease.hit for lease in leases].count(False) == 1  # the first chose; the rest followed it


async def test_a_much_busier_holder_loses_to_the_least_busy_replica() -> None:
    replicas = ScriptedReplicas()
    router = await make_router(replicas, slack=2)
    held = [await router.lease(adapter("a")) for _ in range(3)]  # in flight 1, 2, 3 on the holder
    assert {lease.replica.url for lease in held} == {URLS[0]}
    spill = await router.lease(adapter("a"))  # holder at 3 > 0 + 2: the other one loads it
    assert spill.replica.url == URLS[1] and not spill.hit
    assert replicas.loads == Counter({(URLS[0], "a"): 1, (URLS[1], "a"): 1})
    for lease in [*held, spill]:
        router.release(lease)
    assert all(r.in_flight == 0 and not r.using for r in router.replicas)


async def test_lru_unloads_the_least_recently_used_name_not_in_use() -> None:
    replicas = ScriptedReplicas()
    router = await make_router(replicas, max_loras=2, urls=URLS[:1])
    for name in ("a", "b", "a"):  # a used again: b is now the least recently used
        router.release(await router.lease(adapter(name)))
    router.release(await router.lease(adapter("c")))
    assert replicas.unloads == [(URLS[0], "b")]
    assert list(router.replicas[0].loaded) == ["a", "c"]
    busy = await router.lease(adapter("a"))
    router.release(await router.lease(adapter("d")))  # a is in use, so c goes
    assert replicas.unloads[-1] == (URLS[0], "c")
    router.release(busy)


async def test_failed_health_takes_a_replica_out_and_back() -> None:
    replicas = ScriptedReplicas()
    router = await make_router(replicas)
    router.release(await router.lease(adapter("a")))
    replicas.down.add(URLS[0])
    await router.check_all()
    assert [r.healthy for r in router.replicas] == [False, True]
    assert not router.replicas[0].loaded  # it may come back restarted
    lease = await router.lease(adapter("a"))
    assert lease.replica.url == URLS[1]
    router.release(lease)
    replicas.down.add(URLS[1])
    await router.check_all()
    with pytest.raises(ReplicaError, match="no healthy replica"):
        await router.lease(None)
    replicas.down.clear()
    await router.check_all()
    assert all(r.healthy for r in router.replicas)
