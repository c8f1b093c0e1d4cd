"""A row of a mixed batch gets what PEFT gives that request run alone with its adapter."""

from __future__ import annotations

import pytest
import torch
from tinymodels import DEVICES

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.decoder import DecoderRunner, compute_dtype
from adapterhub.engine.lora import LoraSlots

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_batch_tokens_equal_peft_alone(device, make_engine, on_device, prompts):
    base, peft_ref = on_device(device)  # base, slots, KV cache and PEFT all on that device
    engine = make_engine(base=base, max_slots=3)
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


def _runner_with(base, adapters, slots_used):
    """A runner over ``base`` with the given prepared adapters installed in slots 0.."""
    model = base.model
    slots = LoraSlots.for_model(model, num_slots=len(adapters), rank=8, dtype=compute_dtype(model))
    for slot, (key, adapter) in enumerate(adapters.items()):
        slots.install(slot, slots.prepare(adapter, key))
    return DecoderRunner(model, slots, max_rows=8, max_seq_len=128), slots


@torch.inference_mode()
def test_mixed_batch_logits_match_peft_within_tolerance(tiny_base, adapter_registry, peft_ref, prompts):
    names = ["alpha", "beta", "gamma"]
    loaded = {n: adapter_registry.load_adapter(f"{n}@1") for n in names}
    runner, slots = _runner_with(tiny_base, loaded, names)
    plan = [(prompts[0], "alpha"), (prompts[1], None), (prompts[2], "beta"), (prompts[3], "gamma")]
    row_slots = [{names.index(a): 1.0} if a else {} for _, a in plan]
    mix = slots.row_mix(row_slots)
    logits = runner.prefill([p for p, _ in plan], 0, row_slots)
    seqs = [list(p) for p, _ in plan]
    for _ in range(4):
        for row, (seq, (_, adapter)) in enumerate(zip(seqs, plan, strict=True)):
            expected = peft_ref.logits(seq, adapter)
            torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
            seq.append(int(expected.argmax()))
        tokens = torch.tensor([s[-1] for s in seqs])
        lengths = torch.tensor([len(s) - 1 for s in seqs])
        logits = runner.decode(tokens, lengths, mix)


def test_request_joining_mid_flight_gets_the_same_tokens(make_engine, peft_ref, prompts):
    engine = make_engine()
    long = GenerationRequest(tuple(prompts[0]), adapter="beta", sampling=SamplingParams(max_tokens=40, ignore_eos=True))
    late = GenerationRequest(tuple(prompts[2]), adapter="alpha", sampling=GREEDY, request_id="late")
    seen: list = []
    late_chunks: list = []

    def long_sink(chunk):
        seen.append(chunk)
        if len(seen) == 5:  # inject the second request while the first is mid-flight
            engine.submit(late, late_chunks.append)

    engine.submit(long, long_sink)
    result = engine.generate(GenerationRequest(tuple(prompts[1]), sampling=GREEDY))
    while not (seen and seen[-1].finish_reason) or not (late_chunks and late_chunks[-1].finish_reason):
        engine.generate(GenerationRequest((1,), sampling=SamplingParams(max_tokens=1)))
    assert [t for c in seen for t in c.token_ids] == peft_ref.greedy(prompts[0], "beta", 40)
    assert [t for c in late_chunks for t in c.token_ids] == peft_ref.greedy(prompts[2], "alpha", 12)
    assert list(result.token_ids) == peft_ref.greedy(prompts[1], None, 12)


@pytest.mark.parametrize("precision", ["nf4", "int8", "bf16"])
def test_quantized_base_mixed_batch_equals_peft(precision, tiny_base_dir, adapter_registry, make_peft_ref, prompts):
    """In nf4, int8 and bf16, tokens equal PEFT's until PEFT itself is at a near-tie.

    The tiny random model's logits span about 0.5, and bf16 rounds them by ~0.004 (PEFT's own
    batched and single-row paths differ by as much): where PEFT's best and second-best logits
    are closer than ``TIE``, either token is "equal up to float tolerance", and after that the
    two continuations legitimately diverge. Most steps are far from a tie, so most tokens are
    compared; the test demands at least half of them.
    """
    from adapterhub.engine import Engine, EngineConfig
    from adapterhub.models.base import load_base

    tie = 0.02
    reference = make_peft_ref(precision)
    base = load_base(tiny_base_dir, precision)
    plan = [(prompts[0], "alpha"), (prompts[1], "beta"), (prompts[2], None), (prompts[3], "gamma")]
    with Engine(base, adapter_registry, EngineConfig(max_slots=3)) as engine:
        results = engine.generate_many(
            [GenerationRequest(tuple(p), adapter=a, sampling=GREEDY) for p, a in plan]
        )
    compared = 0
    for (prompt, adapter), result in zip(plan, results, strict=True):
        expected, margins = reference.greedy_with_margins(prompt, adapter, GREEDY.max_tokens)
        for got, want, margin in zip(result.token_ids, expected, margins, strict=True):
            if margin < tie:
                break
            assert got == want, (precision, adapter, result.token_ids, expected, margins)
            compared += 1
    assert compared >= len(plan) * GREEDY.max_tokens // 2


@pytest.mark.parametrize("placement", [(2, 3, 4), (0, 2, 3), (0, 3, 7)], ids=["offset", "gaps", "sparse"])
def test_used_slots_anywhere_in_the_table_give_peft_logits(tiny_base, adapter_registry, peft_ref, prompts, placement):
    """The LoRA product runs over the span from the lowest to the highest used slot as a view, a
    slot no row uses in it being padding; a span over twice the slots used gathers them instead."""
    names = ["alpha", "beta", "gamma"]
    model = tiny_base.model
    slots = LoraSlots.for_model(model, num_slots=8, rank=8, dtype=compute_dtype(model))
    for slot, name in zip(placement, names, strict=True):
        adapter = adapter_registry.load_adapter(f"{name}@1")
        slots.install(slot, slots.prepare(adapter, name))
    runner = DecoderRunner(model, slots, max_rows=8, max_seq_len=128)
    plan = [(prompts[0], "alpha"), (prompts[1], None), (prompts[2], "gamma"), (prompts[3], "alpha")]
    row_slots = [{placement[names.index(a)]: 1.0} if a else {} for _, a in plan]
    mix = slots.row_mix(row_slots)
    assert isinstance(mix.slots, slice) == (placement != (0, 3, 7))
    seqs = [list(p) for p, _ in plan]
    logits = runner.prefill([p for p, _ in plan], 0, row_slots)
    for _ in range(2):
        for row, (seq, (_, adapter)) in enumerate(zip(seqs, plan, strict=True)):
            expected = peft_ref.logits(seq, adapter)
            torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
            seq.append(int(expected.argmax()))
        logits = runner.decode(torch.tensor([s[-1] for s in seqs]), torch.tensor([len(s) - 1 for s in seqs]), mix)


def test_the_reference_path_leaves_the_shared_base_alone(tiny_base_dir, adapter_registry, peft_ref, prompts):
    """Hub.generate's PEFT path puts its adapters on a copy of the module tree that holds the
    base's own tensors: the base an engine serves is never wrapped, and no weight is copied."""
    from adapterhub.engine import Engine
    from adapterhub.engine.simple import ReferencePath
    from adapterhub.models.base import load_base

    base = load_base(tiny_base_dir, "fp32")
    modules = [(name, id(module)) for name, module in base.model.named_modules()]
    reference = ReferencePath(base, adapter_registry)
    request = GenerationRequest(tuple(prompts[0]), sampling=GREEDY)
    with Engine(base, adapter_registry) as engine:
        reference.generate("beta", list(prompts[0]), GREEDY)  # while the engine serves the base
        assert list(engine.generate(request).token_ids) == peft_ref.greedy(prompts[0], None, 12)
    assert [(name, id(module)) for name, module in base.model.named_modules()] == modules
    weights = {p.data_ptr() for p in base.model.parameters()}
    ids = torch.tensor([list(prompts[0])])
    for ref in ("beta", "gamma", None):
        with reference.activated(ref) as model, torch.inference_mode():
            assert {p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n} <= weights
            torch.testing.assert_close(model(ids).logits[0, -1], peft_ref.logits(prompts[0], ref))


@torch.inference_mode()
def test_the_gpu_decode_attention_equals_the_cpu_kernel(tiny_base, adapter_registry, prompts):
    """CUDA decodes through SDPA, the CPU through two bmm calls: both branches, run here on the CPU."""
    names = ["alpha", "beta"]
    loaded = {n: adapter_registry.load_adapter(f"{n}@1") for n in names}
    outputs = []
    for sdpa in (False, True):
        runner, slots = _runner_with(tiny_base, loaded, names)
        runner.sdpa_decode = sdpa
        row_slots = [{0: 1.0}, {}, {1: 1.0}]
        logits = runner.prefill(prompts[:3], 0, row_slots)
        lengths = torch.tensor([len(p) for p in prompts[:3]])
        steps = []
        for _ in range(5):
            tokens = logits.argmax(-1)
            logits = runner.decode(tokens, lengths, slots.row_mix(row_slots))
            lengths = lengths + 1
            steps.append(logits)
        outputs.append(torch.stack(steps))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_a_reused_slot_holds_only_its_new_adapter(tiny_base, adapter_registry, peft_ref, prompts):
    """Installing over a slot copies the new adapter's buffers and zeros whatever the old one
    adapted and the new one does not (beta adapts the MLP and k/o at rank 8, gamma only q/v at
    rank 4). Beta stays in slot 0 beside it, so the MLP's product runs over slot 1 too: stale
    weights there would show in slot 1's logits."""
    model = tiny_base.model
    slots = LoraSlots.for_model(model, num_slots=2, rank=8, dtype=compute_dtype(model))
    slots.install(0, slots.prepare(adapter_registry.load_adapter("beta@1"), "beta"))
    runner = DecoderRunner(model, slots, max_rows=3, max_seq_len=128)
    for name in ("beta", "gamma", "alpha", "beta", "gamma"):
        slots.install(1, slots.prepare(adapter_registry.load_adapter(f"{name}@1"), name))
        logits = runner.prefill([prompts[0], prompts[1], prompts[2]], 0, [{1: 1.0}, {0: 1.0}, {}])
        for row, adapter in enumerate((name, "beta", None)):
            expected = peft_ref.logits(list(prompts[row]), adapter)
            torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
