"""Our PPO on the tiny base: lineage, the practitioner's metrics, reference = parent, resume.

The loss pieces are checked by hand in ``test_ppo_losses.py``; here the whole loop runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.core.progress import CancelToken, ProgressEvent
from adapterhub.errors import ConfigError, TrainingCancelled

QUESTIONS = [f"Question number {i}?" for i in range(10)]


@pytest.fixture
def chain(hub, tiny_base_dir: Path, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """An SFT stand-in parent, a reward model and prompt data: the inputs of a PPO run."""
    from tinymodels import make_lora_folder

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps({"prompt": q, "chosen": "Short.", "rejected": "Long " * 8})
            for q in QUESTIONS
        )
    )
    rm = hub.train(
        {
            "method": "reward",
            "name": "rm",
            "dataset": {"path": str(pairs), "eval_fraction": 0},
            "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
            "training": {"precision": "fp32", "max_steps": 2, "batch_size": 4},
        },
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": q}) for q in QUESTIONS))
    parent = hub.import_adapter(
        make_lora_folder(tiny_base_dir, tmp_path / "sft", seed=2), "sft"
    ).ref
    return {"rm": rm.ref, "parent": parent, "prompts": str(prompts)}


def recipe(chain: dict[str, str], **training: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "ppo",
        "name": "ppo-policy",
        "parent": chain["parent"],
        "dataset": {"path": chain["prompts"], "eval_fraction": 0.2},
        "ppo": {"reward_model": chain["rm"], "max_new_tokens": 6, "num_minibatches": 2},
        "training": {
            "precision": "fp32",
            "max_steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
            **training,
        },
        "forgetting_check": False,
    }


def test_ppo_registers_policy_with_lineage_and_metrics(hub, chain: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    events: list[ProgressEvent] = []
    version = hub.train(recipe(chain), progress=events.append)

    assert version.method == "ppo" and version.parent == chain["parent"]
    for key in (
        "reward",
        "kl",
        "clip_fraction",
        "value_loss",
        "policy_loss",
        "entropy",
        "completion_length",
    ):
        assert f"train/{key}" in version.metrics, sorted(version.metrics)
    assert "eval_reward" in version.metrics and "eval_kl" in version.metrics
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2]
    # The first rollout is sampled by the untouched policy: its KL to the reference is exactly 0
    # only because the reference is the parent the policy started from.
    assert steps[0].metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    # The policy moved, so the second rollout has a KL to the reference.
    assert abs(steps[1].metrics["kl"]) > 1e-6
    # What is registered is the policy (the parent's shape), not the value or reward adapters.
    parent = hub.registry.load_adapter(chain["parent"])
    policy = hub.registry.load_adapter(version)
    assert policy.r == parent.r and set(policy.tensors) == set(parent.tensors)
    assert not policy.extra_tensors


def test_ppo_resumes_policy_and_value_from_a_checkpoint(hub, chain: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    cancel = CancelToken()

    def stop_after_first_step(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 1:
            cancel.cancel()

    # Cancel stops at the step boundary where it is seen (the progress bridge checks after each
    # step and after each logged event) and that step is checkpointed; the rest is left.
    with pytest.raises(TrainingCancelled):
        hub.train(
            recipe(chain, max_steps=3, save_steps=1),
            progress=stop_after_first_step,
            cancel=cancel,
        )
    (checkpoint,) = (hub.home / "runs").glob("ppo-policy-*/checkpoints/checkpoint-*")
    stopped_at = int(checkpoint.name.rsplit("-", 1)[1])
    assert stopped_at < 3
    assert (checkpoint / "ppo_value_head.safetensors").is_file()
    assert (checkpoint / "value" / "adapter_model.safetensors").is_file()

    events: list[ProgressEvent] = []
    version = hub.train(
        recipe(chain, max_steps=3, save_steps=1), progress=events.append, resume=True
    )
    assert [e.step for e in events if e.kind == "step"] == list(range(stopped_at + 1, 4))
    assert version.metrics["train_steps"] == 3


def test_ppo_refuses_a_reward_model_that_is_not_one(hub, chain: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    bad = recipe(chain)
    bad["ppo"]["reward_model"] = chain["parent"]
    with pytest.raises(ConfigError, match="not 'reward'"):
        hub.train(bad)


def test_ppo_wrong_data_format_names_expected_columns(
    hub, chain: dict[str, str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n")
    bad = recipe(chain)
    bad["dataset"] = {"path": str(data)}
    with pytest.raises(ConfigError, match=r"'ppo' needs 'prompt_only' \(columns: prompt\)"):
        hub.train(bad)
