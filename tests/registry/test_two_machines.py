"""A trainer and a server on two "machines": separate processes with separate hub homes (each
with its own copy of the base), sharing one registry through the same PostgreSQL and S3 URLs.

The trainer registers and promotes; the server, already running, resolves the alias again and
gets the new version (no stale answer), loads its weights through the checksums and generates
with it on its own base. Meanwhile several "machines" register the same name at once and get
distinct numbers (``test_crash_and_concurrency`` runs that race on every backend too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapterhub.facade import Hub
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry

_TRAINER = r"""
import sys
from adapterhub.facade import Hub
hub = Hub(sys.argv[1])  # registry and blobs from ADAPTERHUB_REGISTRY_URL / ADAPTERHUB_BLOBS
version = hub.import_adapter(sys.argv[2], "pirate")
hub.tag(version.ref, "prod")
print(version.ref, flush=True)
"""

_SERVER = r"""
import sys
from adapterhub.facade import Hub
from adapterhub.registry import ensure_compatible
hub = Hub(sys.argv[1], precision="fp32")
info = hub.base_info
for line in sys.stdin:  # one request per line: resolve the alias again, load, generate
    version = hub.resolve("pirate:prod")
    ensure_compatible(version, info.fingerprint, info.template_hash)
    adapter = hub.registry.load_adapter(version)
    text = hub.generate("pirate:prod", "hello", max_tokens=4, temperature=0)
    print(version.ref, adapter.r, len(text) >= 0, flush=True)
"""


@pytest.fixture
def shared(postgres_url: str, s3_blobs: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The team's registry, named the way every process on every machine finds it."""
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", postgres_url)
    monkeypatch.setenv("ADAPTERHUB_BLOBS", s3_blobs)
    return postgres_url, s3_blobs


def test_a_trainer_and_a_server_share_one_registry(
        shared: tuple[str, str], tiny_base_dir: Path, lora_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trainer_home, server_home = tmp_path / "machine-a", tmp_path / "machine-b"
    for home in (trainer_home, server_home):
        Hub(home).init(str(tiny_base_dir), precision="fp32")
    first = lora_factory(tiny_base_dir, tmp_path / "lora-1", seed=1)
    second = lora_factory(tiny_base_dir, tmp_path / "lora-2", seed=2)

    def train(folder: Path) -> str:
        done = subprocess.run([sys.executable, "-c", _TRAINER, str(trainer_home), str(folder)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert train(first) == "pirate@1"
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(server_home)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        server.stdin.write("go\n")
        server.stdin.flush()
        assert server.stdout.readline().split() == ["pirate@1", "4", "True"]
        assert train(second) == "pirate@2"  # the trainer promotes a new version while it runs
        server.stdin.write("go\n")
        server.stdin.flush()
        assert server.stdout.readline().split() == ["pirate@2", "4", "True"]
    finally:
        server.stdin.close()
        assert server.wait(timeout=120) == 0, server.stderr.read() if server.stderr else ""

    # neither home holds the registry: both machines' files stay their own
    for home in (trainer_home, server_home):
        assert not (home / "registry.db").exists() and not (home / "blobs").exists()
    team = Registry()  # from the environment alone
    assert [v.ref for v in team.list_versions()] == ["pirate@1", "pirate@2"]
    assert team.read_file(team.resolve("pirate@2"), WEIGHTS_FILE) == (second / WEIGHTS_FILE).read_bytes()


_WRITER = r"""
import sys
from adapterhub.registry import Registry
registry = Registry(sys.argv[1])  # each "machine" has its own home and its own connections
for i in range(8):
    registry.register("shared", {"adapter_config.json": b"{}",
                                 "adapter_model.safetensors": sys.argv[2].encode() + bytes([i])},
                      base_fingerprint="f", template_hash="t", method="sft")
"""


def test_machines_registering_one_name_at_once_get_distinct_numbers(
        shared: tuple[str, str], tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / f"machine-{m}"), m])
               for m in "abcde"]
    assert [w.wait(timeout=300) for w in writers] == [0] * 5
    team = Registry()
    versions = team.list_versions("shared")
    assert [v.number for v in versions] == list(range(1, 41))
    contents = {team.read_file(v, WEIGHTS_FILE) for v in versions}
    assert len(contents) == 40 and all(team.read_file(v, CONFIG_FILE) == b"{}" for v in versions)
