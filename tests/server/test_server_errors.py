"""Every error case: its status and OpenAI's error shape, never a traceback, never a fall-back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_harness import assert_error_shape, base_name, chat_body
from test_server_openai import sse_events


def test_unknown_adapter_is_404_naming_it_also_when_streaming(client: TestClient) -> None:
    for stream in (False, True):
        reply = client.post("/v1/chat/completions", json=chat_body("pirat", stream=stream))
        error = assert_error_shape(reply, 404, "not_found_error")
        assert "'pirat'" in error["message"] and "pirate" in error["message"]  # close match offered
        assert error["code"] == "model_not_found" and error["param"] == "model"
    assert_error_shape(client.post("/v1/completions", json={"model": "pirate@9", "prompt": "x"}), 404)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "pirate"}, "messages"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": "pirate", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "tools": []}, "tools"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 1}}, "logit_bias"),
    ({"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 9}, "stop"),
])
def test_invalid_body_is_400_naming_the_field(client: TestClient, body: dict[str, Any], param: str) -> None:
    error = assert_error_shape(client.post("/v1/chat/completions", json=body), 400, "invalid_request_error")
    assert error["param"] is not None and error["param"].startswith(param), error
    assert param.split(".")[0] in error["message"]


@pytest.mark.parametrize(("extra", "named"), [
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice 'auto'"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "'g', which is not in tools"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.json_schema"),
])
def test_tools_and_formats_that_do_not_fit_together_are_400s_that_say_so(
        client: TestClient, extra: dict[str, Any], named: str) -> None:
    body = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], **extra}
    error = assert_error_shape(client.post("/v1/chat/completions", json=body), 400, "invalid_request_error")
    assert named in error["message"], error


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "tool", "content": "14:02"}, "messages.1.tool.tool_call_id"),
    ({"role": "user", "content": "hi", "tool_call_id": "call_1"}, "messages.1.user.tool_call_id"),
    ({"role": "user", "content": "hi", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     "messages.1.user.tool_calls"),
    ({"role": "user", "content": None}, "messages.1.user.content"),
    ({"role": "robot", "content": "hi"}, "messages.1"),
])
def test_messages_whose_fields_do_not_fit_their_role_are_400s(
        client: TestClient, message: dict[str, Any], param: str) -> None:
    body = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}, message]}
    error = assert_error_shape(client.post("/v1/chat/completions", json=body), 400, "invalid_request_error")
    assert error["param"].startswith(param), error


def test_malformed_json_and_wrong_routes(client: TestClient) -> None:
    bad_json = client.post("/v1/chat/completions", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert_error_shape(bad_json, 400)
    assert_error_shape(client.get("/v1/nothing"), 404)
    assert_error_shape(client.get("/v1/chat/completions"), 405)


def test_server_limits_are_400_with_the_limit(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_n=2, max_tokens_limit=16)
    over_n = assert_error_shape(client.post("/v1/chat/completions", json=chat_body("pirate", n=3)), 400)
    assert "max_n=2" in over_n["message"]
    over_tokens = assert_error_shape(
        client.post("/v1/chat/completions", json=chat_body("pirate", max_tokens=17)), 400)
    assert "max_tokens_limit=16" in over_tokens["message"]


def test_prompt_longer_than_context_is_400_with_the_numbers(client: TestClient) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 60
    error = assert_error_shape(client.post("/v1/chat/completions", json=chat_body("pirate", long_text)), 400)
    assert error["code"] == "context_length_exceeded"
    assert "256" in error["message"] and "tokens" in error["message"]
    room = assert_error_shape(
        client.post("/v1/chat/completions", json=chat_body("pirate", max_tokens=250)), 400)
    assert room["code"] == "context_length_exceeded" and "lower max_tokens to at most" in room["message"]


def test_adapter_for_another_base_is_409(client: TestClient, served_home: Path,
                                         server_loras: dict[str, Path]) -> None:
    from adapterhub import Hub

    folder = server_loras["pirate"]
    Hub(served_home).registry.register(
        "alien", {f.name: f for f in folder.iterdir() if f.suffix in (".json", ".safetensors")},
        base_fingerprint="0" * 64, template_hash="1" * 64, method="sft",
    )
    error = assert_error_shape(client.post("/v1/chat/completions", json=chat_body("alien")), 409)
    assert error["code"] == "incompatible_adapter" and "alien@1" in error["message"]


def test_full_queue_is_429_with_retry_after(make_client: Callable[..., TestClient]) -> None:
    # one row, no queue: with one long request running, the next is over capacity (a free row
    # is used, not refused: tests/engine/test_engine_capacity.py)
    client = make_client(engine={"max_rows": 1, "max_queue": 0, "max_seq_len": 100_000},
                         max_tokens_limit=100_000)
    service = client.app.state.service  # type: ignore[attr-defined]
    held = threading.Thread(target=lambda: client.post("/v1/chat/completions", json=chat_body(
        "pirate", max_tokens=50_000, ignore_eos=True, stream=True)))
    held.start()
    deadline = time.monotonic() + 60
    while service.engine.stats().running_rows == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    reply = client.post("/v1/chat/completions", json=chat_body("pirate"))
    assert_error_shape(reply, 429, "rate_limit_error")
    assert int(reply.headers["retry-after"]) >= 1
    service.engine.close()  # ends the long request
    held.join(60)


def test_not_ready_is_503_and_ready_says_why(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    empty = tmp_path / "empty-home"
    client = make_client(home=empty)  # no base: the background load fails
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "adapterhub init" in ready.json()["error"]
    reply = client.post("/v1/chat/completions", json=chat_body("pirate"))
    error = assert_error_shape(reply, 503, "service_unavailable")
    assert error["code"] == "not_ready" and reply.headers["retry-after"]
    assert client.get("/health").status_code == 200  # alive, just not ready


def test_body_over_the_limit_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=1024)
    reply = client.post("/v1/chat/completions", json=chat_body("pirate", "x" * 2000))
    error = assert_error_shape(reply, 413)
    assert "max_body_bytes=1024" in error["message"]
    assert client.post("/v1/chat/completions", json=chat_body("pirate")).status_code == 200


def test_unexpected_error_is_500_without_internals(client: TestClient) -> None:
    from adapterhub_server.deps import get_service

    def broken() -> None:
        raise RuntimeError("secret internal detail")

    client.app.dependency_overrides[get_service] = broken  # type: ignore[attr-defined]
    reply = client.post("/v1/chat/completions", json=chat_body("pirate"))
    error = assert_error_shape(reply, 500, "server_error")
    assert "secret" not in reply.text and "RuntimeError" not in reply.text
    assert "request" in error["message"]  # an id to find the traceback in the log


def test_error_after_the_stream_started_is_an_sse_event(make_client: Callable[..., TestClient]) -> None:
    client = make_client(engine={"max_seq_len": 100_000}, max_tokens_limit=100_000)
    service = client.app.state.service  # type: ignore[attr-defined]
    body = chat_body("pirate", max_tokens=50_000, ignore_eos=True, stream=True)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        reply=client.post("/v1/chat/completions", json=body)))
    thread.start()
    deadline = time.monotonic() + 60
    while service.engine.stats().running_rows == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    service.engine.close()  # what a shutdown does to a row mid-stream
    thread.join(60)
    reply = result["reply"]
    assert reply.status_code == 200
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "service_unavailable" and "closed" in error["message"]


def test_mix_needs_the_base_as_model(client: TestClient) -> None:
    body = chat_body("pirate", mix=[{"ref": "json", "weight": 1.0}])
    error = assert_error_shape(client.post("/v1/chat/completions", json=body), 400)
    assert base_name(client) in error["message"]
