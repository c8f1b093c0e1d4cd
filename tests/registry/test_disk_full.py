"""Disk full for real: a small tmpfs (when this process may mount one), and SQLite's own
"database or disk is full" (a page limit, needs nothing special). Both found raw
``sqlite3.OperationalError`` s escaping tag, delete and reads (a 500 on the server). SQLite only:
a PostgreSQL server's disk is the server's business.

``test_doctor_and_faults.py`` injects ENOSPC into one fsync. Here the filesystem really fills:
blobs hit ENOSPC on write, and once even SQLite cannot grow, metadata writes (tag, delete) fail
too. Every failure must be a ``RegistryError`` that says nothing changed, every earlier version
must stay readable, and after freeing space ``doctor --repair`` leaves a healthy registry that
takes writes again.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapterhub.errors import RegistryError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry
from adapterhub.registry.doctor import diagnose


def _register(registry: Registry, name: str, size: int, seed: int):  # type: ignore[no-untyped-def]
    return registry.register(
        name, {CONFIG_FILE: b'{"r": 4}', WEIGHTS_FILE: os.urandom(size) + bytes([seed % 256])},
        base_fingerprint="f", template_hash="t", method="sft",
    )


def _whole(registry: Registry) -> list[str]:
    """Every version's ref, after reading (and so verifying) every file."""
    for version in registry.list_versions():
        for filename in version.files:
            registry.read_file(version, filename)
    return [v.ref for v in registry.list_versions()]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs; skipped where this process may not mount (not root, no CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk_changes_nothing_and_doctor_repairs(small_disk: Path) -> None:
    registry = Registry(small_disk / "home")
    registered = 0
    with pytest.raises(RegistryError, match="No space left on device; nothing was registered"):
        while True:
            _register(registry, "a", 400_000, registered)
            registered += 1
    assert registered >= 2
    before = _whole(registry)
    assert len(before) == registered
    registry.tag("a@1", "prod")  # metadata still fits while SQLite has room

    # now not even SQLite can grow
    with open(small_disk / "filler", "wb") as filler, pytest.raises(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    # each write commits whole (SQLite still has room in the pages it holds) or fails with one
    # RegistryError that says nothing changed; new blobs need room, so registering fails
    done = {}
    for label, attempt in (("register", lambda: _register(registry, "b", 10, 0)),
                           ("tag", lambda: registry.tag("a@2", "canary")),
                           ("delete", lambda: registry.delete("a@2", force=True))):
        try:
            attempt()
            done[label] = True
        except RegistryError as e:
            assert re.search("nothing was (registered|changed)", str(e)), e
            done[label] = False
    assert done["register"] is False
    # reads still answer: the registry's pooled connections already hold what a read needs
    # (a fresh connection per call, before connections were reused, could not even open it)
    after = [ref for ref in before if not (done["delete"] and ref == "a@2")]
    assert [v.ref for v in registry.list_versions()] == after

    (small_disk / "filler").unlink()
    assert _whole(registry) == after
    assert registry.resolve("a:prod").ref == "a@1"
    if not done["delete"]:
        assert ("canary" in registry.resolve("a@2").aliases) is done["tag"]
    report = diagnose(registry.home, repair=True)
    assert report.corrupt == [], report.lines()
    assert diagnose(registry.home).healthy, diagnose(registry.home).lines()
    assert _whole(registry) == after
    assert _register(registry, "b", 10, 0).ref == "b@1"


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_sqlite_full_on_tag_and_delete_is_a_registry_error(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_FULL without root: every connection may not grow the database past its size now."""
    _register(registry, "a", 1000, 0)
    _register(registry, "a", 1000, 1)
    real_connect = sqlite3.dbapi2.connect
    registry.close()  # connections are pooled: the ones made from now on get the limit

    def full_connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        db = real_connect(*args, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
        return db

    monkeypatch.setattr(sqlite3.dbapi2, "connect", full_connect)  # what SQLAlchemy calls
    for i in range(500):  # grow the aliases table until it needs a new page
        try:
            registry.tag("a@1", f"alias-{i:03d}-{'x' * 50}")
        except RegistryError as e:
            assert "nothing was changed" in str(e) and "full" in str(e)
            break
    else:
        pytest.fail("the page limit never stopped a write")
    with pytest.raises(RegistryError, match="nothing was (registered|changed)"):
        for seed in range(2, 500):
            _register(registry, "b", 1000, seed)
    added = [v.ref for v in registry.list_versions("b")]
    monkeypatch.setattr(sqlite3.dbapi2, "connect", real_connect)
    registry.close()
    assert [v.ref for v in registry.list_versions()] == ["a@1", "a@2", *added]
    assert _whole(registry)  # every version that was registered is whole
    assert diagnose(registry.home).corrupt == []
