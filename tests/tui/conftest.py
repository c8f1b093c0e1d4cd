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


@pytest.fixture
def sft_recipe(tmp_path: Path) -> Path:
    """An SFT recipe (``sums``, 3 steps) and a DPO one (``prefer``) over a sums dataset, for the
    tiny base in fp32."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(8)]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "sums.yaml").write_text(
        "# adapterhub train sums.yaml\n"
        "method: sft\nname: sums\ndataset:\n  path: sums.jsonl\n  eval_fraction: 0\n"
        "lora:\n  r: 4\n  alpha: 8\n"
        "training:\n  precision: fp32\n  max_steps: 3\n  batch_size: 2\n  learning_rate: 0.001\n"
        "forgetting_check: false\n"
    )
    (folder / "prefer.yaml").write_text(  # the settings the DPO-on-votes offer copies
        "# adapterhub train prefer.yaml\n"
        "method: dpo\nname: prefer\ndataset:\n  path: sums.jsonl\n"
        "training:\n  precision: fp32\n  max_steps: 2\n  batch_size: 2\n  learning_rate: 0.001\n"
        "forgetting_check: false\n"
    )
    return folder
