"""``POST /v1/compare`` on a real ``adapterhub serve``: each model's answer, whole or streamed,
equals that model's own chat completion (greedy, through the official ``openai`` client);
refusals name the field, and an unknown model is the same 404 as on chat completions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_harness import RunningServer, assert_error_shape, init_home, start_server

MESSAGES = [{"role": "user", "content": "Tell me about the sea"}]
SAMPLING = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path,
           server_loras: dict[str, Path]) -> Iterator[RunningServer]:
    home = init_home(tmp_path_factory.mktemp("compare-home"), tiny_base_dir, server_loras)
    running = start_server(home, tmp_path_factory.mktemp("logs"))
    yield running
    running.stop()
    assert running.shut_down_cleanly(), running.logs()


def own_answers(server: RunningServer, models: list[str]) -> dict[str, str]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answers = {}
    for model in models:
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12, temperature=0.0,
                                               extra_body={"ignore_eos": True})
        answers[model] = reply.choices[0].message.content or ""
    return answers


def test_every_column_equals_the_models_own_answer_whole_and_streamed(server: RunningServer) -> None:
    base = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    models = [base, "pirate", "json@1"]
    expected = own_answers(server, models)
    assert len(set(expected.values())) == 3  # the adapters change the answer: the test can tell columns apart

    whole = httpx.post(f"{server.url}/v1/compare", json={"models": models, "messages": MESSAGES, **SAMPLING},
                       timeout=120)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["object"] == "compare" and [a["model"] for a in body["answers"]] == models
    assert {a["model"]: a["choices"][0]["message"]["content"] for a in body["answers"]} == expected
    assert all(a["usage"]["completion_tokens"] == 12 for a in body["answers"])
    assert whole.headers["x-adapter-version"] == f"{base}, pirate@1, json@1"

    streamed: dict[str, str] = dict.fromkeys(models, "")
    order: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/compare", timeout=120,
                      json={"models": models, "messages": MESSAGES, "stream": True, **SAMPLING}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    for line in lines[:-1]:
        chunk = json.loads(line.removeprefix("data: "))
        order.append(chunk["model"])
        streamed[chunk["model"]] += chunk["choices"][0]["delta"].get("content") or ""
    assert streamed == expected
    firsts = [order.index(m) for m in models]
    lasts = [len(order) - 1 - order[::-1].index(m) for m in models]
    assert max(firsts) < min(lasts)  # every column had begun before any ended: decoded together


def test_refusals_name_the_field_and_unknown_models_are_404(server: RunningServer) -> None:
    twice = httpx.post(f"{server.url}/v1/compare", json={"models": ["pirate", "pirate"], "messages": MESSAGES})
    assert "appear more than once" in assert_error_shape(twice, 400)["message"]
    none = httpx.post(f"{server.url}/v1/compare", json={"models": [], "messages": MESSAGES})
    assert "models" in json.dumps(assert_error_shape(none, 400))
    unknown = httpx.post(f"{server.url}/v1/compare", json={"models": ["pirate", "ghost"], "messages": MESSAGES})
    direct = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "ghost", "messages": MESSAGES})
    assert assert_error_shape(unknown, 404) == assert_error_shape(direct, 404)
    deadline = time.monotonic() + 10  # the column that was opened is cancelled, not left running
    while httpx.get(f"{server.url}/admin/adapters").json()["running_rows"]:
        assert time.monotonic() < deadline, "a refused comparison left a row running"
        time.sleep(0.05)
