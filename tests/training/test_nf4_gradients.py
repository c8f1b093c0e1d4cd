"""A base loaded for training stays differentiable after an eval-mode pass (bitsandbytes' CPU
repacking, see :func:`adapterhub.models.base.keep_4bit_differentiable`).

PPO samples and scores in eval mode between updates, and every run may evaluate mid-training, so
the gradients of a training step must not depend on whether such a pass came first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapterhub.core.hardware import detect_platform
from adapterhub.models.base import load_base


def lora_gradients(base_dir: Path, *, for_training: bool, eval_pass_first: bool) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load_base(base_dir, "nf4", for_training=for_training, platform=detect_platform(nf4="kernel")).model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                   init_lora_weights=False),
    )
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    if eval_pass_first:  # what a rollout, a reward score or an evaluation does
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradients_after_an_eval_pass_equal_those_of_a_fresh_model(tiny_base_dir: Path) -> None:
    fresh = lora_gradients(tiny_base_dir, for_training=True, eval_pass_first=False)
    after_eval = lora_gradients(tiny_base_dir, for_training=True, eval_pass_first=True)
    assert fresh.keys() == after_eval.keys() and len(fresh) == 2 * 4 * 2  # A and B, 4 modules, 2 layers
    for name, grad in fresh.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(after_eval[name], grad, msg=name)


def test_without_the_guard_bitsandbytes_drops_gradients_on_this_cpu(tiny_base_dir: Path) -> None:
    """The failure the guard prevents, shown where it happens (CPUs with AVX512-BF16): when this
    test fails on such a CPU, bitsandbytes has fixed it and the guard can go."""
    if not detect_platform().fast_nf4_kernel:
        pytest.skip("this CPU has no AVX512-BF16 (or torch is capped below it): NF4 layers are never repacked here")
    fresh = lora_gradients(tiny_base_dir, for_training=False, eval_pass_first=False)
    after_eval = lora_gradients(tiny_base_dir, for_training=False, eval_pass_first=True)
    differs = [n for n in fresh if not torch.allclose(fresh[n], after_eval[n])]
    assert differs, "an eval pass no longer changes the gradients of an unguarded NF4 model"
