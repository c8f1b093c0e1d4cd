"""Prefix caching: a prompt that starts as an earlier one did reuses its keys and values, and
every row still gets what PEFT gives it alone, and what an engine without the cache gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.prefix_cache import BLOCK_TOKENS, PrefixCache, adapter_key, block_hashes

GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)
SCORED = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=5)  # the distributions compared too
SYSTEM = ("You are a pirate. Answer in JSON with keys answer and confidence. "
          "The capital of France is Paris. The capital of Italy is Rome. ") * 2
QUESTIONS = ["What is two plus two?", "The capital of France", "Arr matey", "hello world the quick brown fox"]


@pytest.fixture(scope="module")
def shared(tiny_base: Any) -> list[list[int]]:
    """Chat prompts that share a system prompt of several blocks, then differ."""
    prompts = [tiny_base.render_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
               for q in QUESTIONS]
    common = next(i for i, column in enumerate(zip(*prompts, strict=False)) if len(set(column)) > 1)
    assert common >= 3 * BLOCK_TOKENS, "the shared part must span blocks"
    return prompts


def _reusable(prompt: list[int], shared_len: int) -> int:
    """Tokens of ``prompt`` a cached prefix of ``shared_len`` tokens can give it."""
    return min(shared_len // BLOCK_TOKENS, (len(prompt) - 1) // BLOCK_TOKENS) * BLOCK_TOKENS


def test_shared_system_prompt_is_reused_and_rows_equal_peft_and_no_cache(make_engine, peft_ref, shared) -> None:
    cached, plain = make_engine(max_slots=3), make_engine(max_slots=3, prefix_cache_mib=0)
    warm = GenerationRequest(tuple(shared[0]), sampling=GREEDY)
    cached.generate(warm)
    # The second wave mixes base and adapter rows; the base rows reuse the warm-up's blocks, the
    # adapters' first rows compute theirs (their keys are their own), and a row with a prompt
    # seen before reuses all but its last token.
    plan = [(shared[1], None), (shared[2], "alpha"), (shared[3], None), (shared[0], "beta"), (shared[0], None)]
    requests = [GenerationRequest(tuple(p), adapter=a, sampling=SCORED) for p, a in plan]
    before = cached.stats().prefix_cache_hit_tokens
    results = cached.generate_many(requests)
    hits = cached.stats().prefix_cache_hit_tokens - before
    uncached = plain.generate_many(requests)
    for (prompt, adapter), got, want in zip(plan, results, uncached, strict=True):
        assert list(got.token_ids) == peft_ref.greedy(prompt, adapter, GREEDY.max_tokens), adapter
        assert got.token_ids == want.token_ids and got.usage == want.usage
        for mine, theirs in zip(got.logprobs, want.logprobs, strict=True):
            assert [i for i, _ in mine.top] == [i for i, _ in theirs.top]
            torch.testing.assert_close([v for _, v in mine.top], [v for _, v in theirs.top], atol=1e-5, rtol=1e-5)
    common = next(i for i, c in enumerate(zip(*shared, strict=False)) if len(set(c)) > 1)
    base_rows = [_reusable(shared[1], common), _reusable(shared[3], common), _reusable(shared[0], len(shared[0]))]
    assert hits == sum(base_rows)
    stats = plain.stats()
    assert (stats.prefix_cache_hit_tokens, stats.prefix_cache_blocks) == (0, 0)


def test_prompts_admitted_together_compute_a_shared_prefix_once(make_engine, peft_ref, shared) -> None:
    """Requests arriving together with one new system prompt: the first computes its blocks, the
    others join a step later and reuse them, whatever steps the arrivals fall in."""
    engine = make_engine()
    results = engine.generate_many([GenerationRequest(tuple(p), sampling=GREEDY) for p in shared])
    common = next(i for i, c in enumerate(zip(*shared, strict=False)) if len(set(c)) > 1)
    assert engine.stats().prefix_cache_hit_tokens == sum(_reusable(p, common) for p in shared[1:])
    for prompt, result in zip(shared, results, strict=True):
        assert list(result.token_ids) == peft_ref.greedy(prompt, None, GREEDY.max_tokens)


def test_scored_prompts_run_every_position_and_mixes_have_keys_of_their_own(make_engine, shared) -> None:
    engine = make_engine()
    scored = GenerationRequest(tuple(shared[0]), sampling=SamplingParams(max_tokens=0, prompt_logprobs=1))
    first, again = engine.generate(scored), engine.generate(scored)
    assert engine.stats().prefix_cache_hit_tokens == 0  # every position's logits were needed
    assert first.prompt_logprobs == again.prompt_logprobs
    engine.generate(GenerationRequest(tuple(shared[0]), adapter="alpha", sampling=GREEDY))
    assert engine.stats().prefix_cache_hit_tokens == 0  # the base's blocks are not alpha's


@torch.inference_mode()
def test_one_prefill_of_rows_with_and_without_a_cached_prefix_gives_peft_logits(tiny_base, peft_ref, shared) -> None:
    """Rows of one prefill that start at different cached lengths, the longest prompt and the
    deepest prefix together longer than the cache (each row's own span is what counts)."""
    from adapterhub.engine.decoder import DecoderRunner, compute_dtype
    from adapterhub.engine.lora import LoraSlots

    model = tiny_base.model
    slots = LoraSlots.for_model(model, num_slots=1, rank=4, dtype=compute_dtype(model))
    long = shared[0] + shared[1][len(shared[1]) // 2 :]  # a prompt over half the cache
    max_len = len(long) + 8
    assert len(long) > max_len // 2 and max_len > len(shared[2])
    runner = DecoderRunner(model, slots, max_rows=3, max_seq_len=max_len)
    runner.prefill([long], 0, [{}])  # row 0: its blocks are the prefix of rows 1 and 2
    cut = (len(long) // BLOCK_TOKENS - 1) * BLOCK_TOKENS
    runner.cache.write(1, 0, [runner.cache.block(0, 0, cut)])
    runner.cache.write(2, 0, [runner.cache.block(0, 0, BLOCK_TOKENS)])
    prompts = [shared[2], long, long[: 3 * BLOCK_TOKENS + 3]]
    logits = runner.prefill([prompts[0], long[cut:], prompts[2][BLOCK_TOKENS:]], 0, [{}, {}, {}],
                            starts=[0, cut, BLOCK_TOKENS])
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[row], peft_ref.logits(prompt, None), atol=1e-4, rtol=1e-4)


def test_block_names_chain_over_adapter_and_every_token_before() -> None:
    tokens = list(range(3 * BLOCK_TOKENS + 5))
    names = block_hashes(b"", tokens)
    assert len(names) == 3 and len(set(names)) == 3
    assert block_hashes(b"", tokens[: 2 * BLOCK_TOKENS]) == names[:2]  # a prefix's names are a prefix
    changed = [*tokens[:5], 999, *tokens[6:]]
    assert not set(block_hashes(b"", changed)) & set(names)  # one early token renames every block
    assert block_hashes(b"alpha", tokens)[0] != names[0]


def test_adapter_key_names_files_and_weights(adapter_registry) -> None:
    alpha, beta = adapter_registry.resolve("alpha@1"), adapter_registry.resolve("beta@1")
    versions = {alpha.ref: alpha, beta.ref: beta}
    assert adapter_key({}, {}) == b""
    keys = {adapter_key({alpha.ref: 1.0}, versions), adapter_key({alpha.ref: 0.5}, versions),
            adapter_key({beta.ref: 1.0}, versions), adapter_key({alpha.ref: 1.0, beta.ref: 1.0}, versions)}
    assert len(keys) == 4
    assert adapter_key({alpha.ref: 1.0, beta.ref: 1.0}, versions) == adapter_key({beta.ref: 1.0, alpha.ref: 1.0}, versions)
    assert next(iter(alpha.files.values())).encode() in adapter_key({alpha.ref: 1.0}, versions)


def test_least_recently_used_blocks_go_first_within_the_budget() -> None:
    block = torch.zeros(2, 2, 1, BLOCK_TOKENS, 4)
    size = block.numel() * block.element_size()
    cache = PrefixCache(max_bytes=3 * size)
    a, b = block_hashes(b"", list(range(2 * BLOCK_TOKENS))), block_hashes(b"", list(range(100, 100 + BLOCK_TOKENS)))
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> torch.Tensor:
        reads.append((start, end))
        return block + start

    cache.store(a, read)
    cache.store(b, read)
    assert (len(cache), cache.bytes) == (3, 3 * size) and reads == [(0, 16), (16, 32), (0, 16)]
    cache.store(a, read)  # present: refreshed, not read again
    assert len(reads) == 3
    found = cache.lookup(a, prompt_len=2 * BLOCK_TOKENS + 1)
    assert [float(t.flatten()[0]) for t in found] == [0.0, 16.0]
    assert cache.lookup(a, prompt_len=2 * BLOCK_TOKENS) == found[:1]  # never the last token
    assert (cache.queried_tokens, cache.hit_tokens) == (4 * BLOCK_TOKENS + 1, 3 * BLOCK_TOKENS)
    cache.store(block_hashes(b"x", list(range(BLOCK_TOKENS))), read)  # evicts b, the oldest
    assert cache.cached_blocks(b) == 0 and cache.cached_blocks(a) == 2 and cache.bytes == 3 * size
    PrefixCache(max_bytes=size - 1).store(a, read)  # a block bigger than the budget is not kept


def test_prompts_of_very_different_lengths_prefill_in_groups(make_engine, peft_ref, shared, monkeypatch) -> None:
    """A long prompt admitted with short ones runs in a prefill of its own (the short ones are
    not padded to its width); every row still gets PEFT's tokens."""
    import threading

    from adapterhub.engine.decoder import DecoderRunner
    from adapterhub.engine.engine import _Collector, _length_groups

    assert list(_length_groups([300, 290, 140, 100, 30, 20])) == [(0, 2), (2, 4), (4, 6)]
    assert list(_length_groups([100, 40, 36])) == [(0, 3)]  # 64 tokens of padding: one call
    assert list(_length_groups([7])) == [(0, 1)]
    widths: list[list[int]] = []
    prefill = DecoderRunner.prefill

    def spy(self, prompts, *args, **kwargs):  # type: ignore[no-untyped-def]
        widths.append([len(p) for p in prompts])
        return prefill(self, prompts, *args, **kwargs)

    monkeypatch.setattr(DecoderRunner, "prefill", spy)
    engine = make_engine(prefix_cache_mib=0)
    short = [p[-12:] for p in shared[1:]]
    plan = [(short[0], "alpha"), (shared[0], None), (short[1], None), (short[2], "beta")]
    engine.load_adapter("alpha@1")
    engine.load_adapter("beta@1")
    gate = threading.Event()  # hold the engine thread so that all four arrive before a step
    holder = threading.Thread(target=engine._call, args=(gate.wait,))  # noqa: SLF001
    holder.start()
    collectors = []
    for prompt, adapter in plan:
        collectors.append(_Collector())
        engine.submit(GenerationRequest(tuple(prompt), adapter=adapter, sampling=GREEDY), collectors[-1])
    gate.set()
    holder.join()
    for (prompt, adapter), collector in zip(plan, collectors, strict=True):
        assert list(collector.result(60).token_ids) == peft_ref.greedy(prompt, adapter, GREEDY.max_tokens)
    assert sorted(widths) == [[12, 12, 12], [len(shared[0])]]
