"""The auth matrix: every route x {no key, unknown key, inference key, admin key}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_harness import ADMIN_KEY, INFERENCE_KEY, assert_error_shape, auth, chat_body

from adapterhub_server.auth import KeyTable, bearer_token
from adapterhub_server.settings import ApiKey

PUBLIC = {"/health", "/ready"}
# (method, path) -> JSON body; every app route must be listed here (checked below)
INFERENCE_ROUTES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): chat_body("pirate"),
    ("POST", "/v1/completions"): {"model": "pirate", "prompt": "hi", "max_tokens": 4},
    ("GET", "/v1/models"): None,
    ("GET", "/metrics"): None,
    ("POST", "/v1/compare"): {"models": ["pirate", "json"], "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 4},
    ("POST", "/v1/preferences"): {"prompt": "hi", "chosen": {"model": "pirate", "content": "a"},
                                  "rejected": [{"model": "json", "content": "b"}]},
}
ADMIN_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/admin/info"): None,
    ("GET", "/admin/adapters"): None,
    ("POST", "/admin/adapters/load"): {"ref": "json"},
    ("POST", "/admin/adapters/pin"): {"ref": "json"},
    ("POST", "/admin/adapters/unload"): {"ref": "json"},
    ("POST", "/v1/load_lora_adapter"): {"lora_name": "json"},
    ("POST", "/v1/unload_lora_adapter"): {"lora_name": "json"},
    ("GET", "/admin/versions"): None,
    ("GET", "/admin/versions/{ref}"): None,
    ("GET", "/admin/versions/{ref}/lineage"): None,
    ("GET", "/admin/versions/{ref}/step_log"): None,
    ("POST", "/admin/versions/{ref}/tag"): {"alias": "prod"},
    ("DELETE", "/admin/versions/{ref}"): None,
    ("GET", "/v1/preferences"): None,
}
JOBS_ROUTES: dict[tuple[str, str], Any] = {  # the jobs route group; no job exists, so an admin gets 404s
    ("GET", "/admin/jobs"): None,
    ("POST", "/admin/jobs"): {"kind": "eval", "ref": "no-such-adapter", "tasks": ["t"]},
    ("GET", "/admin/jobs/{job_id}"): None,
    ("DELETE", "/admin/jobs/{job_id}"): None,
    ("GET", "/admin/jobs/{job_id}/events"): None,
}
ORDER = [  # loads before unloads, delete last, so every admin call can succeed in sequence
    *[r for r in ADMIN_ROUTES if r[0] != "DELETE" and "load" not in r[1]],
    ("POST", "/admin/adapters/load"), ("POST", "/admin/adapters/unload"),
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"),
    ("DELETE", "/admin/versions/{ref}"),
]


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=INFERENCE_KEY, admin_keys=ADMIN_KEY)


def call(client: TestClient, route: tuple[str, str], body: Any, role: str | None) -> Any:
    method, path = route
    path = path.replace("{ref}", "json@1").replace("{job_id}", "no-such-job")
    return client.request(method, path, json=body, headers=auth(role))


def test_every_route_is_in_the_matrix(keyed: TestClient) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p): op for p, ops in paths.items() for m, op in ops.items()}
    listed = set(INFERENCE_ROUTES) | set(ADMIN_ROUTES) | set(JOBS_ROUTES) | {("GET", p) for p in PUBLIC}
    assert set(routes) == listed, f"add new routes to the auth matrix: {set(routes) ^ listed}"
    assert {r for r, op in routes.items() if "admin" in op["tags"]} == set(ADMIN_ROUTES)
    assert {r for r, op in routes.items() if "jobs" in op["tags"]} == set(JOBS_ROUTES)


@pytest.mark.parametrize("role", [None, "bad"])
def test_no_or_unknown_key_is_401_everywhere_but_health(keyed: TestClient, role: str | None) -> None:
    for route, body in {**INFERENCE_ROUTES, **ADMIN_ROUTES, **JOBS_ROUTES}.items():
        reply = call(keyed, route, body, role)
        assert_error_shape(reply, 401, "authentication_error")
        assert reply.headers["www-authenticate"] == "Bearer", route
    for path in PUBLIC:
        assert keyed.get(path, headers=auth(role)).status_code == 200


def test_inference_key_calls_inference_routes_but_gets_403_on_admin(keyed: TestClient) -> None:
    for route, body in INFERENCE_ROUTES.items():
        assert call(keyed, route, body, "inference").status_code in (200, 201), route
    for route, body in {**ADMIN_ROUTES, **JOBS_ROUTES}.items():
        error = assert_error_shape(call(keyed, route, body, "inference"), 403, "permission_error")
        assert "admin key" in error["message"], route


def test_admin_key_calls_everything(keyed: TestClient) -> None:
    assert sorted(ORDER) == sorted(ADMIN_ROUTES)
    for route, body in INFERENCE_ROUTES.items():
        assert call(keyed, route, body, "admin").status_code in (200, 201), route
    for route in ORDER:
        reply = call(keyed, route, ADMIN_ROUTES[route], "admin")
        assert reply.status_code == 200, (route, reply.text)
    for route, body in JOBS_ROUTES.items():  # let in: 200 for the list, 404 for what does not exist
        reply = call(keyed, route, body, "admin")
        assert reply.status_code == (200 if route == ("GET", "/admin/jobs") else 404), (route, reply.text)


def test_open_server_without_keys_lets_everyone_in(client: TestClient) -> None:
    assert client.get("/admin/adapters").status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body("pirate")).status_code == 200


def test_key_table_matches_whole_keys_only() -> None:
    table = KeyTable((ApiKey("a", "alpha-key-0123456789", "inference"), ApiKey("b", "beta-key-0123456789", "admin")))
    assert table.authenticate("alpha-key-0123456789").name == "a"  # type: ignore[union-attr]
    assert table.authenticate("beta-key-0123456789").role == "admin"  # type: ignore[union-attr]
    for wrong in ("alpha-key-012345678", "alpha-key-01234567890", "", None, "ALPHA-KEY-0123456789"):
        assert table.authenticate(wrong) is None
    assert bearer_token("Bearer  tok ") == "tok" and bearer_token("bearer tok") == "tok"
    assert bearer_token("Basic tok") is None and bearer_token("Bearer ") is None
