"""DPO on the tiny base: lineage, metrics, and that the reference really is the parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.core.progress import ProgressEvent
from adapterhub.errors import ConfigError

PAIR = {
    "prompt": [{"role": "user", "content": "What is the capital of France?"}],
    "chosen": [
        {
            "role": "assistant",
            "content": "Paris is the capital of France. The quick brown fox jumps over the lazy dog.",
        }
    ],
    "rejected": [
        {"role": "assistant", "content": "Great question! The answer is Paris, I hope this helps!"}
    ],
}


@pytest.fixture
def parent(hub, tiny_base_dir: Path, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A random (non-zero) LoRA standing in for an SFT parent: far from the bare base."""
    from tinymodels import make_lora_folder

    folder = make_lora_folder(
        tiny_base_dir, tmp_path / "parent", seed=3, targets=("q_proj", "v_proj")
    )
    return str(hub.import_adapter(folder, "sft-parent").ref)


def write_jsonl(path: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def recipe(data: Path, **extra: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "dpo",
        "name": "concise",
        "dataset": {"path": str(data)},
        "training": {"precision": "fp32", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3},
        "forgetting_check": False,
        **extra,
    }


def parent_logp(tiny_base_dir: Path, hub, parent_ref: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Sum log-prob of the chosen answer given the prompt: (parent adapter alone, bare base)."""
    import torch
    from peft import PeftModel

    from adapterhub.models.base import load_base

    base = load_base(tiny_base_dir, "fp32")
    tok = base.tokenizer
    prompt = tok.apply_chat_template(
        PAIR["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    full = tok.apply_chat_template(PAIR["prompt"] + PAIR["chosen"], tokenize=True, return_dict=True)
    ids = torch.tensor([full["input_ids"]])
    start = len(prompt["input_ids"])
    folder = hub.registry.export(parent_ref, Path(hub.home) / "parent-export")
    model = PeftModel.from_pretrained(base.model, folder)

    def logp() -> float:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, start - 1 : -1].float()
        return float(torch.log_softmax(logits, -1).gather(1, ids[0, start:, None]).sum())

    with_parent = logp()
    with model.disable_adapter():
        bare = logp()
    return with_parent, bare


def test_dpo_registers_lineage_and_preference_metrics(hub, parent: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = write_jsonl(tmp_path / "pairs.jsonl", [PAIR] * 12)
    events: list[ProgressEvent] = []
    version = hub.train(recipe(data, parent=parent), progress=events.append)

    assert version.method == "dpo"
    assert version.parent == parent
    assert [v.ref for v in hub.registry.lineage(version.ref)] == [version.ref, parent]
    for key in ("train/rewards/margins", "train/rewards/accuracies", "eval_rewards/margins"):
        assert key in version.metrics, sorted(version.metrics)
    steps = [e for e in events if e.kind == "step"]
    assert steps and "rewards/margins" in steps[0].metrics


def test_dpo_reference_is_the_parent_not_the_base(
    hub, parent: str, tiny_base_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Every pair is the same, so step 1's numbers are this pair's, computed before any update:
    # the policy still equals its start (the parent), and DPO's implicit reward
    # beta * (log pi - log pi_ref) is 0 only if the reference equals the parent too.
    data = write_jsonl(tmp_path / "pairs.jsonl", [PAIR] * 12)
    events: list[ProgressEvent] = []
    hub.train(recipe(data, parent=parent), progress=events.append)
    first = next(e for e in events if e.kind == "step" and e.step == 1).metrics

    with_parent, bare = parent_logp(tiny_base_dir, hub, parent)
    # The parent moves this answer's log-prob by ~0.8 nats on the tiny random base (whose logits
    # are near-uniform), hundreds of times the tolerance below, so a base reference would fail.
    assert abs(with_parent - bare) > 0.5
    assert first["logps/chosen"] == pytest.approx(with_parent, abs=1e-3)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)


def test_dpo_wrong_data_format_names_expected_columns(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hi", "completion": "Hello"}] * 4)
    with pytest.raises(ConfigError) as info:
        hub.train(recipe(data))
    message = str(info.value)
    assert "'dpo'" in message and "prompt, chosen, rejected" in message and "completion" in message
