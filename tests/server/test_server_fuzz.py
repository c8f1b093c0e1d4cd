"""Schemathesis against the server's own OpenAPI schema, on a real ``adapterhub serve`` process.

Every operation in ``/openapi.json`` is fuzzed with valid and invalid bodies, paths and headers,
each example as a drawn caller: an admin key, an inference key, no key (or one schemathesis made
up) or an unknown key. Keys go in as explicit headers, so schemathesis' ``ignored_auth`` check
also replays successes without the key and with a made-up one. Half the valid examples name a
real model or version, so generation runs instead of stopping at a 404.

Every answer must be: no 5xx; conform to the schema (status, content type, headers, body); every
4xx in OpenAI's error shape; and a schema-valid request refused only for a rule the schema cannot
state (see :func:`_refusal_the_schema_cannot_state`). ``ADAPTERHUB_FUZZ_EXAMPLES`` sets the
examples per operation (6 in ``make test``; ``make fuzz`` runs 300). The figures are printed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from server_harness import ADMIN_KEY, INFERENCE_KEY, RunningServer, start_server

EXAMPLES = int(os.environ.get("ADAPTERHUB_FUZZ_EXAMPLES", "6"))
CALLERS = {"admin": f"Bearer {ADMIN_KEY}", "inference": f"Bearer {INFERENCE_KEY}", "none": None,
           "unknown": "Bearer not-a-key-0123456789abcdef"}
DRAWN_CALLERS = ["admin", "admin", "inference", "none", "unknown"]  # keyed callers reach deeper
REAL_MODELS = [None, "pirate", "json@1", "pirate:missing", "BASE"]  # None: keep the generated one
# Small limits keep each generated request cheap on the tiny base; the limits are what is fuzzed.
FUZZ_ENV = {
    "ADAPTERHUB_API_KEYS": INFERENCE_KEY, "ADAPTERHUB_ADMIN_KEYS": ADMIN_KEY,
    "ADAPTERHUB_MAX_TOKENS_LIMIT": "8", "ADAPTERHUB_DEFAULT_MAX_TOKENS": "4", "ADAPTERHUB_MAX_N": "2",
    "ADAPTERHUB_MAX_PROMPTS_PER_REQUEST": "2", "ADAPTERHUB_MAX_BODY_BYTES": "65536",
    "ADAPTERHUB_LOG_LEVEL": "warning",
}
TALLY: Counter[tuple[str, int]] = Counter()
BASE: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path,
                server_loras: dict[str, Path]) -> Iterator[RunningServer]:
    from adapterhub import Hub

    home = tmp_path_factory.mktemp("fuzz-home")
    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for name, folder in server_loras.items():
        hub.import_adapter(folder, name)
    running = start_server(home, tmp_path_factory.mktemp("fuzz-logs"), env=FUZZ_ENV)
    BASE["name"] = httpx.get(f"{running.url}/v1/models", headers={"Authorization": CALLERS["admin"]},
                             timeout=30).json()["data"][0]["id"]
    yield running
    running.stop()
    assert "Traceback" not in running.logs(), running.logs()[-4000:]  # nothing unexpected, even logged


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RunningServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    config = schemathesis.Config.from_dict({
        "generation": {"max-examples": EXAMPLES, "mode": "all"},
        "request-timeout": 60,
        # an invalid body may also be refused for its size, before anything parses it
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413,
                                                                     415, 422, 428, 429]}},
    })
    yield schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)
    statuses: Counter[int] = Counter()
    for (_, status), count in TALLY.items():
        statuses[status] += count
    report(request, f"fuzz: {sum(statuses.values())} requests (up to {EXAMPLES} examples per "
                    f"operation) over {len({op for op, _ in TALLY})} operations; statuses "
                    f"{dict(sorted(statuses.items()))}")


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print ``line`` in pytest's output even when output is captured (the figures of a run)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@schema.given(caller=st.sampled_from(DRAWN_CALLERS), model=st.sampled_from(REAL_MODELS))
def test_fuzz_every_operation(case: Any, caller: str, model: str | None) -> None:
    if model is not None and case.meta.generation.mode.is_positive:
        _name_a_real_model(case, BASE["name"] if model == "BASE" else model)
    header = CALLERS[caller]
    headers = {"Authorization": header} if header is not None else None
    response = case.call(headers=headers)
    TALLY[(f"{case.method} {case.path}", response.status_code)] += 1
    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert "Traceback" not in body["error"]["message"]
        if case.meta.generation.mode.is_positive and response.status_code in (400, 422):
            assert _refusal_the_schema_cannot_state(body["error"]), (case.as_curl_command(), body)
    case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance])


def _name_a_real_model(case: Any, model: str) -> None:
    """Point a generated request at a registered model/version (never DELETE: keep them)."""
    if isinstance(case.body, dict):
        for field in ("model", "ref", "lora_name"):
            if field in case.body:
                case.body[field] = model
        case.body.pop("adapter_id", None)
    if case.path_parameters and "ref" in case.path_parameters and case.method != "DELETE":
        case.path_parameters["ref"] = model


# Rules a schema-valid request may still break: the server's settings (max_n, max_tokens_limit,
# the context, prompts per request -> ConfigError / PromptTooLongError) and rules across fields
# (pydantic model validators, reported at ``body``). A refusal naming one field would mean the
# schema promises what the server refuses.
_SETTINGS_CODES = {"invalid_value", "context_length_exceeded"}


def _refusal_the_schema_cannot_state(error: dict[str, Any]) -> bool:
    return error["code"] in _SETTINGS_CODES or (error["code"] == "invalid_request" and error["param"] == "body")
