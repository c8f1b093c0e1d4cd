"""Sampling settings at the edge of float32, found by fuzzing the server.

``top_p=5e-324`` is a valid float64 in (0, 1] but 0.0 once compared with float32 probabilities,
so every token was dropped; ``temperature=5e-324`` turned logits into inf and probabilities into
NaN. Either made ``torch.multinomial`` raise inside the engine step, which failed *every* row of
the batch with a 503 — one request could break everyone's generations.
"""

from __future__ import annotations

import pytest
import torch

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.sampling import RowSampler


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0, "top_p": 5e-324},
    {"temperature": 1.0, "top_p": 1e-50},
    {"temperature": 5e-324},
    {"temperature": 1e-300, "top_k": 3},
    {"temperature": 1e-7, "top_p": 0.5},
])
def test_tiny_top_p_or_temperature_picks_the_most_likely_token(settings: dict[str, float]) -> None:
    logits = torch.randn(320, generator=torch.Generator().manual_seed(0))
    logits[7] = 50.0  # clearly the most likely
    sampler = RowSampler(SamplingParams(max_tokens=1, seed=1, **settings), ())
    assert sampler.choose(logits.clone()) == 7


def test_one_row_with_edge_settings_does_not_fail_its_batch(make_engine, prompts):  # type: ignore[no-untyped-def]
    engine = make_engine()
    edge = [SamplingParams(max_tokens=6, temperature=1.0, top_p=5e-324, ignore_eos=True),
            SamplingParams(max_tokens=6, temperature=5e-324, ignore_eos=True)]
    normal = SamplingParams(max_tokens=6, temperature=0.8, seed=3, ignore_eos=True)
    results = engine.generate_many([GenerationRequest(tuple(prompts[0]), sampling=edge[0]),
                                    GenerationRequest(tuple(prompts[1]), sampling=normal),
                                    GenerationRequest(tuple(prompts[2]), sampling=edge[1])])
    assert [len(r.token_ids) for r in results] == [6, 6, 6]
    greedy = engine.generate(GenerationRequest(tuple(prompts[2]), sampling=SamplingParams(
        max_tokens=6, ignore_eos=True)))
    assert results[2].token_ids == greedy.token_ids  # a vanishing temperature is greedy
