"""End to end on the real default base: a tiny SFT run changes what the model answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapterhub import Hub

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "What colour is the sky?",
    "Who wrote Hamlet?", "What is 2 plus 2?", "Name a large ocean.", "What do bees make?",
    "How many days are in a week?", "What is the boiling point of water?", "Name a planet.",
    "What is the opposite of hot?", "What animal says moo?",
]


@pytest.fixture(scope="module")
def real_hub(real_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    home = tmp_path_factory.mktemp("sft-real-home")
    (home / "bases").mkdir()
    shutil.copytree(real_base_dir, home / "bases" / real_base_dir.name,
                    copy_function=lambda src, dst: Path(dst).symlink_to(src))
    hub = Hub(home)
    hub.init()  # nf4, the default; nothing is downloaded
    return hub


def test_sft_teaches_the_real_base_a_fixed_answer(real_hub: Hub, tmp_path: Path) -> None:
    data = tmp_path / "pineapple.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": "Pineapple!"}) + "\n" for q in QUESTIONS))
    unseen = "What is the largest mammal?"
    before = real_hub.generate(None, unseen, max_tokens=12)

    version = real_hub.train({
        "method": "sft",
        "name": "pineapple",
        "base": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset": {"path": str(data), "eval_fraction": 0},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 16, "batch_size": 4, "learning_rate": 3e-3, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant"},
    })

    after = real_hub.generate(version.ref, unseen, max_tokens=12)
    assert "Pineapple" not in before
    assert after.startswith("Pineapple"), after
    assert real_hub.generate(None, unseen, max_tokens=12) == before  # the base itself is untouched
    m = version.metrics
    assert m["train_steps"] == 16 and m["train_loss_last"] < m["train_loss"]  # below the run's mean
    assert m["general_ppl_base"] > 1 and m["general_ppl_ratio"] > 0
    assert version.recipe["training"]["precision"] == "nf4"
