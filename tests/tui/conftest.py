"""Fixtures for the TUI tests: a fake backend, a recipe folder, and app builders.

The fake backend (``fake_backend.py``) serves the fast tests and the snapshots; tests marked as
using the real in-process backend build a hub on the tiny model from ``tests/conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_backend import FakeBackend

from adapterhub_tui import AdapterHubApp, make_app


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """Two recipes (SFT and DPO) over a tiny dataset (paths relative to the recipe files)."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    data = folder / "tiny-sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "tiny-sft.yaml").write_text(
        "# adapterhub train tiny-sft.yaml\n"
        "method: sft\nname: tiny-sft\ndataset:\n  path: tiny-sft.jsonl\n"
        "lora:\n  r: 8\n  alpha: 16\ntraining:\n  learning_rate: 0.0002\n  max_steps: 6\n"
    )
    (folder / "tiny-dpo.yaml").write_text(
        "# adapterhub train tiny-dpo.yaml\n"
        "method: dpo\nname: tiny-dpo\nparent: pirate@1\ndataset:\n  path: tiny-sft.jsonl\n"
        "lora:\n  r: 8\n  alpha: 16\ntraining:\n  learning_rate: 0.00005\n  max_steps: 4\n"
    )
    return folder


@pytest.fixture
def fake(tmp_path: Path) -> FakeBackend:
    return FakeBackend(tmp_path / "home")


@pytest.fixture
def fake_app(fake: FakeBackend, recipe_dir: Path) -> Callable[[], AdapterHubApp]:
    """Build the app over the fake backend (a fixed clock keeps tok/s stable)."""
    ticks = iter(range(10**9))
    return lambda: make_app(fake, recipe_dirs=[recipe_dir], clock=lambda: next(ticks) * 0.05)
