"""GRPO on the tiny base: recipe reward functions (built-in, python, reward model), lineage, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError
from adapterhub.training.rewards import ExactAnswer, LengthTarget, RegexMatch

PROMPTS = [
    {"prompt": f"What is {i} + 2? Reply with only 'Answer: ' and the number.", "answer": str(i + 2)}
    for i in range(10)
]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n")
    return path


def recipe(data: Path, rewards: list[dict], **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "grpo",
        "name": "arith",
        "dataset": {"path": str(data), "eval_fraction": 0},
        "lora": {"r": 4},
        "grpo": {"rewards": rewards, "num_generations": 2, "max_completion_length": 6},
        "training": {"precision": "fp32", "max_steps": 1, "batch_size": 2},
        "forgetting_check": False,
        **extra,
    }


def test_builtin_reward_functions_by_hand() -> None:
    completions = [
        "Answer: 7",
        " Answer: 7 ",
        "The answer is 7",
        [{"role": "assistant", "content": "Answer: 8"}],
    ]
    assert RegexMatch(r"Answer: -?\d+")(None, completions) == [1.0, 1.0, 0.0, 1.0]
    assert ExactAnswer()(None, completions, answer=["7", "7.0", "7", "7"]) == [1.0, 1.0, 0.0, 0.0]
    # 2 words against a target of 4 with tolerance 4 -> 1 - 2/4
    assert LengthTarget(target_words=4, tolerance=4)(None, ["a b", "a b c d", "x" * 3]) == [
        0.5,
        1.0,
        0.25,
    ]


def test_grpo_registers_version_with_group_metrics(
    hub, prompts: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from tinymodels import make_lora_folder

    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, answer, **kw):\n"
        "    return [1.0 / (1 + len(c[0]['content'].split())) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    parent = hub.import_adapter(make_lora_folder(hub.base_info.path, tmp_path / "p"), "sft").ref
    rewards = [
        {"type": "regex", "pattern": r"^Answer: -?\d+$"},
        {"type": "exact_answer", "column": "answer", "weight": 2.0},
        {"type": "python", "function": "my_rewards:brevity"},
    ]
    events = []
    version = hub.train(recipe(prompts, rewards, parent=parent), progress=events.append)

    assert version.method == "grpo" and version.parent == parent
    for key in (
        "reward",
        "reward_std",
        "kl",
        "completions/mean_length",
        "rewards/format/mean",
        "rewards/accuracy/mean",
        "rewards/brevity/mean",
    ):
        assert f"train/{key}" in version.metrics, sorted(version.metrics)
    assert any("reward" in e.metrics for e in events if e.kind == "step")
    assert version.recipe["grpo"]["rewards"][1]["weight"] == 2.0


def test_grpo_with_a_reward_model_version(hub, prompts: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps({"prompt": p["prompt"], "chosen": "Answer: 1", "rejected": "no"})
            for p in PROMPTS
        )
    )
    rm = hub.train(
        {
            "method": "reward",
            "name": "rm",
            "dataset": {"path": str(pairs), "eval_fraction": 0},
            "lora": {"r": 2, "target_modules": ["q_proj"]},
            "training": {"precision": "fp32", "max_steps": 1, "batch_size": 2},
        },
    )
    version = hub.train(recipe(prompts, [{"type": "reward_model", "ref": rm.ref}]))
    name = f"train/rewards/reward_model[{rm.ref}]/mean"
    assert name in version.metrics, sorted(version.metrics)
    # Only the policy is registered: the reward LoRA rode along in memory (r=2, q_proj only).
    assert hub.registry.load_adapter(version).r == 4


def test_grpo_bad_python_reward_fails_before_training(hub, prompts: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no_such_module"):
        hub.train(recipe(prompts, [{"type": "python", "function": "no_such_module:f"}]))


@pytest.mark.parametrize(("loss_type", "level"), [("dr_grpo", "token"), ("dapo", "sequence"), ("luspo", "sequence")])
def test_grpo_loss_variants_train_and_are_recorded(hub, prompts: Path, loss_type: str, level: str) -> None:  # type: ignore[no-untyped-def]
    """Dr. GRPO, GSPO (sequence-level ratios) and LUSPO run through TRL's own losses."""
    spec = recipe(prompts, [{"type": "regex", "pattern": r"^Answer: -?\d+$"}])
    spec["grpo"].update(loss_type=loss_type, importance_sampling_level=level)
    version = hub.train(spec)
    assert (version.recipe["grpo"]["loss_type"], version.recipe["grpo"]["importance_sampling_level"]) == (loss_type, level)
    assert version.metrics["train_steps"] == 1 and "train/reward" in version.metrics


def test_rloo_trains_on_the_same_rewards_with_the_parent_as_reference(hub, prompts: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tinymodels import make_lora_folder

    parent = hub.import_adapter(make_lora_folder(hub.base_info.path, tmp_path / "p"), "sft").ref
    spec = recipe(prompts, [{"type": "regex", "pattern": r"^Answer: -?\d+$"},
                            {"type": "exact_answer", "column": "answer"}], parent=parent)
    spec["rloo"] = {**spec.pop("grpo"), "normalize_advantages": True}
    version = hub.train({**spec, "method": "rloo", "name": "arith-rloo"})
    assert (version.method, version.parent) == ("rloo", parent)
    assert version.recipe["rloo"]["normalize_advantages"] is True and version.recipe["rloo"]["beta"] == 0.05
    for key in ("reward", "rewards/format/mean", "rewards/accuracy/mean"):
        assert f"train/{key}" in version.metrics, sorted(version.metrics)


def test_grpo_luspo_needs_sequence_level_ratios(hub, prompts: Path) -> None:  # type: ignore[no-untyped-def]
    spec = recipe(prompts, [{"type": "regex", "pattern": "x"}])
    spec["grpo"]["loss_type"] = "luspo"
    with pytest.raises(ConfigError, match=r"grpo: .*importance_sampling_level: sequence"):
        hub.plan_run(spec)


def test_grpo_recipe_errors_listed_at_once(hub, prompts: Path) -> None:  # type: ignore[no-untyped-def]
    bad = recipe(
        prompts, [{"type": "regex", "pattern": "("}, {"type": "exact_answer", "pattern": r"\d+"}]
    )
    with pytest.raises(ConfigError) as info:
        hub.train(bad)
    message = str(info.value)
    assert "not a valid regular expression" in message and "capture group" in message


def test_grpo_wrong_data_format_names_expected_columns(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ConfigError, match=r"'prompt_only' \(columns: prompt\)"):
        hub.train(recipe(data, [{"type": "length", "target_words": 3}]))
