"""Registry behaviour: versions, aliases, lineage, deletes, checksums, compatibility."""

from pathlib import Path

import pytest
from backends import tamper

from adapterhub.errors import (
    AdapterNotFoundError,
    ConfigError,
    CorruptBlobError,
    IncompatibleAdapterError,
    RegistryError,
    VersionExistsError,
)
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry, ensure_compatible


def _register(registry: Registry, name: str, lora_dir: Path, **kw):  # type: ignore[no-untyped-def]
    files = {CONFIG_FILE: lora_dir / CONFIG_FILE, WEIGHTS_FILE: lora_dir / WEIGHTS_FILE}
    kw.setdefault("base_fingerprint", "fp")
    kw.setdefault("template_hash", "th")
    kw.setdefault("method", "sft")
    return registry.register(name, files, **kw)


def test_versions_number_up_and_refs_resolve(registry: Registry, lora_dir: Path) -> None:
    v1 = _register(registry, "pirate", lora_dir, metrics={"loss": 1.5})
    v2 = _register(registry, "pirate", lora_dir, parent="pirate@1")
    assert (v1.number, v2.number) == (1, 2)
    assert registry.resolve("pirate").ref == "pirate@2"
    assert registry.resolve("pirate@1").metrics == {"loss": 1.5}
    registry.tag("pirate@1", "prod")
    assert registry.resolve("pirate:prod").ref == "pirate@1"
    assert registry.resolve("pirate@1").aliases == ("prod",)
    registry.tag("pirate@2", "prod")  # aliases move
    assert registry.resolve("pirate:prod").ref == "pirate@2"
    assert [v.ref for v in registry.lineage("pirate")] == ["pirate@2", "pirate@1"]
    # identical files are stored once
    assert v1.files == v2.files
    assert len(list(registry.blobs.digests())) == 2


def test_versions_are_immutable(registry: Registry, lora_dir: Path) -> None:
    _register(registry, "a", lora_dir)
    with pytest.raises(VersionExistsError, match="a@1 already exists"):
        _register(registry, "a", lora_dir, number=1)


def test_unknown_refs_suggest_close_matches(registry: Registry, lora_dir: Path) -> None:
    _register(registry, "pirate", lora_dir)
    with pytest.raises(AdapterNotFoundError) as info:
        registry.resolve("pirat")
    assert info.value.close_matches == ["pirate"]
    assert "Did you mean: pirate" in str(info.value)
    with pytest.raises(AdapterNotFoundError, match=r"has versions \['pirate@1'\]"):
        registry.resolve("pirate@7")
    with pytest.raises(AdapterNotFoundError):
        registry.resolve("pirate:nope")
    with pytest.raises(LookupError):  # also a built-in LookupError
        registry.resolve("zzz")


def test_bad_names_and_missing_files(registry: Registry, lora_dir: Path) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        _register(registry, "../../etc", lora_dir)
    with pytest.raises(ConfigError, match="needs"):
        registry.register(
            "x", {CONFIG_FILE: b"{}"}, base_fingerprint="f", template_hash="t", method="sft"
        )
    with pytest.raises(ConfigError, match="file names"):
        registry.register(
            "x",
            {"../evil": b"", CONFIG_FILE: b"{}", WEIGHTS_FILE: b""},
            base_fingerprint="f",
            template_hash="t",
            method="sft",
        )
    assert registry.list_versions() == []


def test_delete_refuses_parents_unless_forced(registry: Registry, lora_dir: Path) -> None:
    _register(registry, "sft", lora_dir)
    _register(registry, "dpo", lora_dir, parent="sft")
    with pytest.raises(RegistryError, match="dpo@1 \\(parent sft@1\\)"):
        registry.delete("sft@1")
    registry.delete("sft@1", force=True)
    assert registry.names() == ["dpo"]
    registry.delete("dpo")
    assert registry.names() == []
    assert list(registry.blobs.digests()) == []  # unreferenced blobs are removed


def test_tampered_blob_is_detected(registry: Registry, lora_dir: Path) -> None:
    version = _register(registry, "a", lora_dir)
    assert registry.load_adapter("a").r == 4
    digest = version.files[WEIGHTS_FILE]
    data = bytearray((lora_dir / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    tamper(registry, digest, bytes(data))
    with pytest.raises(CorruptBlobError, match="changed on disk"):
        registry.load_adapter("a")
    tamper(registry, digest, None)
    with pytest.raises(CorruptBlobError, match="missing"):
        registry.read_file(version, WEIGHTS_FILE)


def test_compatibility_names_the_expected_fingerprint(registry: Registry, lora_dir: Path) -> None:
    version = _register(registry, "a", lora_dir, base_fingerprint="aaaa" * 16, template_hash="t1")
    ensure_compatible(version, "aaaa" * 16, "t1")
    with pytest.raises(IncompatibleAdapterError, match="trained on base aaaaaaaaaaaa"):
        ensure_compatible(version, "bbbb" * 16, "t1")
    with pytest.raises(IncompatibleAdapterError, match="chat template"):
        ensure_compatible(version, "aaaa" * 16, "t2")


def test_export_writes_a_peft_folder(registry: Registry, lora_dir: Path, tmp_path: Path) -> None:
    _register(registry, "a", lora_dir)
    out = registry.export("a", tmp_path / "out")
    assert (out / WEIGHTS_FILE).read_bytes() == (lora_dir / WEIGHTS_FILE).read_bytes()


def test_a_version_survives_the_wire(registry: Registry, lora_dir: Path) -> None:
    """The admin routes' ``VersionInfo`` carries every field of a ``Version`` and gives it back."""
    from dataclasses import fields

    from adapterhub.protocol import VersionInfo

    _register(registry, "wire", lora_dir)
    version = _register(registry, "wire", lora_dir, parent="wire@1", metrics={"loss": 0.5},
                        recipe={"method": "sft"}, source={"path": "/x"})
    registry.tag(version.ref, "prod")
    version = registry.resolve("wire:prod")
    assert set(VersionInfo.model_fields) == {f.name for f in fields(version)} | {"ref", "evaluations"}
    assert VersionInfo.from_version(version).to_version() == version
    assert version.aliases == ("prod",) and version.to_dict()["aliases"] == ["prod"]


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_sqlite_connections_are_reused_and_set_up_once(
        home: Path, lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a fresh connection and its PRAGMAs per call cost more than the query."""
    import sqlite3

    real = sqlite3.dbapi2.connect
    opened: list[object] = []

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", counting)  # what SQLAlchemy calls
    registry = Registry(home)
    _register(registry, "a", lora_dir)
    for _ in range(50):
        registry.resolve("a")
        registry.load_adapter("a")
    assert len(opened) == 1
    with registry._transaction() as db:
        assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert db.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert db.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
