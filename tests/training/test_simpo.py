"""SimPO on the tiny base: a few steps register a version with lineage and preference metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError
from adapterhub.progress import ProgressEvent
from adapterhub.training.run import train

PAIR = {
    "prompt": "What is the capital of France?",
    "chosen": "Paris.",
    "rejected": "Great question! The answer is Paris, I hope this helps!",
}


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path):  # type: ignore[no-untyped-def]
    from adapterhub import Hub

    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    return hub


def recipe(data: Path, **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "simpo",
        "name": "concise-simpo",
        "dataset": {"path": str(data)},
        "training": {"precision": "fp32", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3},
        "forgetting_check": False,
        **extra,
    }


def test_simpo_registers_version_with_preference_metrics(
    hub, tiny_base_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from tinymodels import make_lora_folder

    parent = hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "p"), "sft").ref
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(PAIR) for _ in range(12)) + "\n")  # plain strings
    events: list[ProgressEvent] = []
    version = train(hub, recipe(data, parent=parent), progress=events.append)

    assert version.method == "simpo" and version.parent == parent
    for key in ("train/rewards/margins", "train/rewards/accuracies"):
        assert key in version.metrics, sorted(version.metrics)
    assert any("rewards/margins" in e.metrics for e in events if e.kind == "step")
    assert version.recipe["simpo"]["beta"] > 0


def test_simpo_wrong_data_format_names_expected_columns(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(ConfigError, match="prompt, chosen, rejected"):
        train(hub, recipe(data))
