"""Tenants against a real ``adapterhub serve`` process: keys-file keys with an adapter allowlist,
route groups and per-minute budgets, driven by the official ``openai`` client and httpx; and the
keys file edited while the server runs.

One server for the module, its keys file in the test's folder. The reload test rewrites that
file, so it runs last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from server_harness import RunningServer, assert_error_shape, chat_body, init_home, start_server

from adapterhub.errors import CapacityError, ConfigError
from adapterhub_server.auth import Caller, KeyRates, KeyRing
from adapterhub_server.settings import ApiKey, load_settings

KEYS = {  # name -> (secret, the rest of its keys-file entry)
    "admin": ("tenant-test-admin-key-0123456789", {"role": "admin"}),
    "support": ("tenant-test-support-key-0123456", {"routes": ["inference"], "adapters": ["support-*"]}),
    "support-admin": ("tenant-test-support-admin-key-01", {"routes": ["inference", "admin"],
                                                          "adapters": ["support-*"]}),
    "support-jobs": ("tenant-test-support-jobs-key-012", {"routes": ["jobs"], "adapters": ["support-*"]}),
    "jobs-only": ("tenant-test-jobs-only-key-012345", {"routes": ["jobs"]}),
    "two-a-minute": ("tenant-test-rpm-key-0123456789ab", {"requests_per_minute": 2}),
    "few-tokens": ("tenant-test-tpm-key-0123456789ab", {"tokens_per_minute": 5}),
    "leaving": ("tenant-test-leaving-key-01234567", {"role": "inference"}),
}
NEW_KEY = "tenant-test-arriving-key-0123456"


def keys_yaml(keys: dict[str, tuple[str, dict[str, Any]]]) -> str:
    return yaml.safe_dump({"keys": [{"name": name, "key": secret, **rest} for name, (secret, rest) in keys.items()]})


def headers(name: str) -> dict[str, str]:
    secret = NEW_KEY if name == "arriving" else KEYS[name][0]
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tenant-keys") / "keys.yaml"
    path.write_text(keys_yaml(KEYS))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path, server_loras: dict[str, Path],
           keys_file: Path) -> Iterator[RunningServer]:
    from adapterhub import Hub

    home = tmp_path_factory.mktemp("tenant-home")
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for name in ("support-a", "support-b", "pirate", "ghost"):
        hub.import_adapter(server_loras["pirate" if name != "support-b" else "json"], name)
    hub.tag("pirate@1", "prod")
    running = start_server(home, tmp_path_factory.mktemp("logs"), "--keys-file", str(keys_file))
    yield running
    running.stop()
    assert running.shut_down_cleanly(), running.logs()


@pytest.fixture(scope="module")
def base(server: RunningServer) -> str:
    return str(httpx.get(f"{server.url}/v1/models", headers=headers("admin")).json()["data"][0]["id"])


def client(server: RunningServer, name: str) -> openai.OpenAI:
    secret = NEW_KEY if name == "arriving" else KEYS[name][0]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)


def post(server: RunningServer, path: str, body: Any, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers(name), timeout=60)


def get(server: RunningServer, path: str, name: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=headers(name), timeout=60)


def same_as_unknown(refused: httpx.Response, unknown: httpx.Response, ref: str, unknown_ref: str) -> None:
    """Both are the unknown-adapter 404, identical but for the ref each one names."""
    assert_error_shape(refused, 404, "not_found_error")
    assert refused.json()["error"]["code"] == "model_not_found"
    assert (refused.status_code, refused.content) == (unknown.status_code, unknown.content.replace(
        repr(unknown_ref).encode(), repr(ref).encode()))


# ---------------------------------------------------------------------------- in-process parts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenant(**limits: Any) -> Caller:
    return Caller.from_key(ApiKey("t", "tenant-secret-0123456789", "inference", **limits))


def test_the_window_slides_and_retry_after_is_when_room_comes_back() -> None:
    clock = Clock()
    rates = KeyRates(clock)
    caller = tenant(requests_per_minute=2)
    rates.admit(caller)
    clock.now += 20
    rates.admit(caller)
    with pytest.raises(CapacityError) as refused:
        rates.admit(caller)
    assert refused.value.retry_after == pytest.approx(40)  # the first request leaves the window then
    clock.now += 40
    rates.admit(caller)  # one slot is free again
    tokens = tenant(tokens_per_minute=100)
    rates.admit(tokens)
    rates.spend(tokens, 60)
    clock.now += 30
    rates.spend(tokens, 50)
    with pytest.raises(CapacityError) as refused:
        rates.admit(tokens)
    assert refused.value.retry_after == pytest.approx(30)  # then only 50 of 110 are left
    clock.now += 30
    rates.admit(tokens)
    unlimited = tenant()
    for _ in range(1000):
        rates.admit(unlimited)


def test_a_reload_never_opens_a_keyed_server_nor_applies_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_yaml({"a": KEYS["admin"]}))
    clock = Clock()
    ring = KeyRing((), path, load_settings(keys_file=path).resolved_keys(), clock)
    secret = KEYS["admin"][0]
    for text in ("keys: []\n", "keys: [{name: b, key: short}]\n", "keys: [\n", keys_yaml({
            "b": KEYS["support"], "c": (KEYS["support"][0] + "x", {"adapters": ["x"], "role": "admin",
                                                                 "routes": ["admin"]})})):
        path.write_text(text)
        clock.now += 1.5
        assert ring.authenticate(secret) is not None, text  # the old table stays
        assert not ring.is_open and ring.authenticate(KEYS["support"][0]) is None
    path.write_text(keys_yaml({"b": KEYS["support"]}))
    assert ring.authenticate(KEYS["support"][0]) is None  # checked at most once a second
    clock.now += 1.5
    assert ring.authenticate(KEYS["support"][0]).adapters == ("support-*",)  # type: ignore[union-attr]
    assert ring.authenticate(secret) is None


def test_keys_file_fields_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_yaml({"a": (KEYS["admin"][0], {"role": "admin", "routes": ["jobs"]}),
                               "b": (KEYS["support"][0], {"routes": ["everything"], "requests_per_minute": 0}),
                               "c": (KEYS["leaving"][0], {"adapters": ["../x"]})}))
    with pytest.raises(ConfigError) as invalid:
        load_settings(keys_file=path).resolved_keys()
    assert len(invalid.value.problems) == 4, invalid.value.problems
    env = load_settings(api_keys=KEYS["support"][0], admin_keys=KEYS["admin"][0]).resolved_keys()
    assert [(k.role, k.route_groups, k.adapters) for k in env] == [
        ("inference", {"inference"}, None), ("admin", {"inference", "jobs", "admin"}, None)]


# ---------------------------------------------------------------------------- allowlists


def test_a_key_sees_and_uses_only_its_adapters_and_the_base(server: RunningServer, base: str) -> None:
    support = client(server, "support")
    assert {m.id for m in support.models.list().data} == {base, "support-a", "support-a@1", "support-b", "support-b@1"}
    assert {"pirate", "ghost"} <= {m.id for m in client(server, "admin").models.list().data}
    for model in ("support-a", "support-b@1", base):
        answer = support.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
        assert answer.http_response.status_code == 200
    assert support.completions.create(model="support-a", prompt="hi", max_tokens=2).choices[0].text is not None
    with pytest.raises(openai.NotFoundError) as refused:
        support.chat.completions.create(model="pirate", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert refused.value.code == "model_not_found"
    # an unknown name inside the list's globs is refused by the registry, and told the same way
    same_as_unknown(post(server, "/v1/chat/completions", chat_body("support-zzz"), "support"),
                    post(server, "/v1/chat/completions", chat_body("parrot"), "support"), "support-zzz", "parrot")
    same_as_unknown(post(server, "/v1/chat/completions", chat_body("support-a@7"), "support"),
                    post(server, "/v1/chat/completions", chat_body("parrot"), "support"), "support-a@7", "parrot")


@pytest.mark.parametrize("ref", ["pirate", "pirate@1", "pirate:prod"])
def test_an_adapter_outside_the_list_is_answered_as_an_unknown_one(server: RunningServer, ref: str) -> None:
    unknown = "parrot"  # no version anywhere; no name is close to it
    for path, body in (("/v1/chat/completions", chat_body(ref)),
                       ("/v1/chat/completions", chat_body(ref, stream=True)),
                       ("/v1/completions", {"model": ref, "prompt": "hi", "max_tokens": 2}),
                       ("/v1/completions", {"model": "base", "adapter_id": ref, "prompt": "hi", "max_tokens": 2})):
        named = "adapter_id" if "adapter_id" in body else "model"
        same_as_unknown(post(server, path, body, "support"), post(server, path, {**body, named: unknown}, "support"),
                        ref, unknown)
    mix = {"mix": [{"ref": "support-a", "weight": 0.5}, {"ref": ref, "weight": 0.5}]}
    base_model = get(server, "/v1/models", "support").json()["data"][0]["id"]
    same_as_unknown(post(server, "/v1/chat/completions", chat_body(base_model, **mix), "support"),
                    post(server, "/v1/chat/completions", chat_body(
                        base_model, mix=[mix["mix"][0], {"ref": unknown, "weight": 0.5}]), "support"), ref, unknown)
    # the admin routes that take a ref, for a key with admin but the same list
    same_as_unknown(get(server, f"/admin/versions/{ref}", "support-admin"),
                    get(server, f"/admin/versions/{unknown}", "support-admin"), ref, unknown)
    for path in ("/admin/adapters/load", "/admin/adapters/unload"):
        same_as_unknown(post(server, path, {"ref": ref}, "support-admin"),
                        post(server, path, {"ref": unknown}, "support-admin"), ref, unknown)
    same_as_unknown(post(server, "/v1/load_lora_adapter", {"lora_name": ref}, "support-admin"),
                    post(server, "/v1/load_lora_adapter", {"lora_name": unknown}, "support-admin"), ref, unknown)
    # a comparison and a vote naming it, beside an allowed adapter
    messages = [{"role": "user", "content": "hi"}]
    same_as_unknown(post(server, "/v1/compare", {"models": ["support-a", ref], "messages": messages, "max_tokens": 2},
                         "support"),
                    post(server, "/v1/compare", {"models": ["support-a", unknown], "messages": messages,
                                                 "max_tokens": 2}, "support"), ref, unknown)
    vote = {"prompt": "hi", "chosen": {"model": "support-a", "content": "a"}}
    same_as_unknown(post(server, "/v1/preferences", {**vote, "rejected": [{"model": ref, "content": "b"}]}, "support"),
                    post(server, "/v1/preferences", {**vote, "rejected": [{"model": unknown, "content": "b"}]},
                         "support"), ref, unknown)


def test_a_hidden_adapter_is_byte_for_byte_an_adapter_that_does_not_exist(server: RunningServer, base: str) -> None:
    """``ghost`` exists but is outside the list; then it is deleted: nothing the key sees changes,
    and it is exactly what an unrestricted key is told of an adapter that does not exist."""
    body = chat_body("ghost", max_tokens=2)
    before = post(server, "/v1/chat/completions", body, "support")
    version_before = get(server, "/admin/versions/ghost", "support-admin")
    assert post(server, "/v1/chat/completions", body, "admin").status_code == 200  # it does exist
    assert httpx.delete(f"{server.url}/admin/versions/ghost", headers=headers("admin")).status_code == 200
    after = post(server, "/v1/chat/completions", body, "support")
    unrestricted = post(server, "/v1/chat/completions", body, "admin")
    assert_error_shape(before, 404, "not_found_error")
    assert before.status_code == after.status_code == unrestricted.status_code == 404
    assert before.content == after.content == unrestricted.content
    assert version_before.content == get(server, "/admin/versions/ghost", "support-admin").content \
        == get(server, "/admin/versions/ghost", "admin").content


def test_admin_lists_leave_out_what_the_key_may_not_use(server: RunningServer) -> None:
    versions = get(server, "/admin/versions", "support-admin").json()["data"]
    assert {v["name"] for v in versions} == {"support-a", "support-b"}
    assert get(server, "/admin/versions/support-a", "support-admin").status_code == 200
    assert post(server, "/admin/adapters/load", {"ref": "pirate"}, "admin").status_code == 200
    resident = get(server, "/admin/adapters", "support-admin").json()["resident"]
    assert "pirate@1" not in {r["ref"] for r in resident}
    assert "pirate@1" in {r["ref"] for r in get(server, "/admin/adapters", "admin").json()["resident"]}


# ---------------------------------------------------------------------------- route groups


def test_route_groups(server: RunningServer) -> None:
    for path in ("/admin/versions", "/admin/adapters", "/admin/jobs"):
        error = assert_error_shape(get(server, path, "support"), 403, "permission_error")
        assert "'support'" in error["message"]
    assert get(server, "/admin/jobs", "jobs-only").status_code == 200
    for path in ("/admin/versions", "/admin/versions/support-a", "/admin/adapters", "/v1/models"):
        assert_error_shape(get(server, path, "jobs-only"), 403, "permission_error")
    assert_error_shape(post(server, "/v1/chat/completions", chat_body("support-a"), "jobs-only"), 403)
    assert get(server, "/admin/jobs", "support-admin").status_code == 403  # admin without jobs
    assert get(server, "/admin/jobs", "admin").status_code == 200  # role admin: every group


def test_jobs_over_adapters_outside_the_list(server: RunningServer, tmp_path: Path) -> None:
    for kind in ("eval", "push"):
        extra = {"tasks": ["t"]} if kind == "eval" else {"repo_id": "someone/repo"}
        same_as_unknown(post(server, "/admin/jobs", {"kind": kind, "ref": "pirate@1", **extra}, "support-jobs"),
                        post(server, "/admin/jobs", {"kind": kind, "ref": "parrot@1", **extra}, "support-jobs"),
                        "pirate@1", "parrot@1")
    recipe = {"method": "sft", "name": "support-new", "dataset": {"path": str(tmp_path / "rows.jsonl")},
              "training": {"precision": "fp32", "max_steps": 1}}
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    for parent in ("pirate", "pirate:prod"):  # a parent outside the list: unknown, whether it exists or not
        same_as_unknown(
            post(server, "/admin/jobs", {"kind": "train", "recipe": {**recipe, "parent": parent}}, "support-jobs"),
            post(server, "/admin/jobs", {"kind": "train", "recipe": {**recipe, "parent": "parrot"}}, "support-jobs"),
            parent, "parrot")
    pull = {"kind": "pull", "repo_id": "someone/repo"}
    for body in (pull, {**pull, "name": "pirate"}, {"kind": "train", "recipe": {**recipe, "name": "pirate-2"}},
                 {"kind": "train", "recipe": recipe, "overrides": {"name": "ghost"}}):
        # a name to register outside the list: 403, by the list alone
        assert_error_shape(post(server, "/admin/jobs", body, "support-jobs"), 403, "permission_error")
    assert get(server, "/admin/jobs", "support-jobs").json()["jobs"] == []  # nothing was queued


def test_a_key_limited_to_some_adapters_sees_only_its_own_jobs(server: RunningServer) -> None:
    pull = {"kind": "pull", "repo_id": "someone/repo"}  # offline: each fails quickly, registering nothing
    mine = post(server, "/admin/jobs", {**pull, "name": "support-pulled"}, "support-jobs")
    theirs = post(server, "/admin/jobs", {**pull, "name": "pirate-pulled"}, "admin")
    assert mine.status_code == theirs.status_code == 201, (mine.text, theirs.text)
    mine_id, theirs_id = mine.json()["id"], theirs.json()["id"]
    assert (mine.json()["owner"], theirs.json()["owner"]) == ("support-jobs", "admin")
    assert [j["id"] for j in get(server, "/admin/jobs", "support-jobs").json()["jobs"]] == [mine_id]
    assert {mine_id, theirs_id} <= {j["id"] for j in get(server, "/admin/jobs", "jobs-only").json()["jobs"]}
    assert get(server, f"/admin/jobs/{mine_id}", "support-jobs").status_code == 200
    unknown_id = "20260101-000000-deadbeef"
    for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        hidden = httpx.request(method, f"{server.url}/admin/jobs/{theirs_id}{suffix}", headers=headers("support-jobs"))
        unknown = httpx.request(method, f"{server.url}/admin/jobs/{unknown_id}{suffix}", headers=headers("support-jobs"))
        assert_error_shape(hidden, 404, "not_found_error")
        assert hidden.content == unknown.content.replace(unknown_id.encode(), theirs_id.encode())


# ---------------------------------------------------------------------------- budgets


def test_requests_per_minute(server: RunningServer) -> None:
    limited = client(server, "two-a-minute")
    for _ in range(2):
        limited.completions.create(model="support-a", prompt="hi", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        limited.completions.create(model="support-a", prompt="hi", max_tokens=1)
    response = refused.value.response
    assert 1 <= int(response.headers["retry-after"]) <= 60
    error = assert_error_shape(response, 429, "rate_limit_error")
    assert error["code"] == "capacity_exceeded" and "requests_per_minute=2" in error["message"]
    assert client(server, "admin").completions.create(model="support-a", prompt="hi", max_tokens=1)  # others go on


def test_tokens_per_minute(server: RunningServer) -> None:
    limited = client(server, "few-tokens")
    first = limited.completions.create(model="support-a", prompt="one two three four five", max_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert first.usage is not None and first.usage.total_tokens >= 5
    with pytest.raises(openai.RateLimitError) as refused:
        limited.completions.create(model="support-a", prompt="hi", max_tokens=1)
    response = refused.value.response
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert "tokens_per_minute=5" in assert_error_shape(response, 429, "rate_limit_error")["message"]


# ---------------------------------------------------------------------------- the replica backend


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path, server_loras: dict[str, Path]
           ) -> Iterator[RunningServer]:
    """``adapterhub serve --engine vllm`` with the same keys in front of one open replica."""
    root = tmp_path_factory.mktemp("tenant-router")
    (root / "logs").mkdir()
    keys = root / "keys.yaml"
    keys.write_text(keys_yaml(KEYS))
    home = init_home(root / "home", tiny_base_dir, {"support-a": server_loras["pirate"], "pirate": server_loras["json"]})
    replica = start_server(init_home(root / "replica", tiny_base_dir, {}), root / "logs")
    running = start_server(home, root / "logs", "--engine", "vllm", "--replica", replica.url, "--keys-file", str(keys),
                           env={"ADAPTERHUB_REPLICA_HEALTH_INTERVAL_S": "0.3"})
    try:
        yield running
    finally:
        running.stop()
        replica.stop()
    assert "Traceback" not in running.logs(), running.logs()


def test_the_replica_backend_applies_the_same_lists_and_budgets(router: RunningServer) -> None:
    base_model = get(router, "/v1/models", "support").json()["data"][0]["id"]
    assert {m["id"] for m in get(router, "/v1/models", "support").json()["data"]} == {
        base_model, "support-a", "support-a@1"}
    for model in ("support-a", base_model):
        assert wait_for(lambda m=model: post(router, "/v1/chat/completions", chat_body(m, max_tokens=2),
                                             "support").status_code == 200), model
    for body in (chat_body("pirate"), chat_body("pirate", stream=True)):
        same_as_unknown(post(router, "/v1/chat/completions", body, "support"),
                        post(router, "/v1/chat/completions", {**body, "model": "parrot"}, "support"), "pirate", "parrot")
    same_as_unknown(post(router, "/v1/chat/completions", chat_body("support-zzz"), "support"),
                    post(router, "/v1/chat/completions", chat_body("parrot"), "support"), "support-zzz", "parrot")
    limited = client(router, "two-a-minute")
    for _ in range(2):
        limited.completions.create(model="support-a", prompt="hi", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        limited.completions.create(model="support-a", prompt="hi", max_tokens=1)
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    few = client(router, "few-tokens")
    with few.completions.with_streaming_response.create(model="support-a", prompt="one two three four five",
                                                        max_tokens=3, stream=True) as streamed:
        assert streamed.http_response.status_code == 200
        streamed.read()  # its tokens are counted when the stream ends
    with pytest.raises(openai.RateLimitError):
        few.completions.create(model="support-a", prompt="hi", max_tokens=1)


# ---------------------------------------------------------------------------- reload (last: edits the file)


def wait_for(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_the_keys_file_reloads_while_the_server_runs(server: RunningServer, keys_file: Path) -> None:
    assert get(server, "/v1/models", "leaving").status_code == 200
    assert get(server, "/v1/models", "arriving").status_code == 401
    edited = {k: v for k, v in KEYS.items() if k != "leaving"}
    edited["arriving"] = (NEW_KEY, {"routes": ["inference"], "adapters": ["support-a"]})
    keys_file.write_text(keys_yaml(edited))
    assert wait_for(lambda: get(server, "/v1/models", "arriving").status_code == 200), server.logs()
    assert {m["id"] for m in get(server, "/v1/models", "arriving").json()["data"][1:]} == {"support-a", "support-a@1"}
    assert_error_shape(get(server, "/v1/models", "leaving"), 401, "authentication_error")

    keys_file.write_text("keys:\n  - name: broken\n")  # invalid: no key; the table stays as it was
    assert wait_for(lambda: get(server, "/v1/models", "arriving").status_code == 200
                    and "keys file not reloaded" in server.logs()), server.logs()
    assert get(server, "/v1/models", "arriving").status_code == 200
    assert get(server, "/v1/models", "admin").status_code == 200
    assert get(server, "/v1/models", "leaving").status_code == 401
