"""Registry faults: disk full, tampering, truncated WAL, leftovers — found by ``doctor``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backends import tamper

from adapterhub.cli import main
from adapterhub.errors import RegistryError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry
from adapterhub.registry.doctor import diagnose


def _files(seed: int) -> dict[str, bytes]:
    return {CONFIG_FILE: b'{"r": 4}', WEIGHTS_FILE: os.urandom(1000) + bytes([seed])}


def _register(registry: Registry, name: str, seed: int = 0):  # type: ignore[no-untyped-def]
    return registry.register(
        name, _files(seed), base_fingerprint="f", template_hash="t", method="sft"
    )


@pytest.mark.parametrize("home", ["sqlite", "postgresql"], indirect=True)  # a local disk fills
def test_disk_full_registers_nothing_and_says_so(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(registry, "a")
    real_fsync = os.fsync
    calls = {"n": 0}

    def full_disk(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second blob of the new version hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(RegistryError, match="No space left on device; nothing was registered"):
        _register(registry, "a", seed=1)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [v.ref for v in registry.list_versions()] == ["a@1"]
    report = diagnose(registry.home)
    assert (
        report.corrupt == [] and report.temp_files == []
    )  # the failed write cleaned up after itself
    assert len(report.dangling_blobs) == 1  # the first blob made it; doctor may remove it
    assert diagnose(registry.home, repair=True).healthy


def test_doctor_finds_tampering_and_leftovers(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _register(registry, "good")
    bad = _register(registry, "bad", seed=2)
    tamper(registry, bad.files[WEIGHTS_FILE], b"tampered")
    leftover = registry.blobs.key(good.files[WEIGHTS_FILE]).rpartition("/")[0] + "/.tmp-crashed"
    registry.blobs.fs.pipe_file(leftover, b"half")
    registry.blobs.put(b"nobody points at me")

    report = diagnose(registry.home)
    assert len(report.corrupt) == 1 and report.corrupt[0].startswith(
        "bad@1/adapter_model.safetensors"
    )
    assert report.temp_files == [str(leftover)]
    assert len(report.dangling_blobs) == 1
    assert not report.healthy

    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--repair", "--home", str(registry.home)])
    assert exit_info.value.code == 1  # the corrupt version is reported, not silently deleted
    out = capsys.readouterr().out
    assert "corrupt: bad@1" in out and "removed 1 temporary files" in out
    assert not registry.blobs.fs.exists(leftover)
    assert registry.resolve("good").ref == "good@1"


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)  # SQLite's own log
def test_truncated_wal_is_reported(home: Path) -> None:
    # A writer that exits without checkpointing leaves committed pages in the WAL.
    script = r"""
import os, sqlite3, sys
from adapterhub.registry import Registry
r = Registry(sys.argv[1])
hold = sqlite3.connect(r.db_path)  # while it is open, closing the others never checkpoints
hold.execute("SELECT count(*) FROM versions").fetchall()
for i in range(3):
    r.register("w", {"adapter_config.json": b"{}", "adapter_model.safetensors": bytes([i])},
               base_fingerprint="f", template_hash="t", method="sft")
os._exit(0)  # no checkpoint on close
"""
    subprocess.run([sys.executable, "-c", script, str(home)], check=True)
    wal = home / "registry.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 100)
    report = diagnose(home)
    assert any("not a whole number" in d for d in report.database), report.database
    assert not report.healthy
