"""Reward model on the tiny base: it learns to rank, saves its head, and loads as a scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError

PAIRS = [
    {
        "prompt": f"Question number {i}?",
        "chosen": "Short answer.",
        "rejected": "Long rambling answer " * 4,
    }
    for i in range(12)
]


def recipe(data: Path, **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "reward",
        "name": "concise-rm",
        "dataset": {"path": str(data)},
        "lora": {"r": 4},
        "training": {"precision": "fp32", "max_steps": 12, "batch_size": 4, "learning_rate": 3e-3},
        **extra,
    }


@pytest.fixture
def reward_version(hub, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n")
    return hub.train(recipe(data))


def fresh_peft_model(tiny_base_dir: Path):  # type: ignore[no-untyped-def]
    """A private fp32 copy of the tiny base wrapped by PEFT (a policy adapter named default)."""
    from peft import LoraConfig, get_peft_model

    from adapterhub.models.base import load_base

    base = load_base(tiny_base_dir, "fp32")
    return base, get_peft_model(base.model, LoraConfig(r=2, target_modules=["q_proj"]))


def test_reward_version_has_head_and_metrics(hub, reward_version) -> None:  # type: ignore[no-untyped-def]
    assert reward_version.method == "reward"
    assert reward_version.metrics["train/accuracy"] == 1.0
    assert reward_version.metrics["eval_accuracy"] == 1.0
    assert "eval_perplexity" not in reward_version.metrics  # a ranking loss is not token NLL
    adapter = hub.registry.load_adapter(reward_version)
    (head,) = [t for k, t in adapter.extra_tensors.items() if k.endswith("score.weight")]
    assert tuple(head.shape) == (1, 64)


def test_scorer_ranks_memorised_chosen_above_rejected(
    hub, reward_version, tiny_base_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    from adapterhub.training.reward_model import load_reward_scorer

    base, model = fresh_peft_model(tiny_base_dir)
    scorer = load_reward_scorer(
        hub.registry,
        reward_version.ref,
        model,
        base.tokenizer,
        base_fingerprint=base.info.fingerprint,
        template_hash=base.info.template_hash,
    )
    pair = PAIRS[3]
    chosen, rejected = scorer.score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    assert chosen > rejected
    # The policy adapter is untouched: still active, still trainable; the reward adapter is frozen.
    assert model.active_adapter == "default"
    assert all(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".reward." in n)


def test_scorer_equals_the_trained_sequence_classifier(
    hub, reward_version, tiny_base_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The scorer (LoRA switched in on the causal LM + head) gives the classifier's own score."""
    import torch
    from peft import PeftModel

    from adapterhub.models.base import load_base
    from adapterhub.training.reward_model import load_reward_scorer, score_model_over

    folder = hub.registry.export(reward_version, tmp_path / "rm")
    reference = load_base(tiny_base_dir, "fp32")
    classifier = PeftModel.from_pretrained(score_model_over(reference.model), folder).eval()
    classifier.config.pad_token_id = reference.tokenizer.pad_token_id

    base, model = fresh_peft_model(tiny_base_dir)
    scorer = load_reward_scorer(
        hub.registry,
        reward_version.ref,
        model,
        base.tokenizer,
        base_fingerprint=base.info.fingerprint,
        template_hash=base.info.template_hash,
    )
    for pair in PAIRS[:3]:
        ids = scorer.render(pair["prompt"], pair["rejected"])
        with torch.no_grad():
            expected = classifier(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert scorer.score_ids([ids])[0] == pytest.approx(expected, abs=1e-4)


def test_scorer_refuses_a_version_that_is_not_a_reward_model(
    hub, tiny_base_dir: Path, lora_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    from adapterhub.training.reward_model import load_reward_scorer

    ref = hub.import_adapter(lora_dir, "pirate").ref
    base, model = fresh_peft_model(tiny_base_dir)
    with pytest.raises(ConfigError, match="not 'reward'"):
        load_reward_scorer(
            hub.registry,
            ref,
            model,
            base.tokenizer,
            base_fingerprint=base.info.fingerprint,
            template_hash=base.info.template_hash,
        )


def test_reward_wrong_data_format_names_expected_columns(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match="prompt, chosen, rejected"):
        hub.train(recipe(data))
