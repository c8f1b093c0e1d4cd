"""Training options users set in LLaMA-Factory and PEFT, on the tiny base: LoRA+ (B at a higher
learning rate) and SFT's NEFTune (noisy embeddings while training) doing what they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub.core.progress import ProgressEvent
from adapterhub.training.recipe import RecipeBase


def recipe(data: Path, *, lora: dict | None = None, sft: dict | None = None, **training: object) -> dict:  # type: ignore[type-arg]
    return {"method": "sft", "name": "capitals", "dataset": {"path": str(data), "eval_fraction": 0},
            "forgetting_check": False, "lora": {"dropout": 0.0, **(lora or {})}, "sft": sft or {},
            "training": {"precision": "fp32", "batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, **training}}


def test_loraplus_trains_b_at_its_ratio_of_the_learning_rate(hub, capitals_data: Path, tiny_base_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model

    from adapterhub.models.base import load_base
    from adapterhub.training.loading import load_recipe
    from adapterhub.training.run import loraplus_optimizer

    spec: RecipeBase = load_recipe(recipe(capitals_data, lora={"plus_lr_ratio": 16}))[0]
    model = get_peft_model(load_base(tiny_base_dir, "fp32").model, LoraConfig(r=4, target_modules=["q_proj"]))
    optimizer = loraplus_optimizer(model, spec)
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {("lora_B" in names[id(p)]): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates == {False: pytest.approx(1e-3), True: pytest.approx(16e-3)}

    version = hub.train(recipe(capitals_data, lora={"plus_lr_ratio": 16}))  # through the runner, recorded
    assert version.recipe["lora"]["plus_lr_ratio"] == 16 and version.metrics["train_steps"] == 2


def test_neftune_noise_changes_the_training_loss(hub, capitals_data: Path) -> None:  # type: ignore[no-untyped-def]
    def first_loss(**sft: object) -> float:
        events: list[ProgressEvent] = []
        hub.train(recipe(capitals_data, sft=sft), progress=events.append)
        return next(e.loss for e in events if e.kind == "step" and e.loss is not None)

    plain = first_loss()
    assert first_loss() == pytest.approx(plain, rel=1e-6)  # the same run twice: the same loss
    assert first_loss(neftune_noise_alpha=50.0) != pytest.approx(plain, rel=1e-4)  # noisy embeddings
