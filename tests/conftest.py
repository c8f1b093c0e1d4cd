"""Shared fixtures: a tiny random Llama base, a temporary hub home, the real default base.

Everything is offline. The tiny base is a 2-layer Llama with a byte-level BPE tokenizer trained in
milliseconds and a ChatML template, materialised through the same code path as a real base.
The real default base (SmolLM2-135M-Instruct) is materialised once into ``.tmp/test-home``
(gitignored; override with ``ADAPTERHUB_TEST_CACHE``) and reused by the few end-to-end tests.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tinymodels import build_tiny_llama_folder, make_lora_folder

pytest_plugins = [
    "hubserver.fixtures",  # the Hub-compatible test server (tests/hubserver/)
    "backends",  # PostgreSQL and an S3-compatible server, for the registry's shared backends
]

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test runs offline with its own HF cache; ADAPTERHUB_HOME points nowhere real, and no
registry URL or blob location from the environment leaks in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path_factory.getbasetemp() / "unset-home"))
    for name in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS"):  # never a real shared registry
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A materialised tiny base folder (built once per session)."""
    from adapterhub.models.base import materialize_base

    src = build_tiny_llama_folder(tmp_path_factory.mktemp("tiny-src"))
    home = tmp_path_factory.mktemp("tiny-home")
    return materialize_base(home, str(src)).path


@pytest.fixture(scope="session")
def other_tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny base, wider and with other weights, for compatibility tests."""
    from adapterhub.models.base import materialize_base

    src = build_tiny_llama_folder(
        tmp_path_factory.mktemp("other-src") / "tiny-other", seed=1, hidden=96
    )
    home = tmp_path_factory.mktemp("other-home")
    return materialize_base(home, str(src)).path


@pytest.fixture(scope="session")
def tiny_base(tiny_base_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny base loaded in fp32 (shared; tests must not modify it)."""
    from adapterhub.models.base import load_base

    return load_base(tiny_base_dir, "fp32")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh hub home, also exported as ADAPTERHUB_HOME for CLI subprocesses."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ADAPTERHUB_HOME", str(path))
    return path


@pytest.fixture
def registry(home: Path):  # type: ignore[no-untyped-def]
    from adapterhub.registry import Registry

    return Registry(home)


@pytest.fixture
def lora_factory():  # type: ignore[no-untyped-def]
    """:func:`make_lora_folder`, for tests that need several or unusual adapters."""
    return make_lora_folder


@pytest.fixture
def lora_dir(tiny_base_dir: Path, tmp_path: Path) -> Path:
    """A random PEFT adapter folder that fits the tiny base."""
    return make_lora_folder(tiny_base_dir, tmp_path / "lora")


@pytest.fixture(scope="session")
def real_base_dir() -> Path:
    """The real default base, materialised once through the offline path and cached."""
    from adapterhub.models.base import materialize_base

    cache = Path(os.environ.get("ADAPTERHUB_TEST_CACHE", REPO / ".tmp" / "test-home"))
    return materialize_base(cache, progress=lambda msg: print(msg, file=sys.stderr)).path


CAPITALS_ROWS = [{"messages": [{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": "Paris."}]}
                 for i in range(8)]


@pytest.fixture
def capitals_data(tmp_path: Path) -> Path:
    """Eight SFT conversations that all answer "Paris." (a set the tiny base learns in steps)."""
    path = tmp_path / "capitals.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CAPITALS_ROWS))
    return path


@pytest.fixture
def capitals_recipes(tmp_path: Path, capitals_data: Path) -> Path:
    """A recipes folder with one bundled recipe, ``capitals`` (SFT on :func:`capitals_data`, fp32, 3 steps)."""
    import yaml

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "capitals.yaml").write_text(yaml.safe_dump({
        "method": "sft", "name": "capitals", "dataset": {"path": str(capitals_data)}, "forgetting_check": False,
        "training": {"precision": "fp32", "batch_size": 2, "learning_rate": 5e-3, "max_steps": 3},
    }))
    return folder
