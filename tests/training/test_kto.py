"""KTO on the tiny base: unpaired thumbs up and down train a child of the parent, with the
parent as reference; data problems are refused before the model loads, naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.core.progress import ProgressEvent
from adapterhub.errors import ConfigError

GOOD = "Paris."
BAD = "Great question! The answer is Paris, I hope this helps!"


@pytest.fixture
def parent(hub, tiny_base_dir: Path, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    from tinymodels import make_lora_folder

    folder = make_lora_folder(tiny_base_dir, tmp_path / "parent", seed=3, targets=("q_proj", "v_proj"))
    return str(hub.import_adapter(folder, "sft-parent").ref)


def thumbs(path: Path, labels: list[bool]) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Capital of France? ({i})"}],
             "completion": [{"role": "assistant", "content": GOOD if label else BAD}], "label": label}
            for i, label in enumerate(labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(data: Path, **extra: object) -> dict:  # type: ignore[type-arg]
    return {"method": "kto", "name": "concise-kto", "dataset": {"path": str(data), "eval_fraction": 0},
            "training": {"precision": "fp32", "max_steps": 3, "batch_size": 4, "learning_rate": 1e-3},
            "forgetting_check": False, **extra}


def test_kto_trains_a_child_of_the_parent_from_unpaired_thumbs(hub, parent: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events: list[ProgressEvent] = []
    data = thumbs(tmp_path / "thumbs.jsonl", [True, False] * 4)
    version = hub.train(recipe(data, parent=parent, kto={"desirable_weight": 1.2}), progress=events.append)
    assert (version.method, version.parent) == ("kto", parent)
    assert version.metrics["data"]["format"] == "unpaired_preference" and version.metrics["train_steps"] == 3
    assert version.recipe["kto"]["desirable_weight"] == 1.2
    assert any(k.startswith("train/rewards/") for k in version.metrics), sorted(version.metrics)
    losses = [e.loss for e in events if e.kind == "step" and e.loss is not None]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns the preferred answer


def test_kto_data_problems_name_the_field(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    one_sided = thumbs(tmp_path / "up.jsonl", [True] * 6)
    with pytest.raises(ConfigError, match=r"every training example is desirable \(label true\)"):
        hub.train(recipe(one_sided))  # refused by the method's preparation, before the model loads
    assert hub.list() == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "completion": "a", "label": "yes"}) + "\n")
    with pytest.raises(ConfigError, match=r"'label' is 'yes'; write true"):
        hub.plan_run(recipe(bad))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ConfigError, match=r"needs 'unpaired_preference' \(columns: prompt, completion, label\)"):
        hub.plan_run(recipe(pairs))
