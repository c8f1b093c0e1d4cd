"""The OpenAI-compatible routes in-process (TestClient inside ``with``: the lifespan runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from server_harness import base_name, chat_body


def sse_events(text: str) -> list[Any]:
    """The JSON of every ``data:`` event, and the literal ``[DONE]``."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_adapter_changes_the_answer_and_names_its_version(client: TestClient) -> None:
    base = base_name(client)
    body = chat_body(base, max_tokens=12, ignore_eos=True)
    base_reply = client.post("/v1/chat/completions", json=body)
    adapter_reply = client.post("/v1/chat/completions", json={**body, "model": "pirate"})
    assert base_reply.status_code == adapter_reply.status_code == 200
    assert base_reply.headers["x-adapter-version"] == base
    assert adapter_reply.headers["x-adapter-version"] == "pirate@1"
    a, b = base_reply.json(), adapter_reply.json()
    assert a["object"] == "chat.completion" and a["model"] == base and b["model"] == "pirate"
    assert a["choices"][0]["message"]["content"] != b["choices"][0]["message"]["content"]
    assert b["usage"]["completion_tokens"] == 12  # ignore_eos: exactly max_tokens
    assert b["usage"]["total_tokens"] == b["usage"]["prompt_tokens"] + 12
    assert b["choices"][0]["finish_reason"] == "length"


def test_stream_matches_whole_answer_and_ends_with_usage_then_done(client: TestClient) -> None:
    body = chat_body("pirate", max_tokens=10, ignore_eos=True)
    whole = client.post("/v1/chat/completions", json=body).json()
    streamed = client.post("/v1/chat/completions",
                           json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-adapter-version"] == "pirate@1"
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    usage_event, chunks = events[-2], events[:-2]
    assert usage_event["choices"] == [] and usage_event["usage"] == whole["usage"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_batch_of_prompts_times_n_with_seeds(client: TestClient) -> None:
    body = {"model": "json", "prompt": ["hello world", "the quick brown fox"], "n": 2,
            "max_tokens": 6, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    first = client.post("/v1/completions", json=body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["object"] == "text_completion"
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert data["usage"]["completion_tokens"] == 4 * 6
    again = client.post("/v1/completions", json=body).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in data["choices"]]  # seeded
    token_ids = client.post("/v1/completions", json={**body, "prompt": [5, 6, 7, 8], "n": 1})
    assert token_ids.status_code == 200 and len(token_ids.json()["choices"]) == 1


def test_stop_string_cuts_the_answer(client: TestClient) -> None:
    body = chat_body("pirate", max_tokens=16, ignore_eos=True)
    text = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    stop = text[3:5]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    stopped = client.post("/v1/chat/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["message"]["content"] == text[: text.index(stop)]


def test_adapter_id_alias_and_request_time_mix(client: TestClient) -> None:
    base = base_name(client)
    body = chat_body("pirate", max_tokens=8, ignore_eos=True)
    pirate = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    alias = client.post("/v1/chat/completions", json={**body, "model": base, "adapter_id": "pirate"})
    assert alias.headers["x-adapter-version"] == "pirate@1"
    assert alias.json()["choices"][0]["message"]["content"] == pirate
    mix = {**body, "model": base, "mix": [{"ref": "pirate", "weight": 1.0}, {"ref": "json", "weight": 0.0}]}
    mixed = client.post("/v1/chat/completions", json=mix)
    assert mixed.status_code == 200, mixed.text
    assert "pirate@1" in mixed.headers["x-adapter-version"] and "json@1" in mixed.headers["x-adapter-version"]
    assert mixed.json()["choices"][0]["message"]["content"] == pirate  # weights (1, 0) = pirate alone


def test_models_lists_base_and_every_version(client: TestClient, served_home: Path) -> None:
    from adapterhub import Hub

    Hub(served_home).tag("pirate@1", "prod")
    data = client.get("/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    base = data[0]["id"]
    assert by_id[base]["parent"] is None and by_id[base]["max_model_len"] == 256
    for ident in ("pirate", "pirate@1", "json", "json@1"):
        assert by_id[ident]["parent"] == base and by_id[ident]["root"] == base
    assert by_id["pirate"]["version"] == "pirate@1" and by_id["pirate@1"]["aliases"] == ["prod"]
    assert client.post("/v1/chat/completions", json=chat_body("pirate:prod")).headers[
        "x-adapter-version"] == "pirate@1"


def test_version_registered_by_another_process_is_served(
    client: TestClient, served_home: Path, tiny_base_dir: Path, tmp_path: Path, make_lora: Any
) -> None:
    body = chat_body("pirate", max_tokens=8, ignore_eos=True)
    before = client.post("/v1/chat/completions", json=body)
    assert before.headers["x-adapter-version"] == "pirate@1"
    folder = make_lora(tiny_base_dir, tmp_path / "pirate2", seed=42)
    subprocess.run([sys.executable, "-m", "adapterhub.cli", "import", str(folder), "--name", "pirate",
                    "--home", str(served_home)], check=True, capture_output=True, timeout=300)
    after = client.post("/v1/chat/completions", json=body)
    assert after.status_code == 200 and after.headers["x-adapter-version"] == "pirate@2"
    assert after.json()["choices"][0]["message"]["content"] != before.json()["choices"][0]["message"]["content"]
    pinned = client.post("/v1/chat/completions", json={**body, "model": "pirate@1"})
    assert pinned.json()["choices"][0]["message"]["content"] == before.json()["choices"][0]["message"]["content"]
    assert "pirate@2" in {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_admin_load_pin_list_unload(client: TestClient) -> None:
    loaded = client.post("/admin/adapters/load", json={"ref": "json", "pin": True})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["ref"] == "json@1" and loaded.json()["pinned"] is True
    state = client.get("/admin/adapters").json()
    assert state["max_slots"] == 8 and state["running_rows"] == 0
    assert {r["ref"]: r["pinned"] for r in state["resident"]}["json@1"] is True
    assert client.post("/admin/adapters/pin", json={"ref": "json", "pinned": False}).json()["pinned"] is False
    assert client.post("/admin/adapters/unload", json={"ref": "json@1"}).json() == {"ref": "json@1", "unloaded": True}
    assert "json@1" not in {r["ref"] for r in client.get("/admin/adapters").json()["resident"]}
    # vLLM's shapes
    vllm = client.post("/v1/load_lora_adapter", json={"lora_name": "pirate"})
    assert vllm.status_code == 200 and vllm.text.startswith("Success")
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"}).status_code == 200
    again = client.post("/v1/unload_lora_adapter", json={"lora_name": "pirate"})
    assert again.status_code == 404


def test_vllm_load_with_path_imports_a_new_version(client: TestClient, tiny_base_dir: Path,
                                                    tmp_path: Path, make_lora: Any) -> None:
    folder = make_lora(tiny_base_dir, tmp_path / "sql", seed=5)
    reply = client.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": str(folder)})
    assert reply.status_code == 200, reply.text
    served = client.post("/v1/chat/completions", json=chat_body("sql"))
    assert served.status_code == 200 and served.headers["x-adapter-version"] == "sql@1"
    relative = client.post("/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": "sql"})
    assert relative.status_code == 400


def test_vllm_load_of_the_same_folder_again_reuses_its_version(
        client: TestClient, tiny_base_dir: Path, tmp_path: Path, make_lora: Any) -> None:
    """A router loads a digest name again after unloading it for room: same files, same version."""
    folder = make_lora(tiny_base_dir, tmp_path / "sql", seed=5)
    other = make_lora(tiny_base_dir, tmp_path / "sql2", seed=6)
    for path in (folder, folder, other, folder):
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "sql.v1-0123abcd", "lora_path": str(path)})
        assert loaded.status_code == 200, loaded.text
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "sql.v1-0123abcd"}).status_code == 200
    versions = [v["ref"] for v in client.get("/admin/versions").json()["data"] if v["name"] == "sql.v1-0123abcd"]
    # other files make a version of their own, and the name means the latest load's weights
    assert versions == ["sql.v1-0123abcd@1", "sql.v1-0123abcd@2", "sql.v1-0123abcd@3"]


def test_registry_routes_for_the_tui(client: TestClient) -> None:
    from adapterhub.protocol import VersionInfo, VersionList

    versions = VersionList.model_validate(client.get("/admin/versions").json()).data
    assert sorted(v.ref for v in versions) == ["json@1", "pirate@1"]
    assert {v.to_version().ref for v in versions} == {"json@1", "pirate@1"}
    tagged = VersionInfo.model_validate(client.post("/admin/versions/pirate@1/tag", json={"alias": "prod"}).json())
    assert tagged.aliases == ["prod"]
    assert client.get("/admin/versions/pirate:prod").json()["ref"] == "pirate@1"
    assert [v["ref"] for v in client.get("/admin/versions/pirate@1/lineage").json()["data"]] == ["pirate@1"]
    assert client.get("/admin/versions/pirate@1/step_log").json() == []
    assert client.delete("/admin/versions/json@1").json() == {"deleted": ["json@1"]}
    assert client.get("/admin/versions/json@1").status_code == 404
    info = client.get("/admin/info").json()
    assert info["precision"] == "fp32" and info["max_model_len"] == 256


def test_step_log_route_answers_the_recorded_events_and_skips_broken_lines(
    client: TestClient, served_home: Path, server_loras: dict[str, Path], tmp_path: Path
) -> None:
    from adapterhub import Hub
    from adapterhub.core.progress import STEP_LOG, ProgressEvent

    events = [ProgressEvent("start", total_steps=2), ProgressEvent("done", step=2, total_steps=2, loss=0.5)]
    log = tmp_path / STEP_LOG
    log.write_text("\n".join([json.dumps(events[0].to_dict()), "{cut short", "[1]",
                               json.dumps(events[1].to_dict())]))
    hub = Hub(served_home)
    pirate = hub.resolve("pirate@1")
    files = {f.name: f for f in server_loras["pirate"].iterdir() if f.suffix in (".json", ".safetensors")}
    hub.registry.register("logged", {**files, STEP_LOG: log}, base_fingerprint=pirate.base_fingerprint,
                          template_hash=pirate.template_hash, method="sft")
    answered = client.get("/admin/versions/logged@1/step_log").json()
    assert [ProgressEvent.from_dict(e) for e in answered] == events == hub.step_log("logged")


def test_recorded_evaluations_show_in_models_and_versions_and_gate_the_tag_route(
    client: TestClient, served_home: Path
) -> None:
    from adapterhub.registry import Evaluation, Registry

    Registry(served_home).record_evaluations(
        [Evaluation("pirate", 1, "adapterhub_capitals", "acc", 0.5, stderr=0.15, samples=12)])
    by_id = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert by_id["pirate"]["evaluations"] == by_id["pirate@1"]["evaluations"] == {"adapterhub_capitals:acc": 0.5}
    assert by_id["json@1"]["evaluations"] == {}
    (shown,) = client.get("/admin/versions/pirate@1").json()["evaluations"]
    assert (shown["task"], shown["metric"], shown["value"], shown["samples"]) == ("adapterhub_capitals", "acc", 0.5, 12)

    refused = client.post("/admin/versions/pirate@1/tag", json={"alias": "prod", "gates": ["adapterhub_capitals:acc>0.6"]})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_failed"
    assert "pirate@1 has 0.5, bound 0.6: fails" in refused.json()["error"]["message"]
    missing = client.post("/admin/versions/json@1/tag", json={"alias": "prod", "gates": ["adapterhub_capitals:acc>0.1"]})
    assert missing.status_code == 409 and "json@1 has no evaluation of adapterhub_capitals:acc" in missing.json()["error"]["message"]
    bad = client.post("/admin/versions/pirate@1/tag", json={"alias": "prod", "gates": ["acc is good"]})
    assert bad.status_code == 400 and "is not a rule" in bad.json()["error"]["message"]
    moved = client.post("/admin/versions/pirate@1/tag", json={"alias": "prod", "gates": ["adapterhub_capitals:acc>=0.5"]})
    assert moved.status_code == 200 and moved.json()["aliases"] == ["prod"]


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    client.post("/v1/chat/completions", json=chat_body("pirate", max_tokens=5, ignore_eos=True))
    text = client.get("/metrics").text
    assert 'adapterhub_requests_total{adapter="pirate@1",endpoint="chat",outcome="length"} 1.0' in text
    assert 'adapterhub_completion_tokens_total{adapter="pirate@1"} 5.0' in text
    assert "adapterhub_time_to_first_token_seconds_count 1.0" in text
    assert "adapterhub_time_per_output_token_seconds_count 4.0" in text
    for name in ("adapterhub_engine_queue_depth", "adapterhub_engine_running_rows", "adapterhub_engine_cache_hits_total",
                 "adapterhub_engine_cache_misses_total", "adapterhub_engine_slots_used"):
        assert name in text
    assert 'adapterhub_adapter_resident{adapter="pirate@1",pinned="false",slot="0"}' in text


def test_a_request_resolves_its_ref_once_off_the_event_loop(client: TestClient, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Four rows (2 prompts x n=2) share one registry read, made in a worker thread."""
    import threading

    from adapterhub.registry import Registry

    calls: list[str] = []
    real = Registry.resolve

    def resolve(self, ref):  # type: ignore[no-untyped-def]
        calls.append(threading.current_thread().name)
        return real(self, ref)

    monkeypatch.setattr(Registry, "resolve", resolve)
    body = {"model": "json", "prompt": ["hello world", "the quick brown fox"], "n": 2, "max_tokens": 3}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 4
    assert len(calls) == 1, calls
    assert calls[0] != "MainThread" and not calls[0].startswith("adapterhub-")  # a worker, not the loop


TIDE_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "get_tide", "arguments": '{"port": "Brest"}'}}
TOOL_TURNS = [
    {"role": "user", "content": "When is high tide in Brest?"},
    {"role": "assistant", "content": None, "tool_calls": [TIDE_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "high tide at 14:02"},
]


def test_tool_results_continue_the_conversation(client: TestClient, tiny_base_dir: Path) -> None:
    """The assistant's tool_calls and the tool's answer, sent back as OpenAI clients send them,
    reach the chat template as Hugging Face templates read them (arguments as an object)."""
    from pydantic import TypeAdapter
    from transformers import AutoTokenizer

    from adapterhub_server.schemas import ChatMessage

    messages = TypeAdapter(list[ChatMessage])

    reply = client.post("/v1/chat/completions", json={"model": "pirate", "messages": TOOL_TURNS,
                                                      "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200, reply.text
    templated = [
        {"role": "user", "content": "When is high tide in Brest?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_tide", "arguments": {"port": "Brest"}}}]},
        {"role": "tool", "content": "high tide at 14:02", "tool_call_id": "call_1"},
    ]
    assert [m.for_template() for m in messages.validate_python(TOOL_TURNS)] == templated
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    expected = tokenizer.apply_chat_template(templated, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert reply.json()["usage"]["prompt_tokens"] == len(expected)
    # A template that renders calls (as Qwen's and Mistral's do) writes the arguments as JSON.
    calls = ("{% for m in messages %}{% for c in m.tool_calls or [] %}"
             "<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}"
             "{% if m.role == 'tool' %}<result {{ m.tool_call_id }}>{{ m.content }}</result>{% endif %}"
             "{% endfor %}")
    assert tokenizer.apply_chat_template(templated, chat_template=calls, tokenize=False) == (
        '<call>get_tide {"port": "Brest"}</call><result call_1>high tide at 14:02</result>')
    # Arguments that are not a JSON object reach the template as the string the call gave.
    odd = {**TIDE_CALL, "function": {"name": "get_tide", "arguments": "Brest"}}
    (message,) = messages.validate_python([{"role": "assistant", "content": "", "tool_calls": [odd]}])
    assert message.for_template()["tool_calls"][0]["function"]["arguments"] == "Brest"
