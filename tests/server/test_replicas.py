"""``adapterhub serve --engine vllm``: a router in front of two real ``adapterhub serve`` replicas
(they speak vLLM's LoRA API), driven by the official ``openai`` client, against our own engine
serving the same hub in-process as the reference.

One set of processes for the module (two replicas, one router); the test that kills a replica
runs last.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from server_harness import (
    ADMIN_KEY,
    INFERENCE_KEY,
    RunningServer,
    assert_error_shape,
    auth,
    init_home,
    start_server,
    wait_ready,
)

PROMPT = "What is two plus two?"
LONG_ENV = {"ADAPTERHUB_ENGINE__MAX_SEQ_LEN": "100000", "ADAPTERHUB_MAX_TOKENS_LIMIT": "100000"}
LONG = {"max_tokens": 50_000, "ignore_eos": True}  # runs for minutes unless cancelled


@dataclass
class Stack:
    router: RunningServer
    replicas: list[RunningServer]
    home: Path
    base: str
    reference: TestClient

    def client(self, key: str = INFERENCE_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.router.url}/v1", api_key=key, max_retries=0)

    def state(self) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.router.url}/admin/replicas", headers=auth("admin"), timeout=10)
        assert reply.status_code == 200, reply.text
        return list(reply.json()["replicas"])

    def holders(self, name: str) -> list[str]:
        return [r["url"] for r in self.state() if name in r["loaded"]]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.router.url}/metrics", headers=auth("inference"), timeout=10).text
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"{name}{{(.*)}} (\S+)$", line)
            if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
                total += float(match.group(2))
        return total


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path, server_loras: dict[str, Path],
          make_lora: Any) -> Iterator[Stack]:
    from adapterhub_server import create_app, load_settings

    root = tmp_path_factory.mktemp("replicas")
    logs = root / "logs"
    logs.mkdir()
    extra = {name: make_lora(tiny_base_dir, root / f"{name}-lora", seed=seed) for name, seed in (("sql", 3), ("crowd", 4))}
    home = init_home(root / "router-home", tiny_base_dir, {**server_loras, **extra})
    replica_homes = [init_home(root / f"replica-{i}", tiny_base_dir, {}) for i in range(2)]  # not thread-safe
    with ThreadPoolExecutor(2) as pool:  # the two processes start side by side
        replicas = list(pool.map(lambda replica_home: start_server(replica_home, logs, env=LONG_ENV), replica_homes))
    env = {
        "ADAPTERHUB_API_KEYS": INFERENCE_KEY, "ADAPTERHUB_ADMIN_KEYS": ADMIN_KEY,
        "ADAPTERHUB_REPLICA_HEALTH_INTERVAL_S": "0.3", "ADAPTERHUB_REPLICA_MAX_LORA_RANK": "8",
        "ADAPTERHUB_MAX_TOKENS_LIMIT": LONG_ENV["ADAPTERHUB_MAX_TOKENS_LIMIT"],
    }
    router = start_server(home, logs, "--engine", "vllm", *(a for r in replicas for a in ("--replica", r.url)),
                          env=env)
    reference = TestClient(create_app(load_settings(home=home)), raise_server_exceptions=False)
    reference.__enter__()
    wait_ready(reference)
    stack = Stack(router, replicas, home, "", reference)
    for _ in range(100):
        if all(r["healthy"] for r in stack.state()):
            break
        time.sleep(0.1)
    stack.base = stack.client().models.list().data[0].id
    try:
        yield stack
    finally:
        reference.__exit__(None, None, None)
        for server in (router, *replicas):
            server.stop()
        assert "Traceback" not in router.logs(), router.logs()
        shutil.rmtree(root / "router-home" / "replica-cache", ignore_errors=True)


def _reference_chat(stack: Stack, **body: Any) -> str:
    reply = stack.reference.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0, **body})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


def _chat(stack: Stack, model: str, **extra: Any) -> Any:
    return stack.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0, **extra)


def test_answers_equal_a_single_server(stack: Stack) -> None:
    client = stack.client()
    for model, version in ((stack.base, stack.base), ("pirate", "pirate@1"), ("json@1", "json@1")):
        raw = _chat(stack, model)
        assert raw.headers["x-adapter-version"] == version
        answer = raw.parse()
        assert answer.model == model
        assert answer.choices[0].message.content == _reference_chat(stack, model=model), model
        assert answer.usage.completion_tokens > 0
        streamed = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0,
            stream=True)
        chunks = list(streamed)
        assert all(c.model == model for c in chunks) and not any(c.usage for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            answer.choices[0].message.content
    completion = client.completions.create(model="pirate", prompt="Once upon a time", max_tokens=8, temperature=0)
    reference = stack.reference.post("/v1/completions", json={
        "model": "pirate", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}).json()
    assert completion.choices[0].text == reference["choices"][0]["text"]
    with_usage = list(client.completions.create(model="pirate", prompt="Once upon a time", max_tokens=8,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 8


def test_second_request_goes_where_the_adapter_is_loaded(stack: Stack) -> None:
    from adapterhub import Hub
    from adapterhub.registry.export import served_name

    name = served_name(Hub(stack.home).resolve("json@1"))
    _chat(stack, "json")
    holders = stack.holders(name)
    assert len(holders) == 1
    hits = stack.metric("adapterhub_routing_total", replica=holders[0], result="hit")
    loads = stack.metric("adapterhub_replica_adapter_loads_total", adapter="json@1", outcome="loaded")
    for _ in range(3):
        assert _chat(stack, "json").headers["x-adapter-version"] == "json@1"
    assert stack.holders(name) == holders
    assert stack.metric("adapterhub_routing_total", replica=holders[0], result="hit") == hits + 3
    assert stack.metric("adapterhub_replica_adapter_loads_total", adapter="json@1", outcome="loaded") == loads
    assert stack.metric("adapterhub_replica_tokens_total", adapter="json@1", kind="completion") > 0


def test_many_requests_for_a_new_adapter_make_one_load(stack: Stack) -> None:
    # five at once: the holder stays within the default affinity_slack=4 of the idle replica
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda _: _chat(stack, "crowd"), range(5)))
    assert {r.headers["x-adapter-version"] for r in replies} == {"crowd@1"}
    assert len({r.parse().choices[0].message.content for r in replies}) == 1
    assert stack.metric("adapterhub_replica_adapter_loads_total", adapter="crowd@1") == 1


def test_alias_move_switches_versions_under_other_names(stack: Stack, tiny_base_dir: Path, tmp_path: Path,
                                                        make_lora: Any) -> None:
    from adapterhub import Hub
    from adapterhub.registry.export import served_name

    hub = Hub(stack.home)
    two = hub.import_adapter(make_lora(tiny_base_dir, tmp_path / "pirate-2", seed=7), "pirate")
    hub.registry.tag("pirate@1", "prod")
    first = _chat(stack, "pirate:prod")
    assert first.headers["x-adapter-version"] == "pirate@1"
    hub.registry.tag("pirate@2", "prod")
    second = _chat(stack, "pirate:prod")
    assert second.headers["x-adapter-version"] == "pirate@2"
    text = second.parse().choices[0].message.content
    assert text == _reference_chat(stack, model="pirate@2")
    assert text != first.parse().choices[0].message.content
    one = hub.resolve("pirate@1")
    assert served_name(one) != served_name(two)
    loaded = {n for r in stack.state() for n in r["loaded"]}
    assert {served_name(one), served_name(two)} <= loaded


def test_mix_is_served_as_one_derived_adapter(stack: Stack) -> None:
    mix = [{"ref": "pirate@1", "weight": 0.5}, {"ref": "json@1", "weight": 0.5}]
    raw = _chat(stack, stack.base, extra_body={"mix": mix})
    assert raw.headers["x-adapter-version"] == "0.5*pirate@1+0.5*json@1"
    assert raw.parse().choices[0].message.content == _reference_chat(stack, model=stack.base, mix=mix)
    too_big = [*mix, {"ref": "sql@1", "weight": 1.0}]  # rank 4 + 4 + 4 over the replicas' 8
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(stack, stack.base, extra_body={"mix": too_big})
    assert refused.value.status_code == 409
    error = refused.value.body
    assert error["code"] == "incompatible_adapter" and "rank 12" in error["message"] \
        and "max_lora_rank=8" in error["message"]


def _wait_idle(stack: Stack, timeout: float = 20.0) -> None:
    """Until no request is in flight on the router and no row runs on a live replica."""
    deadline = time.monotonic() + timeout

    def busy() -> bool:
        rows = sum(httpx.get(f"{r.url}/admin/adapters", timeout=10).json()["running_rows"]
                   for r in stack.replicas if r.process.poll() is None)
        return rows > 0 or any(r["in_flight"] for r in stack.state())

    while busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not busy()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_frees_the_replica(stack: Stack, stream: bool) -> None:
    body = {"model": "pirate@1", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            "stream": stream, **LONG}
    url = f"{stack.router.url}/v1/chat/completions"
    if stream:
        with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body, headers=auth("inference")) as reply:
            assert reply.status_code == 200
            assert next(reply.iter_lines()).startswith("data: ")
    else:
        with pytest.raises(httpx.ReadTimeout):  # gives up while the replica decodes
            httpx.post(url, json=body, headers=auth("inference"), timeout=httpx.Timeout(60, read=1.0))
    _wait_idle(stack)


def test_auth_and_errors_are_unchanged(stack: Stack) -> None:
    url = stack.router.url
    body = {"model": "pirate", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    assert_error_shape(httpx.post(f"{url}/v1/chat/completions", json=body), 401, "authentication_error")
    assert_error_shape(httpx.get(f"{url}/admin/replicas", headers=auth("inference")), 403, "permission_error")
    with pytest.raises(openai.AuthenticationError):
        stack.client("not-a-key-0123456789abcdef").models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        _chat(stack, "no-such-adapter")
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    bad = httpx.post(f"{url}/v1/chat/completions", headers=auth("inference"), json={**body, "temperature": -1})
    assert_error_shape(bad, 400, "invalid_request_error")
    too_many = httpx.post(f"{url}/v1/chat/completions", headers=auth("inference"), json={**body, "n": 1000})
    assert_error_shape(too_many, 400)
    ids = {m.id for m in stack.client().models.list().data}
    assert {stack.base, "pirate", "pirate@1", "json@1"} <= ids
    info = httpx.get(f"{url}/admin/info", headers=auth("admin")).json()  # what the TUI asks first
    assert info["base_name"] == stack.base and info["max_model_len"] > 0
    versions = httpx.get(f"{url}/admin/versions", headers=auth("admin")).json()["data"]
    assert {"pirate@1", "json@1"} <= {v["ref"] for v in versions}


def test_a_killed_replica_is_routed_around(stack: Stack) -> None:
    from adapterhub import Hub
    from adapterhub.registry.export import served_name

    name = served_name(Hub(stack.home).resolve("sql@1"))
    _chat(stack, "sql")
    (holder,) = stack.holders(name)
    victim = next(r for r in stack.replicas if r.url == holder)
    expected = _reference_chat(stack, model="sql")
    victim.process.kill()
    victim.process.wait()
    for _ in range(3):  # the first may meet the dead replica: retried on the other one
        raw = _chat(stack, "sql")
        assert raw.headers["x-adapter-version"] == "sql@1"
        assert raw.parse().choices[0].message.content == expected
    state = {r["url"]: r for r in stack.state()}
    assert state[holder]["healthy"] is False
    assert stack.holders(name) == [u for u in state if u != holder]
