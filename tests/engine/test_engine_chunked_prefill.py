"""Chunked prefill: a prompt longer than the step's budget fills its row a budget at a time,
between the decoding rows' steps, and then decodes exactly as if prefilled at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.engine import _Collector

SCORED = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=5)
TEXT = ("The capital of France is Paris. The capital of Italy is Rome. Arr matey, the sea be calm "
        "today! Answer in JSON with keys answer and confidence. ")


@pytest.fixture(scope="module")
def long_prompts(tiny_base: Any) -> list[list[int]]:
    prompts = [tiny_base.render_chat([{"role": "system", "content": TEXT * 2}, {"role": "user", "content": q}])
               for q in ("What is two plus two?", "Arr matey")]
    assert min(len(p) for p in prompts) > 100
    return prompts


def test_long_prompts_in_chunks_equal_peft_and_a_whole_prefill(make_engine, peft_ref, prompts, long_prompts) -> None:
    chunked = make_engine(max_prefill_tokens=24, max_slots=3, prefix_cache_mib=0)
    whole = make_engine(max_prefill_tokens=24, max_slots=3, prefix_cache_mib=0, chunked_prefill=False)
    plan = [(long_prompts[0], "alpha"), (prompts[0], None), (long_prompts[1], None), (prompts[1], "beta"),
            (long_prompts[0], "gamma")]
    requests = [GenerationRequest(tuple(p), adapter=a, sampling=SCORED) for p, a in plan]
    got, want = chunked.generate_many(requests), whole.generate_many(requests)
    for (prompt, adapter), mine, theirs in zip(plan, got, want, strict=True):
        assert list(mine.token_ids) == peft_ref.greedy(prompt, adapter, SCORED.max_tokens), adapter
        assert mine.token_ids == theirs.token_ids and mine.usage == theirs.usage
        for a, b in zip(mine.logprobs, theirs.logprobs, strict=True):
            torch.testing.assert_close(dict(a.top), dict(b.top), atol=1e-5, rtol=1e-5)
    assert chunked.stats().prompt_tokens == whole.stats().prompt_tokens == sum(len(p) for p, _ in plan)


def test_decoding_rows_keep_their_pace_while_a_long_prompt_fills(make_engine, prompts, long_prompts,
                                                                 monkeypatch) -> None:
    """Each step prefills at most the budget: a row decoding beside a long prompt gets a token
    after every chunk, not one wait for the whole prompt (as without chunking)."""
    from adapterhub.engine.decoder import DecoderRunner

    calls: list[tuple[str, int]] = []
    prefill, decode = DecoderRunner.prefill, DecoderRunner.decode

    def spy_prefill(self, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(("prefill", sum(len(r) for r in rows)))
        return prefill(self, rows, *args, **kwargs)

    def spy_decode(self, tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(("decode", len(tokens)))
        return decode(self, tokens, *args, **kwargs)

    monkeypatch.setattr(DecoderRunner, "prefill", spy_prefill)
    monkeypatch.setattr(DecoderRunner, "decode", spy_decode)
    budget, long = 16, long_prompts[0]
    for chunked in (True, False):
        engine = make_engine(max_prefill_tokens=budget, prefix_cache_mib=0, chunked_prefill=chunked)
        started = threading.Event()
        engine.submit(GenerationRequest(tuple(prompts[0]), sampling=SamplingParams(max_tokens=200, ignore_eos=True)),
                      lambda chunk, started=started: started.set())
        assert started.wait(30)
        calls.clear()
        engine.generate(GenerationRequest(tuple(long), sampling=SamplingParams(max_tokens=1)))
        prefills = [n for kind, n in calls if kind == "prefill"]
        assert sum(prefills) == len(long)
        if chunked:
            assert prefills == [budget] * (len(long) // budget) + [len(long) % budget] * (len(long) % budget > 0)
            first = next(i for i, (kind, _) in enumerate(calls) if kind == "prefill")
            steps = calls[first:]
            # every chunk but the last is followed by a decode step of the running row
            assert all(steps[i + 1] == ("decode", 1) for i, c in enumerate(steps[:-1]) if c[0] == "prefill"), steps
        else:
            assert prefills == [len(long)]


def test_a_partial_prompt_can_be_cancelled_and_its_row_is_reused(make_engine, prompts, long_prompts, peft_ref) -> None:
    engine = make_engine(max_rows=2, max_prefill_tokens=8, prefix_cache_mib=0)
    gate = threading.Event()
    holder = threading.Thread(target=engine._call, args=(gate.wait,))  # noqa: SLF001 (hold the thread)
    holder.start()
    long = _Collector()
    request_id = engine.submit(GenerationRequest(tuple(long_prompts[1]), adapter="alpha",
                                                 sampling=SamplingParams(max_tokens=4)), long)
    gate.set()
    holder.join()
    engine._call(lambda: None)  # noqa: SLF001 (a step or more has run: the prompt is partly in)
    engine.cancel(request_id)
    assert long.result(30).finish_reason == "cancelled"
    results = engine.generate_many([GenerationRequest(tuple(p), adapter=a, sampling=SamplingParams(max_tokens=6, ignore_eos=True))
                                    for p, a in ((long_prompts[0], "alpha"), (prompts[2], None))])
    assert list(results[0].token_ids) == peft_ref.greedy(long_prompts[0], "alpha", 6)
    assert list(results[1].token_ids) == peft_ref.greedy(prompts[2], None, 6)
    assert engine.stats().running_rows == 0 and not engine.resident_adapters()[0].active_rows
