"""ServerSettings: environment, keys (env and file), bounds, and the bind check."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub.errors import ConfigError
from adapterhub_server.settings import check_bind, is_loopback, load_settings


def test_env_keys_nested_engine_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTERHUB_API_KEYS", "inference-aaaaaaaaaaaaaaaa, inference-bbbbbbbbbbbbbbbb")
    monkeypatch.setenv("ADAPTERHUB_ADMIN_KEYS", "admin-cccccccccccccccccccc")
    monkeypatch.setenv("ADAPTERHUB_ENGINE__MAX_ROWS", "8")
    monkeypatch.setenv("ADAPTERHUB_PORT", "9001")
    settings = load_settings(engine={"max_slots": 3}, port=9100)
    assert settings.port == 9100  # keyword beats environment
    assert (settings.engine.max_rows, settings.engine.max_slots) == (8, 3)  # merged, not replaced
    keys = settings.resolved_keys()
    assert [(k.name, k.role) for k in keys] == [
        ("env-inference-0", "inference"), ("env-inference-1", "inference"), ("env-admin-0", "admin")
    ]
    assert keys[1].secret == "inference-bbbbbbbbbbbbbbbb"
    assert "inference-aaaa" not in repr(settings)  # secrets never printed


def test_keys_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - {name: ci, key: ci-key-0123456789abcdef, role: admin}\n"
                    "  - {name: app, key: app-key-0123456789abcdef}\n")
    keys = load_settings(keys_file=path).resolved_keys()
    assert [(k.name, k.role, k.secret) for k in keys] == [
        ("ci", "admin", "ci-key-0123456789abcdef"), ("app", "inference", "app-key-0123456789abcdef")
    ]


def test_keys_file_problems_listed_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - {name: ci, key: short-secret, role: root}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(keys_file=path).resolved_keys()
    message = str(caught.value)
    assert "keys.0.key" in message and "keys.0.role" in message and "short-secret" not in message


def test_every_bad_setting_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(port=70000, max_n=0, api_keys="short", nonsense=1)
    problems = caught.value.problems
    assert {p.split(":")[0] for p in problems} == {"port", "max_n", "api_keys", "nonsense"}
    assert "short" not in str(caught.value).split("api_keys")[1].split("\n")[0].replace("shorter", "")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_needs_keys() -> None:
    settings = load_settings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="ADAPTERHUB_API_KEYS"):
        check_bind(settings, settings.resolved_keys())
    keyed = load_settings(host="0.0.0.0", admin_keys="admin-key-0123456789abcdef")
    check_bind(keyed, keyed.resolved_keys())  # allowed
    check_bind(load_settings(), ())  # loopback without keys is allowed


def test_replica_backend_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTERHUB_BACKEND", "vllm")
    monkeypatch.setenv("ADAPTERHUB_REPLICAS", "http://a:8000/, https://b.example:443")
    monkeypatch.setenv("ADAPTERHUB_REPLICA_MAX_LORAS", "4")
    settings = load_settings()
    assert settings.backend == "vllm" and settings.replicas == ["http://a:8000", "https://b.example:443"]
    assert settings.replica_max_loras == 4 and settings.replica_max_lora_rank == 16
    assert load_settings(replicas=["http://c:1"]).replicas == ["http://c:1"]  # the flag wins


def test_replica_backend_problems_are_listed() -> None:
    with pytest.raises(ConfigError, match="needs at least one replica"):
        load_settings(backend="vllm")
    with pytest.raises(ConfigError, match="not http"):
        load_settings(backend="vllm", replicas=["ftp://a", "a b"])
