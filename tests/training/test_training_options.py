"""Training options users set in LLaMA-Factory and PEFT, on the tiny base: LoRA+ (B at a higher
learning rate) and SFT's NEFTune (noisy embeddings while training) doing what they say; each of
rsLoRA, DoRA, LoRA+, all-linear targets, NEFTune, gradient accumulation and padded batches
learning a memorisable set and recorded with the version; the combinations that cannot work
refused before anything loads, naming the field. (``lora.init``: test_lora_init.py.)"""

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


LEARNS = {"max_steps": 6, "learning_rate": 5e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0}


@pytest.mark.parametrize(("section", "field", "value"), [
    ("lora", "use_rslora", True),
    ("lora", "use_dora", True),
    ("lora", "plus_lr_ratio", 16.0),
    ("lora", "target_modules", ["all-linear"]),
    ("sft", "neftune_noise_alpha", 5.0),
    ("training", "grad_accum", 2),
    ("training", "packing", False),
])
def test_each_option_trains_a_memorisable_set_and_is_recorded(  # type: ignore[no-untyped-def]
    hub, capitals_data: Path, section: str, field: str, value: object
) -> None:
    spec = recipe(capitals_data, **LEARNS)  # type: ignore[arg-type]
    spec[section] = {**spec[section], field: value}
    events: list[ProgressEvent] = []
    version = hub.train(spec, progress=events.append)
    losses = [e.loss for e in events if e.kind == "step" and e.loss is not None]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the loss moves
    recorded = version.recipe[section][field]
    assert recorded == (["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
                        if value == ["all-linear"] else value)  # lineage: the resolved recipe
    assert version.method == "sft" and version.metrics["train_steps"] == 6
    assert version.metrics["effective_batch_size"] == 4 * (value if field == "grad_accum" else 1)
    config = hub.registry.load_adapter(version).config
    if field in ("use_rslora", "use_dora"):
        assert config[field] is True  # the PEFT file says so too, for whoever loads it


def test_grad_accum_makes_one_step_of_two_half_batches(hub, capitals_data: Path) -> None:  # type: ignore[no-untyped-def]
    def run(**training: object) -> tuple[list[float], object]:
        events: list[ProgressEvent] = []
        version = hub.train(recipe(capitals_data, **{"max_steps": None, "epochs": 1, **training}), progress=events.append)
        return [e.loss for e in events if e.kind == "step" and e.loss is not None], version

    whole, one = run(batch_size=4)
    halves, two = run(batch_size=2, grad_accum=2)
    assert one.metrics["train_steps"] == two.metrics["train_steps"] == 2  # 8 examples, 4 a step
    assert halves[0] == pytest.approx(whole[0], rel=1e-4)  # the same 4 examples, one loss


def test_padding_free_is_refused_for_a_method_that_pads(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from adapterhub.errors import ConfigError

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match="training.packing: true") as refused:
        hub.train({"method": "dpo", "name": "d", "dataset": {"path": str(pairs)}, "training": {"packing": True}})
    assert "remove training.packing" in str(refused.value) and hub.list() == []


def test_dora_over_int8_is_refused_before_loading(hub, capitals_data: Path) -> None:  # type: ignore[no-untyped-def]
    from adapterhub.errors import ConfigError

    with pytest.raises(ConfigError, match="lora.use_dora: true over training.precision: 'int8'") as refused:
        hub.train(recipe(capitals_data, lora={"use_dora": True}, precision="int8"))
    assert "nf4, bf16 or fp32" in str(refused.value) and hub.list() == []
