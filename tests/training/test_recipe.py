"""Recipes and datasets: every bad recipe gets one clear ConfigError naming field, value and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError
from adapterhub.training.datasets import check_rows, detect_format, load_training_data
from adapterhub.training.loading import apply_overrides, load_recipe

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [CHAT] * 12)


def sft(data: Path, **extra: object) -> dict:  # type: ignore[type-arg]
    return {"method": "sft", "name": "demo", "dataset": {"path": str(data)}, **extra}


def problems_of(recipe: dict, **kwargs: object) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def test_a_good_recipe_fills_defaults(data: Path) -> None:
    recipe, _ = load_recipe(sft(data))
    assert recipe.method == "sft"
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.target_modules) == (16, 16.0, None)
    llama = recipe.lora.resolved_for(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"))
    assert llama.modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # the family's attention by default
    phi3 = recipe.lora.resolved_for(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                                    ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj"))
    assert phi3.modules == ["qkv_proj", "o_proj"]
    every = recipe.lora.model_copy(update={"target_modules": ["all-linear"]}).resolved_for(
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj"))
    assert every.modules == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert recipe.training.precision == "nf4"
    resolved = recipe.resolved()
    assert resolved["sft"]["loss_type"] == "nll" and resolved["training"]["max_length"] == 512


def test_unknown_field_suggests_the_right_one(data: Path) -> None:
    [problem] = problems_of(sft(data, training={"learning_rat": 0.1}))
    assert "training.learning_rat" in problem and "0.1" in problem
    assert "did you mean 'learning_rate'" in problem


def test_a_section_of_another_method_is_an_unknown_field(data: Path) -> None:
    [problem] = problems_of(sft(data, dpo={"beta": 0.1}))
    assert problem.startswith("dpo: unknown field")


def test_wrong_type_names_field_and_value(data: Path) -> None:
    [problem] = problems_of(sft(data, training={"batch_size": "eight"}))
    assert "training.batch_size" in problem and "'eight'" in problem and "whole number" in problem


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_must_be_positive(data: Path, rank: int) -> None:
    [problem] = problems_of(sft(data, lora={"r": rank}))
    assert "lora.r" in problem and f"got {rank}" in problem and "greater than or equal to 1" in problem


def test_missing_dataset_file(tmp_path: Path) -> None:
    [problem] = problems_of(sft(tmp_path / "nope.jsonl"))
    assert problem.startswith("dataset.path: file") and "nope.jsonl" in problem and "does not exist" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    recipe = sft(tmp_path / "nope.jsonl", lora={"r": 0}, training={"epochs": "many"}, colour="red")
    problems = problems_of(recipe)
    assert len(problems) == 4, problems
    message = str(pytest.raises(ConfigError, load_recipe, recipe).value)
    assert message.startswith("recipe: 4 problems:")


def test_unknown_method_lists_the_available_ones(data: Path) -> None:
    [problem] = problems_of({**sft(data), "method": "magic"})
    assert "'magic'" in problem and "sft" in problem


def test_bad_adapter_name_and_parent_ref(data: Path) -> None:
    problems = problems_of({**sft(data), "name": "a/b", "parent": "x@zero"})
    assert any(p.startswith("name:") and "'a/b'" in p for p in problems)
    assert any(p.startswith("parent:") and "'x@zero'" in p for p in problems)


def test_yaml_file_relative_paths_and_overrides(tmp_path: Path, data: Path) -> None:
    (tmp_path / "r.yaml").write_text("method: sft\nname: demo\ndataset:\n  path: train.jsonl\n")
    recipe, root = load_recipe(tmp_path / "r.yaml", ["training.max_steps=20", "lora.mlp=true"])
    assert root == tmp_path.resolve()
    assert recipe.training.max_steps == 20 and recipe.lora.mlp is True
    lora = recipe.lora.resolved_for(["q_proj", "down_proj"], ("q_proj",), ("gate_proj", "up_proj", "down_proj"))
    assert lora.modules == ["q_proj", "gate_proj", "up_proj", "down_proj"] and lora.mlp is False
    recipe, _ = load_recipe(tmp_path / "r.yaml", {"training__batch_size": 2, "lora": {"r": 4}})
    assert (recipe.training.batch_size, recipe.lora.r) == (2, 4)


def test_overrides_are_validated_like_the_file(data: Path) -> None:
    [problem] = problems_of(sft(data), overrides=["training.max_steps=0"])
    assert "training.max_steps" in problem and "got 0" in problem
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        apply_overrides({}, ["training.max_steps"])


def test_missing_recipe_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("method: [sft\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


# --------------------------------------------------------------------------- datasets


def test_formats_are_detected_by_columns() -> None:
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["prompt", "completion"]) == "prompt_completion"
    assert detect_format(["prompt", "chosen", "rejected"]) == "preference"
    assert detect_format(["prompt"]) == "prompt_only"
    assert detect_format(["text"]) is None


def test_wrong_format_for_the_method_names_the_expected_columns() -> None:
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    with pytest.raises(ConfigError) as caught:
        check_rows(rows, formats=("messages", "prompt_completion"), method="sft")
    message = str(caught.value)
    assert "method 'sft' needs 'messages' (columns: messages)" in message
    assert "'prompt_completion' (columns: prompt, completion)" in message
    assert "['chosen', 'prompt', 'rejected']" in message


def test_malformed_rows_are_listed_with_line_numbers() -> None:
    rows = [
        CHAT,
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
    ]
    with pytest.raises(ConfigError) as caught:
        check_rows(rows, formats=("messages",), method="sft")
    problems = caught.value.problems
    assert any("line 2" in p and "'robot'" in p for p in problems)
    assert any("line 3" in p and "no assistant turn" in p for p in problems)
    assert any("line 4" in p and "content is 5" in p for p in problems)


def test_bad_json_lines_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n{not json\n[1, 2]\n")
    recipe, root = load_recipe(sft(path))
    with pytest.raises(ConfigError) as caught:
        load_training_data(recipe.dataset, root=root, formats=("messages",), method="sft")
    assert len(caught.value.problems) == 2
    assert "line 2 is not valid JSON" in caught.value.problems[0]


def test_fingerprint_follows_content_and_split_is_seeded(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(20)
    ]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows)
    load = lambda p, seed=0: load_training_data(  # noqa: E731
        load_recipe(sft(p))[0].dataset, root=tmp_path, formats=("messages",), method="sft", seed=seed
    )
    first, same, other_seed = load(a), load(b), load(a, seed=1)
    assert first.fingerprint == same.fingerprint  # content, not file name
    assert (len(first.train), len(first.eval)) == (18, 2)
    assert first.eval["messages"] == same.eval["messages"]
    assert other_seed.eval["messages"] != first.eval["messages"]
    write_jsonl(b, [*rows[:-1], CHAT])
    assert load(b).fingerprint != first.fingerprint
