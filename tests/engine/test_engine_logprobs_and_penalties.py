"""Log-probabilities and logit adjustments, per row of a mixed batch, against PEFT alone.

Log-probabilities are the model's distribution for the row's adapter (PEFT's log-softmax to
1e-4); bias and penalties change the choice as transformers' own logits processors do
(``SequenceBiasLogitsProcessor``, ``RepetitionPenaltyLogitsProcessor``) with OpenAI's presence and
frequency formula on top, rows without them in the same batch untouched.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.errors import ConfigError


def test_logprobs_are_peft_log_softmax_per_row(make_engine: Any, peft_ref: Any, prompts: list[list[int]]) -> None:
    engine = make_engine(max_slots=3)
    plan = [(prompts[0], "alpha", 5), (prompts[1], None, 0), (prompts[2], "beta", None), (prompts[3], "gamma", 20)]
    results = engine.generate_many([
        GenerationRequest(tuple(p), adapter=a, sampling=SamplingParams(max_tokens=6, ignore_eos=True, logprobs=k))
        for p, a, k in plan
    ])
    for (prompt, adapter, k), result in zip(plan, results, strict=True):
        if k is None:
            assert result.logprobs == ()
            continue
        assert [lp.token_id for lp in result.logprobs] == list(result.token_ids)
        seq = list(prompt)
        for lp in result.logprobs:
            expected = torch.log_softmax(peft_ref.logits(seq, adapter), dim=-1)
            assert lp.logprob == pytest.approx(float(expected[lp.token_id]), abs=1e-4)
            assert len(lp.top) == k
            top = torch.topk(expected, k)
            assert [t for t, _ in lp.top] == top.indices.tolist()
            assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
            seq.append(lp.token_id)


def _reference_choice(logits: torch.Tensor, prompt: list[int], generated: list[int], params: SamplingParams) -> int:
    """The greedy token after transformers' processors (vLLM's order) and OpenAI's penalties."""
    from transformers import RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor

    ids = torch.tensor([prompt + generated])
    scores = logits[None].clone()
    if params.logit_bias:
        scores = SequenceBiasLogitsProcessor({(t,): b for t, b in params.logit_bias})(ids, scores)
    if params.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
    for token, count in Counter(generated).items():  # OpenAI: mu - c * frequency - (c > 0) * presence
        scores[0, token] -= count * params.frequency_penalty + params.presence_penalty
    return int(scores[0].argmax())


def test_bias_and_penalties_change_tokens_as_transformers_processors_do(
    make_engine: Any, peft_ref: Any, prompts: list[list[int]]
) -> None:
    engine = make_engine(max_slots=3)
    plain = engine.generate(GenerationRequest(tuple(prompts[0]), adapter="alpha",
                                              sampling=SamplingParams(max_tokens=10, ignore_eos=True)))
    favourite = Counter(plain.token_ids).most_common(1)[0][0]
    settings = [
        SamplingParams(max_tokens=10, ignore_eos=True, repetition_penalty=1.8),
        SamplingParams(max_tokens=10, ignore_eos=True, presence_penalty=1.5, frequency_penalty=0.7),
        SamplingParams(max_tokens=10, ignore_eos=True, logit_bias=((favourite, -100.0), (7, 3.0))),
        SamplingParams(max_tokens=10, ignore_eos=True),  # no adjustment, in the same batch
        SamplingParams(max_tokens=10, ignore_eos=True, logit_bias=((11, 1.0),), repetition_penalty=1.3,
                       frequency_penalty=-0.5),
    ]
    adapters = ["alpha", "beta", "alpha", "alpha", None]
    results = engine.generate_many([
        GenerationRequest(tuple(prompts[0]), adapter=a, sampling=s) for a, s in zip(adapters, settings, strict=True)
    ])
    for adapter, params, result in zip(adapters, settings, results, strict=True):
        generated: list[int] = []
        for _ in range(params.max_tokens):
            generated.append(_reference_choice(peft_ref.logits(prompts[0] + generated, adapter),
                                               prompts[0], generated, params))
        assert list(result.token_ids) == generated, params
    assert list(results[3].token_ids) == list(plain.token_ids)
    assert favourite not in results[2].token_ids
    assert results[0].token_ids != plain.token_ids  # the penalty bites


def test_bad_adjustments_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="presence_penalty=3.0") as raised:
        SamplingParams(presence_penalty=3.0, repetition_penalty=0.0, logprobs=21, logit_bias=((-1, 1.0),))
    message = str(raised.value)
    assert "repetition_penalty=0.0" in message and "logprobs=21" in message and "logit_bias" in message


def test_prompt_logprobs_score_the_prompt_as_peft_does(make_engine: Any, peft_ref: Any, prompts: list[list[int]]) -> None:
    """``prompt_logprobs`` (the completions API's ``echo``): every prompt token after the first,
    scored by the row's adapter at prefill; ``max_tokens=0`` scores and stops."""
    engine = make_engine(max_slots=3)
    plan = [(prompts[0], "beta", 0, 3), (prompts[1], None, 2, 0), (prompts[3], "alpha", 1, None)]
    results = engine.generate_many([
        GenerationRequest(tuple(p), adapter=a, sampling=SamplingParams(max_tokens=n, ignore_eos=True, prompt_logprobs=k))
        for p, a, n, k in plan
    ])
    for (prompt, adapter, n, k), result in zip(plan, results, strict=True):
        assert len(result.token_ids) == n and result.finish_reason == "length"
        if k is None:
            assert result.prompt_logprobs == ()
            continue
        assert result.prompt_logprobs[0] is None and len(result.prompt_logprobs) == len(prompt)
        for position, scored in enumerate(result.prompt_logprobs[1:], start=1):
            expected = torch.log_softmax(peft_ref.logits(prompt[:position], adapter), dim=-1)
            assert scored.token_id == prompt[position]
            assert scored.logprob == pytest.approx(float(expected[prompt[position]]), abs=1e-4)
            assert [t for t, _ in scored.top] == torch.topk(expected, k).indices.tolist() if k else scored.top == ()


def test_max_tokens_zero_needs_prompt_logprobs() -> None:
    with pytest.raises(ConfigError, match="max_tokens=0 must be at least 1"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0
