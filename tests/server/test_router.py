"""The router's choices on their own, fast: affinity and its slack, one load per adapter and
replica however many requests wait, LRU unloads that spare names in use, health.

The replicas here are scripted in-memory HTTP handlers (httpx's ``MockTransport``) answering the
few calls of vLLM's LoRA API that the router makes; they stand for no engine. The real thing
(``adapterhub serve`` replicas, end to end) is ``test_replicas.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
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
        self.held: dict[str, set[str]] = {}  # what each replica has loaded, as vLLM keeps it
        self.broken: set[str] = set()  # replicas that pass /health but drop generation requests
        self.broken_loads: set[str] = set()  # ... or drop adapter loads
        self.answered: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if url in self.down:
            raise httpx.ConnectError("refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        held = self.held.setdefault(url, set())
        if path.endswith("/completions"):
            return self._generate(url, request)
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base", "max_model_len": 64},
                                                      *({"id": n} for n in sorted(held))]})
        name = httpx.Response(200, content=request.content).json()["lora_name"]
        if path == "/v1/load_lora_adapter":
            await self.gate.wait()
            if url in self.broken_loads:
                raise httpx.ReadError("connection reset while loading", request=request)
            if name in held:  # vLLM refuses a second load of a name with 400
                return httpx.Response(400, json={"error": {"message": "already loaded", "type": "BadRequestError",
                                                           "param": None, "code": 400}})
            self.loads[(url, name)] += 1
            held.add(name)
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        held.discard(name)
        self.unloads.append((url, name))
        return httpx.Response(200, text="Success")


    def _generate(self, url: str, request: httpx.Request) -> httpx.Response:
        if url in self.broken:
            raise httpx.ConnectError("connection reset", request=request)
        body = json.loads(request.content)
        self.answered.append(url)
        answer = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ahoy"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        if not body.get("stream"):
            return httpx.Response(200, json=answer)
        chunk = {**answer, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": "ahoy"}, "finish_reason": "stop"}]}
        usage = {**chunk, "choices": []}
        del chunk["usage"]
        events = "".join(f"data: {json.dumps(e)}\n\n" for e in (chunk, usage)) + "data: [DONE]\n\n"
        return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})


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


async def test_a_name_the_replica_still_holds_counts_as_loaded() -> None:
    """After a failed probe the router forgets what a replica held; loading a name it still has
    is refused by vLLM (400), and the router then finds it listed and carries on."""
    replicas = ScriptedReplicas()
    router = await make_router(replicas, urls=URLS[:1])
    router.release(await router.lease(adapter("a")))
    router.mark_failed(router.replicas[0], "a blip")
    await router.check_all()
    lease = await router.lease(adapter("a"))
    assert list(lease.replica.loaded) == ["a"] and replicas.loads[(URLS[0], "a")] == 1
    router.release(lease)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_whose_replica_drops_it_is_retried_once_elsewhere(served_home: Path, stream: bool) -> None:
    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService
    from adapterhub_server.schemas import ChatCompletionRequest

    replicas = ScriptedReplicas()
    replicas.broken.add(URLS[0])  # healthy by its probes, but it drops the request
    settings = load_settings(home=served_home, backend="vllm", replicas=URLS)
    service = ReplicaService(settings, transport=httpx.MockTransport(replicas))
    service.start_loading()
    try:
        assert await service.wait_ready(60)
        raw = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        body = ChatCompletionRequest.model_validate(raw)
        exported = await service.adapter_for(body)
        assert exported is not None and exported.label == "pirate@1"
        forwarded = await service.forward("/v1/chat/completions", raw, exported, stream)
        assert forwarded.lease.replica.url == URLS[1] and replicas.answered == [URLS[1]]
        assert not service.ready().router.replicas[0].healthy
        if stream:
            events = [e async for e in service.events(forwarded, exported, "chat", "pirate", False, time.perf_counter())]
            assert events[-1] == "data: [DONE]\n\n" and len(events) == 2  # the usage event is dropped
            assert json.loads(events[0][6:])["model"] == "pirate"
        else:
            status, answer = await service.answer(forwarded, exported, "chat", "pirate", time.perf_counter())
            assert status == 200 and answer["model"] == "pirate"
        replicas.broken.add(URLS[1])
        with pytest.raises(ReplicaError, match="failed on 1 replica"):
            await service.forward("/v1/chat/completions", raw, exported, stream)
    finally:
        await service.close()


async def test_launch_vllm_names_the_wheel_to_install_where_vllm_is_missing(served_home: Path) -> None:
    import importlib.util

    from adapterhub import Hub
    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService
    from adapterhub_server.vllm_launch import VllmProcess

    settings = load_settings(home=served_home, backend="vllm", launch_vllm=True, replica_max_loras=3,
                             vllm_args="--tensor-parallel-size 2")
    hub = Hub(served_home)
    command = VllmProcess(settings, hub.base_info, served_home).command(8123)
    for flag in ("--enable-lora", "--max-loras", "3", "--max-lora-rank", "16", "--port", "8123",
                 str(hub.base_info.path), "--tensor-parallel-size"):
        assert flag in command
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: test_vllm_real.py covers launching it")
    service = ReplicaService(settings)
    service.start_loading()
    assert not await service.wait_ready(30)
    assert service.failure is not None and "pip install vllm" in service.failure
    await service.close()


def test_launch_vllm_takes_only_the_ranks_vllm_accepts(served_home: Path) -> None:
    from adapterhub.errors import ConfigError
    from adapterhub_server import load_settings

    with pytest.raises(ConfigError, match=r"replica_max_lora_rank=12 with launch_vllm.*\[1, 8, 16, 32"):
        load_settings(home=served_home, backend="vllm", launch_vllm=True, replica_max_lora_rank=12)
    # replicas started elsewhere (SGLang, adapterhub serve) may take other ranks
    assert load_settings(home=served_home, backend="vllm", replicas=URLS, replica_max_lora_rank=12)


async def test_a_launched_vllm_that_exits_leaves_routing_for_good(served_home: Path, tmp_path: Path) -> None:
    """A real child process that passes the install probe and then exits 3, as vLLM does on a
    flag it refuses: the replica is out of routing, its error names the status and the log."""
    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService

    python = tmp_path / "python"
    python.write_text('#!/bin/sh\n[ "$1" = -c ] && exit 0\necho "error: unrecognized arguments" >&2\nexit 3\n')
    python.chmod(0o755)
    settings = load_settings(home=served_home, backend="vllm", launch_vllm=True, vllm_python=python,
                             replica_health_interval_s=0.05)
    service = ReplicaService(settings)
    service.start_loading()
    try:
        assert await service.wait_ready(60)
        replica = service.ready().router.replicas[0]
        async with asyncio.timeout(60):  # the watcher's turn comes once the process has exited
            while not replica.gone:
                await asyncio.sleep(0.05)
        assert service._vllm is not None and service._vllm.command(1)[0] == str(python)
        for _ in range(3):  # health probes leave it out, and its error as it was
            await service.ready().router.check_all()
        assert not replica.healthy and "exited with status 3" in (replica.last_error or "")
        log = service._vllm.log_path
        assert log is not None and str(log) in (replica.last_error or "")
        assert "unrecognized arguments" in log.read_text()
    finally:
        await service.close()


def test_a_replicas_error_becomes_the_library_error_its_code_names() -> None:
    from adapterhub.errors import IncompatibleAdapterError
    from adapterhub_server.replicas import replica_error

    ours = httpx.Response(409, json={"error": {"message": "pirate@1 was trained on base 1234",
                                               "type": "invalid_request_error", "param": "model",
                                               "code": "incompatible_adapter"}})
    error = replica_error(ours, "replica http://r0 could not load pirate@1")
    assert isinstance(error, IncompatibleAdapterError) and "trained on base 1234" in str(error)
    theirs = httpx.Response(400, json={"error": {"message": "bad adapter", "type": "BadRequestError",
                                                 "param": None, "code": 400}})
    assert isinstance(replica_error(theirs, "load"), ReplicaError)  # vLLM's numeric code names no class
    assert "teapot" in str(replica_error(httpx.Response(418, text="teapot"), "load"))


async def test_a_load_that_fails_on_one_replica_is_retried_on_another(served_home: Path) -> None:
    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService
    from adapterhub_server.schemas import ChatCompletionRequest

    replicas = ScriptedReplicas()
    replicas.broken_loads.add(URLS[0])
    service = ReplicaService(load_settings(home=served_home, backend="vllm", replicas=URLS),
                             transport=httpx.MockTransport(replicas))
    service.start_loading()
    try:
        assert await service.wait_ready(60)
        raw = {"model": "json", "messages": [{"role": "user", "content": "hi"}]}
        exported = await service.adapter_for(ChatCompletionRequest.model_validate(raw))
        forwarded = await service.forward("/v1/chat/completions", raw, exported, False)
        assert forwarded.lease.replica.url == URLS[1]
        status, _ = await service.answer(forwarded, exported, "chat", "json", time.perf_counter())
        assert status == 200 and not service.ready().router.replicas[0].healthy
    finally:
        await service.close()


async def test_a_streams_first_event_is_parsed_once(served_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The route reads the first event's id for its header and the stream re-encodes it: one parse."""
    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService
    from adapterhub_server.routes.proxy import _event_id
    from adapterhub_server.schemas import ChatCompletionRequest

    service = ReplicaService(load_settings(home=served_home, backend="vllm", replicas=URLS),
                             transport=httpx.MockTransport(ScriptedReplicas()))
    service.start_loading()
    parsed: list[str] = []
    loads = json.loads

    def counting(text: str | bytes, **kw: object) -> object:
        if isinstance(text, str) and "chat.completion.chunk" in text and '"ahoy"' in text:
            parsed.append(text)
        return loads(text, **kw)

    try:
        assert await service.wait_ready(60)
        raw = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        exported = await service.adapter_for(ChatCompletionRequest.model_validate(raw))
        monkeypatch.setattr(json, "loads", counting)
        forwarded = await service.forward("/v1/chat/completions", raw, exported, True)
        assert _event_id(forwarded) == "cmpl-1"
        events = [e async for e in service.events(forwarded, exported, "chat", "pirate", False, time.perf_counter())]
        monkeypatch.undo()
        assert json.loads(events[0][6:])["model"] == "pirate" and events[-1] == "data: [DONE]\n\n"
        assert len(parsed) == 1
    finally:
        await service.close()


async def test_a_router_that_failed_to_start_says_why_on_every_503(home: Path) -> None:
    """Every way in (new requests, admitted ones, the base's name) names the failure, not 'starting'."""
    from fastapi import HTTPException

    from adapterhub_server import load_settings
    from adapterhub_server.replica_service import ReplicaService

    service = ReplicaService(load_settings(home=home, backend="vllm", replicas=URLS),
                             transport=httpx.MockTransport(ScriptedReplicas()))
    service.start_loading()
    try:
        assert not await service.wait_ready(60)  # this home has no base
        for get in (service.ready, lambda: service.loaded, lambda: service.base_name):
            with pytest.raises(HTTPException) as caught:
                get()
            assert caught.value.status_code == 503
            assert "the router could not start (BaseModelError" in str(caught.value.detail)
    finally:
        await service.close()
