"""A mix as one derived LoRA: its delta is exactly the weighted sum of the parts' deltas, on every
module, whatever the parts' ranks, scalings (alpha, rsLoRA, rank_pattern) and targets; and PEFT
loads the saved folder and computes the same as the base plus that sum."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinymodels import save_lora

from adapterhub.errors import IncompatibleAdapterError
from adapterhub.models.adapters import load_lora_folder
from adapterhub.models.mixing import mix_loras, mix_rank, module_delta, save_lora_folder


@pytest.fixture(scope="module")
def parts(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("mix-parts")
    return [
        save_lora(tiny_base_dir, root / "a", seed=1, r=4, targets=("q_proj", "v_proj")),
        save_lora(tiny_base_dir, root / "b", seed=2, r=2, targets=("v_proj", "o_proj"), use_rslora=True),
        save_lora(tiny_base_dir, root / "c", seed=3, r=4, targets=("q_proj", "k_proj"),
                  rank_pattern={"k_proj": 2}, alpha_pattern={"q_proj": 3}),
    ]


def test_mix_delta_is_the_weighted_sum_on_every_module(parts: list[Path]) -> None:
    adapters = [load_lora_folder(p) for p in parts]
    weights = [0.7, -0.4, 1.3]
    mixed = mix_loras(adapters, weights, label="mix")
    assert mixed.r == mix_rank(adapters) == 4 + 2 + 4
    assert mixed.scaling == 1.0
    modules = set().union(*(a.pairs() for a in adapters))
    assert set(mixed.pairs()) == modules
    for module in modules:
        expected = sum(w * d for a, w in zip(adapters, weights, strict=True)
                       if (d := module_delta(a, module)) is not None)
        got = module_delta(mixed, module)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_saved_mix_loads_in_peft_and_matches_the_summed_weights(parts: list[Path], tiny_base_dir: Path,
                                                                 tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapters = [load_lora_folder(p) for p in parts[:2]]
    weights = [0.5, 2.0]
    folder = save_lora_folder(mix_loras(adapters, weights), tmp_path / "mixed")
    assert load_lora_folder(folder).r == 6  # what a replica reads back passes our own checks
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, folder)
    with torch.no_grad():
        got = peft(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    params = dict(merged.named_parameters())
    modules = set().union(*(a.pairs() for a in adapters))
    with torch.no_grad():
        for module in modules:
            delta = sum(w * d for a, w in zip(adapters, weights, strict=True)
                        if (d := module_delta(a, module)) is not None)
            params[f"{module}.weight"] += delta
        expected = merged(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_rank_over_the_limit_is_refused_naming_it(parts: list[Path]) -> None:
    adapters = [load_lora_folder(p) for p in parts]
    with pytest.raises(IncompatibleAdapterError, match=r"rank 10 .*max_lora_rank=8"):
        mix_loras(adapters, [1, 1, 1], max_rank=8, label="mix")


def test_parts_that_do_not_add_linearly_are_refused(parts: list[Path]) -> None:
    plain = load_lora_folder(parts[0])
    dora = type(plain)(config={**plain.config, "use_dora": True}, tensors=plain.tensors, ref="d@1")
    with pytest.raises(IncompatibleAdapterError, match="use_dora"):
        mix_loras([plain, dora], [1, 1])
