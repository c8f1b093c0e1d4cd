"""Engine test fixtures: PEFT adapters on the tiny base, registered in a temp registry, and a
PEFT reference that runs one request alone with its adapter, the way the issue defines "equal".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tinymodels import PeftReference, save_lora

from adapterhub.core.hardware import detect_platform
from adapterhub.engine import Engine, EngineConfig
from adapterhub.models.base import load_base

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = (*ATTN, "gate_proj", "up_proj", "down_proj")
# name -> (seed, rank, targets): different ranks and targets so slots are padded and mixed
ADAPTERS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "alpha": (1, 4, ATTN),
    "beta": (2, 8, ALL),
    "gamma": (3, 4, ("q_proj", "v_proj")),
}


def register(registry: Any, base: Any, name: str, folder: Path) -> Any:
    return registry.register(
        name,
        {f.name: f for f in folder.iterdir() if f.suffix in (".json", ".safetensors")},
        base_fingerprint=base.info.fingerprint,
        template_hash=base.info.template_hash,
        method="sft",
    )


@pytest.fixture(scope="session")
def lora_folders(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-loras")
    return {
        name: save_lora(tiny_base_dir, root / name, seed=seed, r=r, targets=targets)
        for name, (seed, r, targets) in ADAPTERS.items()
    }


@pytest.fixture
def adapter_registry(registry: Any, tiny_base: Any, lora_folders: dict[str, Path]) -> Any:
    """The temp registry with alpha, beta and gamma registered (each at version 1)."""
    for name, folder in lora_folders.items():
        register(registry, tiny_base, name, folder)
    return registry


@pytest.fixture
def make_engine(tiny_base: Any, adapter_registry: Any) -> Iterator[Callable[..., Engine]]:
    """Build engines over the shared fp32 tiny base; all are closed after the test."""
    engines: list[Engine] = []

    def make(base: Any = None, **config: Any) -> Engine:
        engine = Engine(base or tiny_base, adapter_registry, EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def peft_ref(tiny_base_dir: Path, lora_folders: dict[str, Path]) -> PeftReference:
    return PeftReference(tiny_base_dir, lora_folders)


@pytest.fixture(scope="session")
def on_device(tiny_base: Any, peft_ref: PeftReference, tiny_base_dir: Path, lora_folders: dict[str, Path]
              ) -> Callable[[str], tuple[Any, PeftReference]]:
    """``device -> (tiny fp32 base, PEFT reference)`` on that device (the shared ones for the CPU)."""

    def make(device: str) -> tuple[Any, PeftReference]:
        if device == "cpu":
            return tiny_base, peft_ref
        platform = detect_platform(device=device, compute_dtype="float32")
        return (load_base(tiny_base_dir, "fp32", platform=platform),
                PeftReference(tiny_base_dir, lora_folders, platform=platform))

    return make


@pytest.fixture(scope="session")
def make_peft_ref(tiny_base_dir: Path, lora_folders: dict[str, Path]) -> Callable[..., PeftReference]:
    """A fresh PEFT reference, over the tiny base in ``precision``, with adapters ``names``."""

    def make(precision: str = "fp32", names: Sequence[str] = tuple(ADAPTERS)) -> PeftReference:
        return PeftReference(tiny_base_dir, {n: lora_folders[n] for n in names}, precision)

    return make


@pytest.fixture(scope="session")
def prompts(tiny_base: Any) -> list[list[int]]:
    """Chat-templated prompts of different lengths."""
    texts = ["What is two plus two?", "The capital of France", "Arr matey", "hello world the quick brown fox"]
    return [tiny_base.render_chat([{"role": "user", "content": t}]) for t in texts]
