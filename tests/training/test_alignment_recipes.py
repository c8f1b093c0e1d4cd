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
    "concise-kto.yaml",
    "concise-reward.yaml",
    "concise-ppo.yaml",
    "arithmetic-sft.yaml",
    "arithmetic-grpo.yaml",
]


def test_chains_name_their_parents() -> None:
    for name in ("concise-dpo.yaml", "concise-orpo.yaml", "concise-simpo.yaml", "concise-kto.yaml",
                 "concise-ppo.yaml"):
        recipe, _ = load_recipe(RECIPES / name)
        assert recipe.parent == "chatty-sft", name
    grpo, _ = load_recipe(RECIPES / "arithmetic-grpo.yaml")
    assert grpo.parent == "arithmetic-sft"
    ppo, _ = load_recipe(RECIPES / "concise-ppo.yaml")
    reward, _ = load_recipe(RECIPES / "concise-reward.yaml")
    assert ppo.ppo.reward_model == reward.name  # type: ignore[attr-defined]


def test_arithmetic_rows_keep_their_answer_for_the_reward() -> None:
    recipe, root = load_recipe(RECIPES / "arithmetic-grpo.yaml")
    data = load_training_data(recipe.dataset, root=root, formats=("prompt_only",), method="grpo")
    row = data.train[0]
    assert row["answer"].lstrip("-").isdigit()
    assert row["prompt"][-1]["role"] == "user"


def test_thumbs_are_the_pairs_unpaired() -> None:
    recipe, root = load_recipe(RECIPES / "concise-kto.yaml")
    data = load_training_data(recipe.dataset.model_copy(update={"eval_fraction": 0}), root=root,
                              formats=("unpaired_preference",), method="kto")
    pairs, _ = load_recipe(RECIPES / "concise-dpo.yaml")
    rows = load_training_data(pairs.dataset.model_copy(update={"eval_fraction": 0}), root=root,
                              formats=("preference",), method="dpo").train
    good = {(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in data.train if r["label"]}
    bad = {(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in data.train if not r["label"]}
    assert good == {(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in rows}
    assert bad == {(r["prompt"][0]["content"], r["rejected"][0]["content"]) for r in rows}


def test_concise_answers_name_their_fact_inside_the_padding() -> None:
    """The chatty parent's answers and the rejected ones contain the chosen answer verbatim, so
    the preference data teaches dropping padding, never dropping the fact."""
    recipe, root = load_recipe(RECIPES / "concise-dpo.yaml")
    rows = load_training_data(recipe.dataset.model_copy(update={"eval_fraction": 0}), root=root,
                              formats=("preference",), method="dpo").train
    chosen = {r["prompt"][0]["content"]: r["chosen"][0]["content"] for r in rows}
    assert all(chosen[r["prompt"][0]["content"]] in r["rejected"][0]["content"] for r in rows)
    sft, root = load_recipe(RECIPES / "chatty-sft.yaml")
    chatty = load_training_data(sft.dataset.model_copy(update={"eval_fraction": 0}), root=root,
                                formats=("prompt_completion",), method="sft").train
    assert len(chatty) == len(chosen)
    assert all(chosen[r["prompt"][0]["content"]] in r["completion"][0]["content"] for r in chatty)
