"""ORPO and SimPO (no reference model) on the tiny base: a few steps register a version with
lineage and preference metrics; the wrong data format names the expected columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub import Hub
from adapterhub.core.progress import ProgressEvent
from adapterhub.errors import ConfigError

PAIR = {
    "prompt": "What is the capital of France?",
    "chosen": "Paris.",
    "rejected": "Great question! The answer is Paris, I hope this helps!",
}
METHODS = ["orpo", "simpo"]


def recipe(method: str, data: Path, **extra: object) -> dict[str, object]:
    return {
        "method": method,
        "name": f"concise-{method}",
        "dataset": {"path": str(data)},
        "training": {"precision": "fp32", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3},
        "forgetting_check": False,
        **extra,
    }


@pytest.mark.parametrize("method", METHODS)
def test_registers_version_with_preference_metrics(method: str, hub: Hub, tiny_base_dir: Path,
                                                   tmp_path: Path) -> None:
    from tinymodels import make_lora_folder

    parent = hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "p"), "sft").ref
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(PAIR) for _ in range(12)) + "\n")  # plain strings
    events: list[ProgressEvent] = []
    version = hub.train(recipe(method, data, parent=parent), progress=events.append)

    assert version.method == method and version.parent == parent
    for key in ("train/rewards/margins", "train/rewards/accuracies"):
        assert key in version.metrics, sorted(version.metrics)
    assert any("rewards/margins" in e.metrics for e in events if e.kind == "step")
    assert version.recipe[method]["beta"] > 0


@pytest.mark.parametrize("method", METHODS)
def test_wrong_data_format_names_expected_columns(method: str, hub: Hub, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(ConfigError, match="prompt, chosen, rejected"):
        hub.train(recipe(method, data))
