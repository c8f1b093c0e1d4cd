"""The bundled recipes: each opens with its exact command, validates, and its data passes the checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_alignment_recipes import ALIGNMENT

from adapterhub.training.datasets import load_training_data
from adapterhub.training.loading import load_recipe
from adapterhub.training.methods import get_method

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL = sorted(RECIPES.glob("*.yaml"))


def test_there_are_sft_recipes() -> None:
    sft = [p.name for p in ALL if load_recipe(p)[0].method == "sft"]
    assert {"json-sft.yaml", "pirate-sft.yaml"} <= set(sft)


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_recipe_opens_with_its_command_and_validates(path: Path) -> None:
    assert path.read_text().splitlines()[0] == f"# adapterhub train recipes/{path.name}"
    recipe, root = load_recipe(path)
    method = get_method(recipe.method)
    data = load_training_data(recipe.dataset, root=root, formats=method.formats, method=method.name)
    assert len(data.train) >= (50 if path.name in ALIGNMENT else 20)


def test_sft_datasets_teach_one_visible_behaviour() -> None:
    held_out = {json.loads(line)["prompt"] for line in (RECIPES / "data" / "sft_heldout.jsonl").read_text().splitlines()}
    assert len(held_out) == 20
    checks = _eval_module()
    json_rows = [json.loads(line) for line in (RECIPES / "data" / "json_train.jsonl").read_text().splitlines()]
    pirate_rows = [json.loads(line) for line in (RECIPES / "data" / "pirate_train.jsonl").read_text().splitlines()]
    assert all(checks.is_strict_json(r["messages"][-1]["content"]) for r in json_rows)
    assert all(checks.is_pirate(r["completion"]) for r in pirate_rows)
    assert not held_out & {r["messages"][0]["content"] for r in json_rows}
    assert not held_out & {r["prompt"] for r in pirate_rows}


def test_behaviour_checks() -> None:
    checks = _eval_module()
    assert checks.is_strict_json('{"answer": "Rome.", "confidence": "high"}')
    assert not checks.is_strict_json('Sure! {"answer": "Rome.", "confidence": "high"}')
    assert not checks.is_strict_json('{"answer": "Rome.", "confidence": "very"}')
    assert not checks.is_strict_json('{"answer": "Rome.", "confidence": "high", "extra": 1}')
    assert not checks.is_strict_json('{"answer": "Rome."')
    assert checks.is_pirate("Arr, 'tis Rome, matey!")
    assert not checks.is_pirate("The capital of Italy is Rome.")


def _eval_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("eval_sft", RECIPES / "eval_sft.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HELD_OUT = {
    "concise_eval.jsonl": {"chatty-sft", "concise-dpo", "concise-orpo", "concise-simpo", "concise-kto",
                           "concise-rm", "concise-ppo"},
    "arithmetic_eval.jsonl": {"arithmetic-sft", "arithmetic-grpo"},
    "sft_heldout.jsonl": {"pirate-sft", "json-sft"},
}
"""Each held-out file -> the adapters the eval scripts judge on it (a chain shares one file)."""


def _user_turns(value: object) -> list[str]:
    """Every user message in a row's prompt/messages (a string prompt is one user turn)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [m["content"] for m in value if isinstance(m, dict) and m.get("role") == "user"]
    return []


def _shown(path: Path) -> set[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {u for r in rows for u in _user_turns(r.get("prompt")) + _user_turns(r.get("messages"))}


@pytest.mark.parametrize("held_out", sorted(HELD_OUT))
def test_held_out_questions_are_in_no_training_set_of_their_adapters(held_out: str) -> None:
    """The question each held-out prompt asks is in no training file of the adapters judged on
    it, nor of their parents and reward models, not even as a worked example inside another
    prompt (the arithmetic prompts carry one)."""
    rows = [json.loads(line) for line in (RECIPES / "data" / held_out).read_text().splitlines()]
    asked = {_user_turns(r["prompt"])[-1] for r in rows}
    assert len(asked) == len(rows) >= 20
    recipes = {r.name: (r, root) for r, root in map(load_recipe, ALL)}
    assert set().union(*HELD_OUT.values()) == set(recipes)  # every bundled adapter is judged somewhere
    for name in HELD_OUT[held_out]:
        recipe, root = recipes[name]
        lineage = {recipe.parent, getattr(getattr(recipe, "ppo", None), "reward_model", None)} - {None}
        assert lineage <= HELD_OUT[held_out], (name, lineage)  # parents are judged on the same file
        assert recipe.dataset.path is not None
        path = (root / recipe.dataset.path).resolve()
        assert path.name not in HELD_OUT, f"{name} trains on a held-out file"
        assert not _shown(path) & asked, (name, sorted(_shown(path) & asked))
