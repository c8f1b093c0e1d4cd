"""The reference path (``Hub.generate``, the evaluation scripts) never moves the base it shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adapterhub.core.hardware import detect_platform
from adapterhub.engine.simple import ReferencePath


def _packed(model: Any) -> int:
    return sum(bool(getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False))
               for m in model.modules())


def test_loading_adapters_leaves_the_nf4_base_exactly_as_it_was(
    tiny_base_dir: Path, adapter_registry: Any, prompts: list[list[int]]
) -> None:
    """On a CPU with AVX512-BF16 bitsandbytes packs NF4 weights at the first forward, and PEFT's
    adapter loading reads the state dict, which unpacked them with re-quantised statistics: the
    bare base's logits then moved (by up to 1.7 on SmolLM2-135M). Elsewhere nothing is packed and
    the base must stay equal all the same."""
    from adapterhub.models.base import load_base

    base = load_base(tiny_base_dir, "nf4")
    reference = ReferencePath(base, adapter_registry)
    ids = torch.tensor([prompts[0]])

    def logits(ref: str | None) -> torch.Tensor:
        with reference.activated(ref) as model, torch.inference_mode():
            return model(input_ids=ids).logits.float()

    before = logits(None)
    if detect_platform().fast_nf4_kernel:
        assert _packed(base.model) > 0  # the path this test is about is taken here
    with_alpha = logits("alpha")
    logits("beta")  # a second adapter loads into the same PEFT model
    torch.testing.assert_close(logits(None), before, rtol=0, atol=0)
    torch.testing.assert_close(logits("alpha"), with_alpha, rtol=0, atol=0)
    assert not torch.allclose(with_alpha, before)  # the adapter does change the answer
