"""The vLLM resolver plugin without vLLM: importable, registered as vLLM's documented entry point,
and resolving ``name``, ``name@N`` and ``name:alias`` into exported folders with stable ids. The
same plugin inside a real vLLM is in ``tests/server/test_vllm_real.py`` (skipped where vLLM
cannot run)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from tinymodels import make_lora_folder

from adapterhub.models.adapters import load_lora_folder
from adapterhub.vllm_resolver import register, resolve_ref


@pytest.fixture
def registry(home: Path, tiny_base_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from adapterhub import Hub

    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    for seed in (1, 2):
        hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / f"p{seed}", seed=seed), "pirate")
    hub.registry.tag("pirate@1", "prod")
    return hub.registry


def test_refs_resolve_to_checked_folders_with_ids_per_version(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "cache"
    prod, one, latest = (resolve_ref(registry, text, cache) for text in ("pirate:prod", "pirate@1", "pirate"))
    assert prod is not None and one is not None and latest is not None
    assert prod == one and prod.ref == "pirate@1" and latest.ref == "pirate@2"
    assert latest.lora_int_id != one.lora_int_id and latest.path != one.path
    assert load_lora_folder(one.path).r == 4
    for text in ("nobody", "pirate@9", "pirate:canary", "../etc", "a/b", ""):
        assert resolve_ref(registry, text, cache) is None  # vLLM asks its next resolver


def test_declared_as_a_vllm_general_plugin_and_importable_without_vllm() -> None:
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "adapterhub"]
    assert plugin.value == "adapterhub.vllm_resolver:register"
    code = "import sys, adapterhub.vllm_resolver; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_without_a_home_it_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADAPTERHUB_HOME", raising=False)
    register()  # no vLLM import, no registry created
