"""``lora.init``: PiSSA and OLoRA start at a slice of the base and train on the rest; the version
registered is a plain LoRA of rank 2r over the original base that gives what was trained, and the
engine serves it as PEFT does. Where the combination cannot work it is refused before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinymodels import PeftReference

from adapterhub import Hub
from adapterhub.core.progress import ProgressEvent
from adapterhub.engine import Engine, GenerationRequest, SamplingParams
from adapterhub.errors import ConfigError
from adapterhub.models.base import load_base

R = 4
TARGETS = ["q_proj", "v_proj"]


def recipe(data: Path, init: str, **training: object) -> dict:  # type: ignore[type-arg]
    return {"method": "sft", "name": f"capitals-{init}", "dataset": {"path": str(data), "eval_fraction": 0},
            "lora": {"r": R, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS, "init": init},
            "training": {"precision": "fp32", "batch_size": 4, "max_steps": 6, "learning_rate": 5e-3,
                         "lr_scheduler": "constant", "warmup_ratio": 0.0, **training}}


def exported(hub: Hub, version: object, folder: Path) -> Path:
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes(hub.registry.read_file(version, name))
    return folder


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_rewriting_init_registers_a_plain_lora_that_gives_the_trained_model(
    init: str, hub: Hub, capitals_data: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    events: list[ProgressEvent] = []
    version = hub.train(recipe(capitals_data, init), progress=events.append)
    losses = [e.loss for e in events if e.kind == "step" and e.loss is not None]
    assert losses[-1] < losses[0]  # it learns the memorisable set
    assert version.recipe["lora"]["init"] == init and version.method == "sft"
    assert version.metrics["lora"]["init"] == init and version.metrics["lora"]["registered_r"] == 2 * R
    assert version.metrics["train_steps"] == 6 and "general_ppl_ratio" in version.metrics
    adapter = hub.registry.load_adapter(version)
    assert adapter.config["r"] == 2 * R and adapter.config["init_lora_weights"] is True

    # The trained model, rebuilt independently: PEFT's own init rewrites a fresh base to W - B0 A0
    # (deterministic), and the trained B, A are the first halves of the registered [B, -B0], [A; A0].
    folder = exported(hub, version, tmp_path / "registered")
    weights = load_file(folder / "adapter_model.safetensors")
    trained = get_peft_model(load_base(hub.base_info.path, "fp32").model, LoraConfig(
        r=R, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, module in trained.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                key = name.removeprefix("base_model.model.")
                a, b = weights[f"base_model.model.{key}.lora_A.weight"], weights[f"base_model.model.{key}.lora_B.weight"]
                assert not torch.equal(a[:R], module.lora_A["default"].weight)  # training moved it
                module.lora_A["default"].weight.copy_(a[:R])
                module.lora_B["default"].weight.copy_(b[:, :R])
    trained.eval()
    reference = PeftReference(hub.base_info.path, {"registered": folder})  # on the original base
    prompt = hub.base.render_chat([{"role": "user", "content": "capital?"}])
    with torch.inference_mode():
        rebuilt = trained(input_ids=torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(reference.logits(prompt, "registered"), rebuilt, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(reference.logits(prompt, None), rebuilt, atol=1e-3)  # and it is not the base

    greedy = SamplingParams(max_tokens=6, ignore_eos=True)
    with Engine(hub.base, hub.registry) as engine:
        served = engine.generate(GenerationRequest(tuple(prompt), adapter=version.ref, sampling=greedy))
    assert list(served.token_ids) == reference.greedy(prompt, "registered", greedy.max_tokens)


def test_gaussian_init_is_recorded(hub: Hub, capitals_data: Path) -> None:
    version = hub.train(recipe(capitals_data, "gaussian", max_steps=2))
    assert version.recipe["lora"]["init"] == "gaussian" and version.metrics["lora"]["init"] == "gaussian"
    assert hub.registry.load_adapter(version).config["init_lora_weights"] == "gaussian"


@pytest.mark.parametrize(("change", "named"), [
    ({"training": {"precision": "nf4"}}, "training.precision: bf16 or fp32"),
    ({"training": {"precision": "int8"}}, "training.precision: bf16 or fp32"),
    ({"lora": {"use_dora": True}}, "lora.use_dora"),
    ({"method": "dpo"}, "method 'dpo'"),
    ({"parent": "capitals@1"}, "parent 'capitals@1'"),
])
def test_combinations_that_cannot_work_are_refused_before_loading(
    hub: Hub, capitals_data: Path, change: dict, named: str  # type: ignore[type-arg]
) -> None:
    spec = recipe(capitals_data, "pissa")
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    if spec["method"] == "dpo":
        spec.pop("sft", None)
    with pytest.raises(ConfigError, match="lora.init: 'pissa'") as refused:
        hub.train(spec)
    assert named in str(refused.value)
    assert hub.list() == []  # nothing trained, nothing registered


def test_loftq_start_takes_back_part_of_what_nf4_lost(hub: Hub) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from adapterhub.training.run import _loftq_start

    prompt = torch.tensor([hub.base.render_chat([{"role": "user", "content": "capital?"}])])
    path = hub.base_info.path
    with torch.inference_mode():
        full = load_base(path, "fp32").model(input_ids=prompt).logits[0]
    model = get_peft_model(load_base(path, "nf4", for_training=True).model,
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.eval()
    with torch.inference_mode():
        quantised = model(input_ids=prompt).logits[0]  # B = 0: the nf4 base
    _loftq_start(model, path)
    with torch.inference_mode():
        corrected = model(input_ids=prompt).logits[0]
    assert (corrected - full).abs().mean() < 0.9 * (quantised - full).abs().mean()


def test_loftq_trains_over_nf4_and_is_served_as_peft_serves_it(hub: Hub, capitals_data: Path, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    version = hub.train(recipe(capitals_data, "loftq", precision="nf4"), progress=events.append)
    losses = [e.loss for e in events if e.kind == "step" and e.loss is not None]
    assert losses[-1] < losses[0]
    assert version.recipe["lora"]["init"] == "loftq" and version.metrics["lora"]["init"] == "loftq"
    adapter = hub.registry.load_adapter(version)
    assert adapter.config["r"] == R  # a plain LoRA over the same base: nothing to convert
    folder = exported(hub, version, tmp_path / "registered")
    reference = PeftReference(hub.base_info.path, {"registered": folder}, "nf4")
    prompt = hub.base.render_chat([{"role": "user", "content": "capital?"}])
    greedy = SamplingParams(max_tokens=6, ignore_eos=True)
    with Engine(load_base(hub.base_info.path, "nf4"), hub.registry) as engine:
        served = engine.generate(GenerationRequest(tuple(prompt), adapter=version.ref, sampling=greedy))
    assert list(served.token_ids) == reference.greedy(prompt, "registered", greedy.max_tokens)


@pytest.mark.parametrize(("init", "change", "named"), [
    ("loftq", {"training": {"precision": "bf16"}}, "set training.precision: nf4"),
    ("loftq", {"lora": {"use_dora": True}}, "lora.use_dora"),
    ("gaussian", {"parent": "capitals@1"}, "parent 'capitals@1'"),
    ("gaussian", {"method": "reward"}, "method 'reward'"),
])
def test_other_inits_refuse_what_cannot_work(hub: Hub, capitals_data: Path, init: str, change: dict, named: str) -> None:  # type: ignore[type-arg]
    spec = recipe(capitals_data, init, precision="nf4")
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=f"lora.init: {init!r}") as refused:
        hub.train(spec)
    assert named in str(refused.value) and hub.list() == []


def test_a_resumed_pissa_run_registers_what_an_uninterrupted_one_does(hub: Hub, capitals_data: Path) -> None:
    import torch
    from safetensors.torch import load

    from adapterhub.errors import TrainingError

    spec = {**recipe(capitals_data, "pissa", save_steps=2), "forgetting_check": False}
    whole = hub.train(spec)

    def crash_at_step_5(event: ProgressEvent) -> None:
        if event.kind == "step" and event.step == 5:
            raise RuntimeError("power cut")

    with pytest.raises(TrainingError, match="power cut"):
        hub.train(spec, progress=crash_at_step_5)
    resumed = hub.train(spec, resume=True)  # the start is decomposed again, the checkpoint not
    assert resumed.metrics["train_steps"] == 6
    a = load(hub.registry.read_file(whole, "adapter_model.safetensors"))
    b = load(hub.registry.read_file(resumed, "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
