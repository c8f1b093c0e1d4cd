"""Served names and exported folders: a name says which weights it is, and is never reused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from adapterhub.core.refs import AdapterRef
from adapterhub.errors import CorruptBlobError, IncompatibleAdapterError
from adapterhub.models.adapters import WEIGHTS_FILE, load_lora_folder
from adapterhub.registry.export import export_mix, export_version, served_name


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path, tmp_path: Path, make_lora_folder_fn):  # type: ignore[no-untyped-def]
    from adapterhub import Hub

    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for name, seed in (("pirate", 1), ("pirate", 2), ("json", 3)):
        hub.import_adapter(make_lora_folder_fn(tiny_base_dir, tmp_path / f"{name}{seed}", seed=seed), name)
    hub.import_adapter(tmp_path / "pirate1", "twin")  # the same weights as pirate@1
    return hub


@pytest.fixture
def make_lora_folder_fn():  # type: ignore[no-untyped-def]
    from tinymodels import make_lora_folder

    return make_lora_folder


def test_names_carry_the_digest_and_differ_for_other_weights(hub) -> None:  # type: ignore[no-untyped-def]
    one, two, twin = (hub.resolve(r) for r in ("pirate@1", "pirate@2", "twin@1"))
    names = {served_name(v) for v in (one, two, twin)}
    assert len(names) == 3
    assert served_name(one).startswith("pirate.v1-") and served_name(two).startswith("pirate.v2-")
    assert served_name(one).split("-")[-1] == served_name(twin).split("-")[-1]  # same weights, same digest
    assert served_name(one) == served_name(hub.resolve("pirate@1"))  # stable
    for name in names:
        assert str(AdapterRef.parse(name)) == name  # a plain adapter name: any replica takes it
    for odd in ("x" * 64, "ends.with.dot.", "a" * 38 + "." + "b" * 25):
        name = served_name(dataclasses.replace(one, name=odd, number=2**31 - 1))
        assert str(AdapterRef.parse(name)) == name and name.endswith(served_name(one).split("-")[-1])


def test_export_is_checked_and_reused(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = hub.resolve("pirate@1")
    cache = tmp_path / "cache"
    exported = export_version(hub.registry, version, cache)
    assert exported.label == "pirate@1" and exported.rank == 4 and exported.path.name == exported.name
    load_lora_folder(exported.path)
    again = export_version(hub.registry, version, cache)
    assert again == exported
    (exported.path / WEIGHTS_FILE).write_bytes(b"changed")  # a tampered cache is rewritten
    export_version(hub.registry, version, cache)
    load_lora_folder(exported.path)
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    blobs = hub.registry.blobs  # a folder or an object store, as the backend parameter says
    blobs.fs.pipe_file(blobs.key(version.files[WEIGHTS_FILE]), b"rot")
    with pytest.raises(CorruptBlobError):
        export_version(hub.registry, version, tmp_path / "other-cache")


def test_mix_export_names_the_mix_and_refuses_rank_over_the_limit(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parts = [hub.resolve("pirate@1"), hub.resolve("json@1")]
    mixed = export_mix(hub.registry, parts, [0.5, 0.5], tmp_path / "cache", max_rank=8)
    assert mixed.name.startswith("mix-") and mixed.rank == 8 and mixed.label == "0.5*pirate@1+0.5*json@1"
    other = export_mix(hub.registry, parts, [0.25, 0.75], tmp_path / "cache")
    assert other.name != mixed.name
    with pytest.raises(IncompatibleAdapterError, match="max_lora_rank=4"):
        export_mix(hub.registry, parts, [0.5, 0.5], tmp_path / "cache", max_rank=4)
