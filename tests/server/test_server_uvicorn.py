"""A real ``adapterhub serve`` process on 127.0.0.1, driven by the official ``openai`` client and
raw httpx: streaming, load, disconnects, per-key budget, hot registration, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_harness import (
    ADMIN_KEY,
    INFERENCE_KEY,
    RunningServer,
    assert_error_shape,
    auth,
    chat_body,
    start_server,
)

LONG = {"max_tokens": 50_000, "ignore_eos": True}  # runs for minutes unless cancelled
LONG_ENV = {"ADAPTERHUB_ENGINE__MAX_SEQ_LEN": "100000", "ADAPTERHUB_MAX_TOKENS_LIMIT": "100000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path,
           server_loras: dict[str, Path]) -> Iterator[RunningServer]:
    """One open (no keys) server for the module."""
    from adapterhub import Hub

    home = tmp_path_factory.mktemp("uvicorn-home")
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for name, folder in server_loras.items():
        hub.import_adapter(folder, name)
    running = start_server(home, tmp_path_factory.mktemp("logs"), env=LONG_ENV)
    yield running
    running.stop()
    assert running.shut_down_cleanly(), running.logs()


def client_for(server: RunningServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def base_of(server: RunningServer) -> str:
    return str(client_for(server).models.list().data[0].id)


def running_rows(server: RunningServer) -> int:
    return int(httpx.get(f"{server.url}/admin/adapters", timeout=10).json()["running_rows"])


def wait_rows(server: RunningServer, predicate: Any, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    rows = running_rows(server)
    while not predicate(rows) and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = running_rows(server)
    return rows


def test_openai_client_chat_completion_stream_and_models(server: RunningServer) -> None:
    client = client_for(server)
    models = client.models.list()
    base = models.data[0].id
    assert {"pirate", "pirate@1", "json", "json@1"} <= {m.id for m in models.data}
    chat = client.chat.completions.with_raw_response.create(
        model="pirate", messages=[{"role": "user", "content": "What is two plus two?"}],
        max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert chat.headers["x-adapter-version"] == "pirate@1"
    answer = chat.parse()
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8
    text = client.completions.create(model=base, prompt="hello world", max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert text.usage.completion_tokens == 6 and text.choices[0].text
    stream = client.chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": "What is two plus two?"}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_openai_client_reads_logprobs_whole_and_streamed(server: RunningServer) -> None:
    """Chat ``logprobs`` + ``top_logprobs`` and completions ``logprobs`` in OpenAI's shapes: the
    chosen token first among its alternatives under greedy, each token's text the completion's,
    the same numbers streamed as whole; a penalty and a bias reach the engine."""
    import math

    client = client_for(server)
    ask = {"model": "pirate", "messages": [{"role": "user", "content": "What is two plus two?"}],
           "max_tokens": 6, "temperature": 0, "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    # a token holding part of a character decodes alone to U+FFFD, as vLLM shows it; the text waits for the rest
    assert len(content) == 6
    assert "".join(t.token for t in content).replace("\ufffd", "") == whole.choices[0].message.content.replace("\ufffd", "")
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob
        assert bytes(token.bytes).decode() == token.token
    streamed = [c.choices[0].logprobs.content for c in client.chat.completions.create(**ask, logprobs=True,
                top_logprobs=3, stream=True) if c.choices and c.choices[0].logprobs]
    assert [t.logprob for part in streamed for t in part] == pytest.approx([t.logprob for t in content], abs=1e-6)
    assert client.chat.completions.create(**ask).choices[0].logprobs is None

    text = client.completions.create(model="pirate", prompt="hello world", max_tokens=5, temperature=0,
                                     logprobs=2, extra_body={"ignore_eos": True})
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens).replace("\ufffd", "") == text.choices[0].text.replace("\ufffd", "")
    assert len(lp.token_logprobs) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 and math.isclose(max(top.values()), v, abs_tol=1e-6)
               for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))

    first = content[0].token
    banned = {str(i): -100 for i in token_ids_of(server, first)}
    biased = client.chat.completions.create(**{**ask, "extra_body": {"ignore_eos": True, "repetition_penalty": 1.5}},
                                            logit_bias=banned, presence_penalty=0.5, logprobs=True)
    assert biased.choices[0].logprobs.content[0].token != first


def test_echo_scores_the_prompt_as_lm_eval_asks(server: RunningServer, tiny_base_dir: Path,
                                                server_loras: dict[str, Path]) -> None:
    """lm-evaluation-harness's log-likelihood request, ``echo`` + ``max_tokens=0`` + ``logprobs=1``:
    the prompt comes back scored token by token as PEFT scores it with the same adapter."""
    import torch
    from tinymodels import PeftReference

    from adapterhub import Hub

    client = client_for(server)
    ids = Hub(server.home).base.tokenizer("hello world the quick brown fox")["input_ids"]
    answer = client.completions.create(model="pirate", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and answer.usage.completion_tokens == 0
    assert choice.text == "hello world the quick brown fox"
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    reference = PeftReference(tiny_base_dir, {"pirate": server_loras["pirate"]})
    expected = [float(torch.log_softmax(reference.logits(ids[:i], "pirate"), dim=-1)[ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    with_text = client.completions.create(model="pirate", prompt="hello", max_tokens=2, echo=True, temperature=0)
    assert with_text.choices[0].text.startswith("hello") and with_text.choices[0].logprobs is None


def test_response_format_json_schema_and_json_object(server: RunningServer) -> None:
    """Structured output through the official client: n choices, each valid against the schema;
    json_object gives an object; a schema llguidance cannot compile is a 400 that says why."""
    import jsonschema

    client = client_for(server)
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "stormy"]}, "knots": {"type": "boolean"}},
              "required": ["mood", "knots"], "additionalProperties": False}
    ask = {"model": "pirate", "messages": [{"role": "user", "content": "How is the sea?"}], "max_tokens": 60}
    answer = client.chat.completions.create(
        **ask, n=3, temperature=1.0, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "sea", "schema": schema, "strict": True}})
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)
    anything = client.chat.completions.create(**{**ask, "max_tokens": 4}, temperature=0,
                                              response_format={"type": "json_object"})
    assert anything.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError, match="bogus"):
        client.chat.completions.create(**ask, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "bogus"}}})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "celsius": {"type": "boolean"}},
                   "required": ["city", "celsius"], "additionalProperties": False}}}
TIDE = {"type": "function", "function": {
    "name": "get_tide", "parameters": {"type": "object", "properties": {"port": {"enum": ["Brest", "Dover"]}},
                                       "required": ["port"], "additionalProperties": False}}}


def test_tool_choice_required_and_named_answer_with_tool_calls(server: RunningServer) -> None:
    """tools + tool_choice through the official client: ``required`` gives one call or more,
    each of a listed function with arguments valid for its schema, finish ``tool_calls``; a named
    function gives a call of it (finish ``stop``), streamed too; ``auto`` is refused and says why."""
    import jsonschema

    client = client_for(server)
    ask = {"model": "pirate", "messages": [{"role": "user", "content": "Weather or tide?"}], "max_tokens": 80,
           "tools": [WEATHER, TIDE]}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIDE)}
    required = client.chat.completions.create(**ask, tool_choice="required", temperature=0)
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    single = client.chat.completions.create(**ask, tool_choice="required", parallel_tool_calls=False, temperature=0)
    assert len(single.choices[0].message.tool_calls) == 1

    named = {"type": "function", "function": {"name": "get_tide"}}
    answer = client.chat.completions.create(**ask, tool_choice=named, temperature=0)
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "get_tide" and answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(call.function.arguments), schemas["get_tide"])
    streamed = [c.choices[0] for c in client.chat.completions.create(**ask, tool_choice=named, temperature=0, stream=True)
                if c.choices]
    calls = [d for c in streamed if c.delta.tool_calls for d in c.delta.tool_calls]
    assert [(d.function.name, d.function.arguments) for d in calls] == [("get_tide", call.function.arguments)]
    assert streamed[-1].finish_reason == "stop"

    # The call's result goes back as clients send it: the assistant message object itself, then
    # a tool message answering its call; the conversation goes on.
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"high_tide": "14:02"}'}
    follow = client.chat.completions.create(
        model="pirate", messages=[*ask["messages"], answer.choices[0].message, result], max_tokens=8,
        temperature=0)
    assert follow.choices[0].message.content is not None and follow.usage.prompt_tokens > 10

    with pytest.raises(openai.BadRequestError, match="tool_choice 'auto'"):
        client.chat.completions.create(**ask)


def token_ids_of(server: RunningServer, text: str) -> list[int]:
    """Every token id of the served base that decodes to ``text`` alone."""
    from transformers import AutoTokenizer

    from adapterhub import Hub

    tokenizer = AutoTokenizer.from_pretrained(Hub(server.home).base_info.path)
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == text]


def test_64_concurrent_streams_complete_without_5xx(server: RunningServer) -> None:
    base = base_of(server)
    models = [base, "pirate", "json", "pirate@1"]

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str | None, int]:
        stream = await client.chat.completions.create(
            model=models[i % len(models)], messages=[{"role": "user", "content": f"count to {i}"}],
            max_tokens=16, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        finish, tokens = None, 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return finish, tokens

    async def run() -> list[tuple[str | None, int]]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run())
    assert results == [("length", 16)] * 64
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'code="5' not in metrics and "outcome=\"error\"" not in metrics
    assert wait_rows(server, lambda rows: rows == 0) == 0


def test_disconnect_mid_stream_cancels_the_row(server: RunningServer) -> None:
    body = chat_body("pirate", stream=True, **LONG)
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{server.url}/v1/chat/completions",
                                                        json=body) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        assert running_rows(server) == 1
    # the connection is closed: the row must be freed long before 50,000 tokens
    assert wait_rows(server, lambda rows: rows == 0) == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'adapterhub_requests_total{adapter="pirate@1",endpoint="chat",outcome="cancelled"}' in metrics


def test_disconnect_while_waiting_for_a_whole_answer_cancels_it(server: RunningServer) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={"model": "json", "prompt": "hi", **LONG}, timeout=1.5)
    assert wait_rows(server, lambda rows: rows == 0) == 0


def test_version_registered_after_start_is_served(server: RunningServer, tiny_base_dir: Path,
                                                  tmp_path: Path, make_lora: Any) -> None:
    folder = make_lora(tiny_base_dir, tmp_path / "fresh", seed=9)
    subprocess.run([sys.executable, "-m", "adapterhub.cli", "import", str(folder), "--name", "fresh",
                    "--home", str(server.home)], check=True, capture_output=True, timeout=300)
    reply = client_for(server).chat.completions.with_raw_response.create(
        model="fresh", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.headers["x-adapter-version"] == "fresh@1"
    assert "fresh@1" in {m.id for m in client_for(server).models.list().data}


def test_keys_budget_and_refusal_to_bind_open(tiny_base_dir: Path, server_loras: dict[str, Path],
                                               tmp_path: Path) -> None:
    from adapterhub import Hub

    home = tmp_path / "keyed-home"
    Hub(home).init(str(tiny_base_dir), precision="fp32")
    Hub(home).import_adapter(server_loras["pirate"], "pirate")
    refused = subprocess.run([sys.executable, "-m", "adapterhub.cli", "serve", "--home", str(home),
                              "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "API key" in refused.stderr and "Traceback" not in refused.stderr
    keyed = start_server(home, tmp_path, env={**LONG_ENV, "ADAPTERHUB_API_KEYS": INFERENCE_KEY,
                                              "ADAPTERHUB_ADMIN_KEYS": ADMIN_KEY,
                                              "ADAPTERHUB_MAX_STREAMS_PER_KEY": "1"})
    try:
        with pytest.raises(openai.AuthenticationError):
            client_for(keyed, "wrong-key-0123456789abcdef").models.list()
        assert_error_shape(httpx.get(f"{keyed.url}/admin/adapters", headers=auth("inference")), 403)
        body = chat_body("pirate", stream=True, **LONG)
        with httpx.Client(timeout=30) as http, http.stream(
                "POST", f"{keyed.url}/v1/chat/completions", json=body, headers=auth("inference")) as held:
            assert held.status_code == 200
            second = httpx.post(f"{keyed.url}/v1/chat/completions", json=chat_body("pirate"),
                                headers=auth("inference"), timeout=30)
            error = assert_error_shape(second, 429, "rate_limit_error")
            assert "max_streams_per_key=1" in error["message"] and second.headers["retry-after"]
            other_key = httpx.post(f"{keyed.url}/v1/chat/completions", json=chat_body("pirate"),
                                   headers=auth("admin"), timeout=30)
            assert other_key.status_code == 200  # the budget is per key
        after = httpx.post(f"{keyed.url}/v1/chat/completions", json=chat_body("pirate"),
                           headers=auth("inference"), timeout=30)
        assert after.status_code == 200  # released when the stream closed
    finally:
        keyed.stop()
    assert keyed.shut_down_cleanly(), keyed.logs()


def test_graceful_shutdown_finishes_short_requests_and_cancels_long_ones(
    tiny_base_dir: Path, tmp_path: Path
) -> None:
    from adapterhub import Hub

    home = tmp_path / "shutdown-home"
    Hub(home).init(str(tiny_base_dir), precision="fp32")
    running = start_server(home, tmp_path, env={**LONG_ENV, "ADAPTERHUB_SHUTDOWN_GRACE_S": "10"})
    base = base_of(running)
    short: dict[str, Any] = {}

    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{running.url}/v1/chat/completions", json=chat_body(base, stream=True, **LONG)) as long:
        lines = long.iter_lines()
        assert next(lines).startswith("data: ")
        thread = threading.Thread(target=lambda: short.update(reply=httpx.post(
            f"{running.url}/v1/completions", timeout=60,
            json={"model": base, "prompt": "hi", "max_tokens": 150, "ignore_eos": True})))
        thread.start()
        assert wait_rows(running, lambda rows: rows == 2) == 2
        running.process.send_signal(signal.SIGTERM)
        thread.join(60)
        reply = short["reply"]
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 150
        rest = [line for line in lines if line]  # ends just before the grace period is over
        assert rest[-1] == "data: [DONE]"  # cancelled, but cleanly: a whole SSE stream
        assert json.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "cancelled"
    running.process.wait(60)
    assert running.shut_down_cleanly(), running.logs()
