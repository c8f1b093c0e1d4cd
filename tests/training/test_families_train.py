"""Every family trains and serves: 3 SFT steps over its nf4 base register a version whose
adapter targets the family's own module names, and the engine serves it exactly as PEFT does.
DoRA and all-linear targets train too; the engine refuses DoRA and says to merge it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodels import FAMILY_CONFIGS, PeftReference, build_tiny_folder

from adapterhub import Hub
from adapterhub.engine import Engine, GenerationRequest, SamplingParams
from adapterhub.engine.families import FAMILIES
from adapterhub.errors import IncompatibleAdapterError
from adapterhub.models.base import load_base

GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"capital {i}?"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(["Paris.", "Rome.", "Madrid.", "Berlin."] * 3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(data: Path, **lora: object) -> dict:  # type: ignore[type-arg]
    return {
        "method": "sft", "name": "capitals", "dataset": {"path": str(data)},
        "lora": {"r": 4, **lora},
        "training": {"precision": "nf4", "batch_size": 4, "learning_rate": 5e-3, "max_steps": 3},
    }


@pytest.mark.parametrize("model_type", [f for f in FAMILY_CONFIGS if f in FAMILIES and f != "llama"])  # llama: test_sft_run
def test_three_sft_steps_register_and_serve(model_type: str, home: Path, tmp_path: Path, data: Path) -> None:
    family = FAMILIES[model_type]
    hub = Hub(home)
    hub.init(str(build_tiny_folder(tmp_path / f"tiny-{model_type}", model_type)), precision="fp32")
    version = hub.train(recipe(data, mlp=True))
    adapter = hub.registry.load_adapter(version)
    assert adapter.target_modules == tuple(sorted((*family.attention_targets, *family.mlp_targets)))
    assert version.recipe["lora"]["target_modules"] == [*family.attention_targets, *family.mlp_targets]

    prompt = hub.base.render_chat([{"role": "user", "content": "capital 2?"}])
    folder = tmp_path / "exported"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes(hub.registry.read_file(version, name))
    reference = PeftReference(hub.base_info.path, {"capitals": folder})
    with Engine(load_base(hub.base_info.path, "fp32"), hub.registry) as engine:
        served = engine.generate(GenerationRequest(tuple(prompt), adapter=version.ref, sampling=GREEDY))
    assert list(served.token_ids) == reference.greedy(prompt, "capitals", GREEDY.max_tokens)


def test_all_linear_and_dora_train_and_dora_is_refused_by_the_engine(hub: Hub, data: Path) -> None:
    version = hub.train(recipe(data, target_modules=["all-linear"], use_dora=True))
    adapter = hub.registry.load_adapter(version)
    assert adapter.target_modules == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
    assert adapter.config["use_dora"] is True
    prompt = hub.base.render_chat([{"role": "user", "content": "capital 2?"}])
    assert isinstance(hub.generate(version.ref, "capital 2?", max_tokens=4), str)  # PEFT's path runs DoRA
    with Engine(hub.base, hub.registry) as engine, pytest.raises(IncompatibleAdapterError, match="use_dora=True.*merge"):
        engine.generate(GenerationRequest(tuple(prompt), adapter=version.ref, sampling=GREEDY))
