"""Where a registry lives, as a user says it: ``--registry``/``--blobs`` on the commands,
``ADAPTERHUB_REGISTRY_URL``/``ADAPTERHUB_BLOBS``, ``Hub(registry=..., blobs=...)``; explicit wins
over the environment, which wins over the home; bad values are one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.cli import main
from adapterhub.errors import ConfigError, RegistryError
from adapterhub.facade import Hub
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry, RegistryLocation


def _register(registry: Registry, name: str) -> str:
    return registry.register(name, {CONFIG_FILE: b"{}", WEIGHTS_FILE: name.encode()}, base_fingerprint="f",
                             template_hash="t", method="sft").ref


def test_the_default_is_the_homes_own_files(tmp_path: Path) -> None:
    location = RegistryLocation.resolve(tmp_path / "h")
    assert location.db_path == (tmp_path / "h" / "registry.db").absolute()
    assert location.blobs == str((tmp_path / "h" / "blobs").absolute())
    registry = Registry(tmp_path / "h")
    _register(registry, "a")
    assert (tmp_path / "h" / "registry.db").exists() and (tmp_path / "h" / "blobs" / "sha256").is_dir()


def test_commands_take_registry_and_blobs(tmp_path: Path, postgres_url: str, s3_blobs: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _register(Registry(url=postgres_url, blobs=s3_blobs), "team")
    main(["list", "--json", "--home", str(tmp_path / "mine"), "--registry", postgres_url, "--blobs", s3_blobs])
    assert [row["ref"] for row in json.loads(capsys.readouterr().out)] == ["team@1"]
    main(["tag", "team@1", "prod", "--home", str(tmp_path / "mine"), "--registry", postgres_url,
          "--blobs", s3_blobs])
    capsys.readouterr()
    main(["doctor", "--home", str(tmp_path / "mine"), "--registry", postgres_url, "--blobs", s3_blobs])
    out = capsys.readouterr().out
    assert "checked 1 versions" in out and "healthy" in out
    assert not (tmp_path / "mine" / "registry.db").exists()  # the home's own registry untouched
    assert Registry(url=postgres_url, blobs=s3_blobs).resolve("team:prod").ref == "team@1"


def test_explicit_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", f"sqlite:///{tmp_path / 'env' / 'registry.db'}")
    _register(Registry(tmp_path / "home"), "from-env")
    hub = Hub(tmp_path / "home", registry=f"sqlite:///{tmp_path / 'given' / 'registry.db'}")
    assert hub.registry.names() == []
    assert Hub(tmp_path / "home").registry.names() == ["from-env"]
    shared = Registry(tmp_path / "other")
    assert Hub(tmp_path / "home", registry=shared).registry is shared


def test_bad_locations_say_what_to_write(tmp_path: Path, postgres_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="starts with sqlite:/// .* or postgresql://"):
        Registry(tmp_path, url="mysql://db/x")
    with pytest.raises(ConfigError, match="its blobs must be too: set ADAPTERHUB_BLOBS"):
        Registry(tmp_path, url=postgres_url)  # never a folder in one machine's home
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--registry", postgres_url, "--home", str(tmp_path)])
    assert exit_info.value.code == 2 and "its blobs must be too" in capsys.readouterr().err
    unreachable = postgres_url.rsplit(":", 1)[0] + ":1/nothing"
    with pytest.raises(RegistryError, match="Check that the server is up and reachable"):
        Registry(url=unreachable, blobs=str(tmp_path / "blobs"))
