"""Server hardening: what the fuzzer found, bounds that settings promise, keys compared in
constant time, adapter input safety on the load routes, and an OpenAPI schema that tells the truth
(every answer below is also validated against ``/openapi.json`` by schemathesis).

The auth matrix over every route is in ``test_server_auth.py``; the refusal to bind a
non-loopback address without keys in ``test_server_settings.py`` and ``test_server_uvicorn.py``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from server_harness import ADMIN_KEY, INFERENCE_KEY, assert_error_shape, auth, chat_body

from adapterhub_server.auth import KeyTable
from adapterhub_server.settings import ApiKey


def conforms(client: TestClient, response: Any, method: str, path: str) -> None:
    """``response`` (from ``client``) matches what ``/openapi.json`` documents for the operation:
    a documented status, content type, headers and body schema."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operation = schema[path][method]
    case = operation.Case()
    checks = [schemathesis.checks.status_code_conformance, schemathesis.checks.content_type_conformance,
              schemathesis.checks.response_schema_conformance, schemathesis.checks.response_headers_conformance]
    case.validate_response(response, checks=checks)


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=INFERENCE_KEY, admin_keys=ADMIN_KEY)


# ---------------------------------------------------------------------------- found by fuzzing


@pytest.mark.parametrize("model", ["pirate@\u00b2", "pirate@99999999999999999999999", "pirate@\u0663"])
def test_odd_version_numbers_are_4xx_not_500(client: TestClient, model: str) -> None:
    """``'²'.isdigit()`` is True but ``int('²')`` raises, and a version past SQLite's integers
    overflowed: both were 500s."""
    for route, body in (("/v1/chat/completions", chat_body(model)),
                        ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2})):
        reply = client.post(route, json=body)
        assert 400 <= reply.status_code < 500, reply.text
        assert_error_shape(reply, reply.status_code)
    assert_error_shape(client.get(f"/admin/versions/{model}"), 400)


def test_metrics_documents_its_401(keyed: TestClient) -> None:
    reply = keyed.get("/metrics")
    assert_error_shape(reply, 401)
    conforms(keyed, reply, "GET", "/metrics")


def test_vllm_routes_document_json_errors(keyed: TestClient) -> None:
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        reply = keyed.post(path, json={"lora_name": "nobody"}, headers=auth("admin"))
        assert_error_shape(reply, 404)
        conforms(keyed, reply, "POST", path)


@pytest.mark.parametrize(("route", "field", "value"), [
    ("/v1/chat/completions", "stop", ""),
    ("/v1/chat/completions", "top_logprobs", 21),
    ("/v1/chat/completions", "frequency_penalty", 2.5),
    ("/v1/chat/completions", "presence_penalty", -3.0),
    ("/v1/completions", "logprobs", 6),
    ("/v1/completions", "max_tokens", -1),
])
def test_schema_does_not_offer_values_the_server_refuses(client: TestClient, route: str, field: str,
                                                         value: Any) -> None:
    """Single-field rules live in the schema, so a client generated from it cannot send them."""
    import jsonschema_rs  # schemathesis' own JSON Schema validator

    spec = client.get("/openapi.json").json()
    ref = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = jsonschema_rs.validator_for({"$ref": ref, "components": spec["components"]})
    body = chat_body("pirate") if "chat" in route else {"model": "pirate", "prompt": "hi"}
    assert request_schema.is_valid(body)
    assert not request_schema.is_valid({**body, field: value}), f"the schema offers {field}={value!r}"
    error = assert_error_shape(client.post(route, json={**body, field: value}), 400)
    assert error["param"] == field and field in error["message"]


# ---------------------------------------------------------------------------- bounds


def test_max_prompt_tokens_bounds_prompts_inside_the_context(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_prompt_tokens=8)
    error = assert_error_shape(client.post("/v1/completions", json={
        "model": "pirate", "prompt": list(range(1, 10)), "max_tokens": 2}), 400)
    assert error["code"] == "context_length_exceeded" and "max_prompt_tokens=8" in error["message"]
    ok = client.post("/v1/completions", json={"model": "pirate", "prompt": list(range(1, 9)), "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_prompts_per_request_are_bounded(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_prompts_per_request=2)
    error = assert_error_shape(client.post("/v1/completions", json={
        "model": "pirate", "prompt": ["a", "b", "c"], "max_tokens": 2}), 400)
    assert "max_prompts_per_request=2" in error["message"]


def test_key_table_compares_every_key_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time by construction: every presented key is compared (with
    ``hmac.compare_digest``, on equal-length digests) against every configured key, whether it
    matches the first, the last or none — so neither position nor prefix shows in the timing."""
    keys = tuple(ApiKey(f"k{i}", f"key-number-{i}-0123456789abcdef", "inference") for i in range(5))
    table = KeyTable(keys)
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (keys[0].secret, keys[-1].secret, "nope", "x" * 400, keys[0].secret[:-1]):
        calls.clear()
        table.authenticate(presented)
        assert len(calls) == len(keys), presented
        assert set(calls) == {(32, 32)}  # digests, so the secret's length does not show either


# ---------------------------------------------------------------------------- adapter input safety


@pytest.fixture
def pickled_lora(server_loras: dict[str, Path], tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    source = server_loras["pirate"]
    (folder / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    torch.save(load_file(source / "adapter_model.safetensors"), folder / "adapter_model.bin")
    return folder


def test_load_route_refuses_pickles(keyed: TestClient, pickled_lora: Path) -> None:
    reply = keyed.post("/v1/load_lora_adapter", headers=auth("admin"),
                       json={"lora_name": "pickled", "lora_path": str(pickled_lora)})
    error = assert_error_shape(reply, 422)
    assert error["code"] == "unsafe_adapter" and "adapter_model.bin" in error["message"]
    conforms(keyed, reply, "POST", "/v1/load_lora_adapter")
    assert "pickled" not in {m["id"] for m in keyed.get("/v1/models", headers=auth("admin")).json()["data"]}


@pytest.mark.parametrize("name", ["../evil", "a/b", "http://x.example/y", "a;rm -rf ~", "$(id)", "a\nb",
                                  "pirate\n", "`id`", "a b", "~root"])
def test_load_and_registry_routes_refuse_path_url_and_shell_names(
        keyed: TestClient, server_loras: dict[str, Path], name: str) -> None:
    admin = auth("admin")
    imported = keyed.post("/v1/load_lora_adapter", headers=admin,
                          json={"lora_name": name, "lora_path": str(server_loras["json"])})
    assert_error_shape(imported, 400)
    tagged = keyed.post("/admin/versions/json@1/tag", json={"alias": name}, headers=admin)
    assert_error_shape(tagged, 400)
    versions = keyed.get("/admin/versions", headers=admin).json()["data"]
    assert {v["name"] for v in versions} == {"pirate", "json"}
    assert not any(v["aliases"] for v in versions)
    if name.strip() != name:
        return  # a ref is stripped before parsing ("pirate\n" is pirate), a name never is
    for path, body in (("/v1/load_lora_adapter", {"lora_name": name}),
                       ("/admin/adapters/load", {"ref": name}),
                       ("/admin/adapters/pin", {"ref": name}),
                       ("/admin/adapters/unload", {"ref": name})):
        reply = keyed.post(path, json=body, headers=admin)
        assert reply.status_code in (400, 404), (path, reply.text)
        assert_error_shape(reply, reply.status_code)
    chat = keyed.post("/v1/chat/completions", json=chat_body(name), headers=admin)
    assert chat.status_code in (400, 404), chat.text


def test_load_route_wants_an_absolute_path(keyed: TestClient, server_loras: dict[str, Path]) -> None:
    relative = keyed.post("/v1/load_lora_adapter", headers=auth("admin"),
                          json={"lora_name": "rel", "lora_path": "some/relative/dir"})
    assert "absolute" in assert_error_shape(relative, 400)["message"]


def test_chunked_body_without_length_is_cut_at_the_limit(make_client: Callable[..., TestClient]) -> None:
    """No Content-Length to trust: the body limit counts the bytes as they arrive."""
    client = make_client(max_body_bytes=1024)

    def chunks() -> Any:
        yield b'{"model": "pirate", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"x" * 64
        yield b'"}]}'

    reply = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "max_body_bytes=1024" in assert_error_shape(reply, 413)["message"]


def test_error_inside_a_stream_shows_no_internals(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    real_rows = service.rows

    async def broken_rows(opened: Any) -> Any:
        async for item in real_rows(opened):
            yield item
            raise RuntimeError("secret internal detail at /srv/adapterhub/engine.py:123")

    monkeypatch.setattr(service, "rows", broken_rows)
    reply = client.post("/v1/chat/completions", json=chat_body("pirate", stream=True))
    assert reply.status_code == 200  # the stream had started
    assert "secret" not in reply.text and "Traceback" not in reply.text and "/srv" not in reply.text
    events = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "internal_error" and "request" in error["message"]


def test_adapter_over_the_rank_limit_is_refused_with_the_limit(make_client: Callable[..., TestClient]) -> None:
    client = make_client(engine={"max_lora_rank": 2})  # the test adapters have r=4
    for reply in (client.post("/v1/chat/completions", json=chat_body("pirate")),
                  client.post("/admin/adapters/load", json={"ref": "pirate"})):
        error = assert_error_shape(reply, 409)
        assert error["code"] == "incompatible_adapter" and "max_lora_rank" in error["message"], error
