"""The bundled alignment recipes and their chains (each file's command, validation and data size are
checked with every recipe in ``test_bundled_recipes.py``)."""

from __future__ import annotations

from pathlib import Path

from adapterhub.training.datasets import load_training_data
from adapterhub.training.loading import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALIGNMENT = [
    "chatty-sft.yaml",
    "concise-dpo.yaml",
    "concise-orpo.yaml",
    "concise-simpo.yaml",
    "concise-reward.yaml",
    "concise-ppo.yaml",
    "arithmetic-grpo.yaml",
]


def test_chains_name_their_parents() -> None:
    for name in ("concise-dpo.yaml", "concise-orpo.yaml", "concise-simpo.yaml", "concise-ppo.yaml"):
        recipe, _ = load_recipe(RECIPES / name)
        assert recipe.parent == "chatty-sft", name
    ppo, _ = load_recipe(RECIPES / "concise-ppo.yaml")
    reward, _ = load_recipe(RECIPES / "concise-reward.yaml")
    assert ppo.ppo.reward_model == reward.name  # type: ignore[attr-defined]


def test_arithmetic_rows_keep_their_answer_for_the_reward() -> None:
    recipe, root = load_recipe(RECIPES / "arithmetic-grpo.yaml")
    data = load_training_data(recipe.dataset, root=root, formats=("prompt_only",), method="grpo")
    row = data.train[0]
    assert row["answer"].lstrip("-").isdigit()
    assert row["prompt"][-1]["role"] == "user"
