"""A row of a mixed batch gets what PEFT gives that request run alone with its adapter."""

from __future__ import annotations

import pytest
import torch

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.llama import LlamaRunner, compute_dtype, projection_dims
from adapterhub.engine.lora import LoraSlots, prepare_adapter

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def test_mixed_batch_tokens_equal_peft_alone(make_engine, peft_ref, prompts):
    engine = make_engine(max_slots=3)
    plan = [(prompts[0], "alpha"), (prompts[1], "beta"), (prompts[2], None), (prompts[3], "gamma"),
            (prompts[1], "alpha"), (prompts[0], None)]
    results = engine.generate_many(
        [GenerationRequest(tuple(p), adapter=a, sampling=GREEDY) for p, a in plan]
    )
    for (prompt, adapter), result in zip(plan, results, strict=True):
        assert list(result.token_ids) == peft_ref.greedy(prompt, adapter, GREEDY.max_tokens)
        assert result.finish_reason == "length"
        assert result.usage.completion_tokens == GREEDY.max_tokens
        assert result.adapter_version == (f"{adapter}@1" if adapter else None)
    # the adapters really change the output, so equality above is not vacuous
    assert results[0].token_ids != results[5].token_ids
