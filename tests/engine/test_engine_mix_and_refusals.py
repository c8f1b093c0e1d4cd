"""Request-time mixing, refusals (unknown, incompatible, corrupt, too big), streaming, admin."""

from __future__ import annotations

import asyncio

import pytest
import torch

from adapterhub.engine import AdapterMix, Engine, GenerationRequest, SamplingParams
from adapterhub.engine.decoder import DecoderRunner, compute_dtype
from adapterhub.engine.lora import LoraSlots
from adapterhub.errors import (
    AdapterNotFoundError,
    CapacityError,
    CorruptBlobError,
    IncompatibleAdapterError,
)

GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def test_mix_one_zero_equals_the_first_adapter_alone(make_engine, prompts):
    engine = make_engine()
    alone, mixed = engine.generate_many([
        GenerationRequest(tuple(prompts[0]), adapter="alpha", sampling=GREEDY),
        GenerationRequest(tuple(prompts[0]), mix=AdapterMix(("alpha", "beta"), (1.0, 0.0)), sampling=GREEDY),
    ])
    assert mixed.token_ids == alone.token_ids
    assert mixed.adapter_version == "1*alpha@1+0*beta@1"


@pytest.fixture(scope="module")
def peft_cat_merge(make_peft_ref):
    """PEFT's own weighted merge of alpha and beta, 0.5 each.

    ``combination_type="cat"`` is PEFT's exact linear combination of the deltas,
    sum_i w_i * s_i * B_i A_i. (PEFT's "linear" type instead averages A and B separately, which
    adds cross terms B_i A_j and is not a linear combination of the adapters' effects.)
    """
    reference = make_peft_ref("fp32", ["alpha", "beta"])
    reference.model.add_weighted_adapter(["alpha", "beta"], [0.5, 0.5], "merged", combination_type="cat")
    return reference


def test_mix_half_half_equals_peft_weighted_merge(make_engine, peft_cat_merge, prompts):
    engine = make_engine()
    mix = AdapterMix(("alpha", "beta"), (0.5, 0.5))
    result = engine.generate(GenerationRequest(tuple(prompts[1]), mix=mix, sampling=GREEDY))
    assert list(result.token_ids) == peft_cat_merge.greedy(prompts[1], "merged", 12)
    assert list(result.token_ids) != peft_cat_merge.greedy(prompts[1], "alpha", 12)


@torch.inference_mode()
def test_mix_logits_match_peft_weighted_merge(tiny_base, adapter_registry, peft_cat_merge, prompts):
    model = tiny_base.model
    slots = LoraSlots.for_model(model, num_slots=2, rank=8, dtype=compute_dtype(model))
    for slot, name in enumerate(["alpha", "beta"]):
        adapter = adapter_registry.load_adapter(f"{name}@1")
        slots.install(slot, slots.prepare(adapter, name))
    runner = DecoderRunner(model, slots, max_rows=2, max_seq_len=64)
    # row 0 mixes, row 1 runs alpha alone: a mixed row beside a plain one
    logits = runner.prefill([prompts[2], prompts[3]], 0, [{0: 0.5, 1: 0.5}, {0: 1.0}])
    torch.testing.assert_close(logits[0], peft_cat_merge.logits(prompts[2], "merged"), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], peft_cat_merge.logits(prompts[3], "alpha"), atol=1e-4, rtol=1e-4)


def test_unknown_adapter_is_refused_before_queuing(make_engine, prompts):
    engine = make_engine()
    with pytest.raises(AdapterNotFoundError, match="alpah"):
        engine.submit(GenerationRequest(tuple(prompts[0]), adapter="alpah"), lambda c: None)
    assert engine.stats().queue_depth == 0


def test_engine_without_registry_serves_the_base_only(tiny_base, prompts):
    with Engine(tiny_base) as engine:
        assert engine.generate(GenerationRequest(tuple(prompts[0]), sampling=GREEDY)).usage.completion_tokens == 12
        with pytest.raises(AdapterNotFoundError, match="without a registry"):
            engine.generate(GenerationRequest(tuple(prompts[0]), adapter="alpha"))


def test_adapter_for_another_base_or_template_is_refused(make_engine, adapter_registry, tiny_base, lora_folders, prompts):
    folder = lora_folders["alpha"]
    files = {f.name: f for f in folder.iterdir() if f.suffix in (".json", ".safetensors")}
    adapter_registry.register("foreign", files, base_fingerprint="0" * 64,
                              template_hash=tiny_base.info.template_hash, method="sft")
    adapter_registry.register("retemplated", files, base_fingerprint=tiny_base.info.fingerprint,
                              template_hash="f" * 64, method="sft")
    engine = make_engine()
    with pytest.raises(IncompatibleAdapterError, match="trained on base"):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="foreign"))
    with pytest.raises(IncompatibleAdapterError, match="chat template"):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="retemplated"))


def test_corrupt_adapter_fails_its_requests_and_not_the_others(make_engine, adapter_registry, prompts):
    version = adapter_registry.resolve("gamma@1")
    blob = adapter_registry.blobs.path(version.files["adapter_model.safetensors"])
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    engine = make_engine()
    with pytest.raises(CorruptBlobError):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="gamma", sampling=GREEDY))
    ok = engine.generate(GenerationRequest(tuple(prompts[0]), adapter="alpha", sampling=GREEDY))
    assert ok.finish_reason == "length"


def test_adapter_over_max_lora_rank_is_refused(make_engine, prompts):
    engine = make_engine(max_lora_rank=4)
    with pytest.raises(IncompatibleAdapterError, match="max_lora_rank"):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="beta", sampling=GREEDY))


async def test_stream_yields_the_same_tokens_as_generate(make_engine, prompts):
    engine = make_engine()
    request = GenerationRequest(tuple(prompts[1]), adapter="beta", sampling=GREEDY)
    expected = engine.generate(request)
    chunks = []
    async with engine.stream(request) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert [t for c in chunks for t in c.token_ids] == list(expected.token_ids)
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_leaving_a_stream_early_cancels_and_frees_the_row(make_engine, prompts):
    engine = make_engine()
    request = GenerationRequest(tuple(prompts[1]), adapter="alpha",
                                sampling=SamplingParams(max_tokens=200, ignore_eos=True))
    async with engine.stream(request) as stream:
        async for _ in stream:
            break
    for _ in range(500):
        stats = engine.stats()
        if stats.running_rows == 0 and stats.requests_finished == 1:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().running_rows == 0
    assert engine.stats().completion_tokens < 200


async def test_stream_raises_a_load_failure(make_engine, prompts):
    engine = make_engine(max_lora_rank=4)
    with pytest.raises(IncompatibleAdapterError):
        async with engine.stream(GenerationRequest(tuple(prompts[0]), adapter="beta")) as stream:
            async for _ in stream:
                pass


def test_admin_load_pin_list_unload(make_engine, prompts):
    engine = make_engine(max_slots=1)
    resident = engine.load_adapter("alpha", pin=True)
    assert (resident.ref, resident.slot, resident.pinned) == ("alpha@1", 0, True)
    assert [r.ref for r in engine.resident_adapters()] == ["alpha@1"]
    # the only slot is pinned: another adapter cannot be served until it is unpinned
    with pytest.raises(CapacityError, match="pinned"):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="beta", sampling=GREEDY))
    assert engine.pin_adapter("alpha", pinned=False).pinned is False
    beta = engine.generate(GenerationRequest(tuple(prompts[0]), adapter="beta", sampling=GREEDY))
    assert beta.adapter_version == "beta@1"
    assert [r.ref for r in engine.resident_adapters()] == ["beta@1"]
    assert engine.unload_adapter("beta") is True
    assert engine.unload_adapter("beta") is False
    assert engine.resident_adapters() == []
    stats = engine.stats()
    assert stats.requests_finished == 1 and stats.ttft_count == 1 and stats.token_latency_count == 11


def test_adapter_with_wrong_shapes_is_refused(make_engine, adapter_registry, tiny_base, prompts):
    import json

    from safetensors.torch import save

    hidden = tiny_base.model.config.hidden_size
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": torch.ones(4, hidden * 2),
               f"{prefix}.lora_B.weight": torch.ones(hidden, 4)}
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    adapter_registry.register(
        "misshapen", {"adapter_config.json": json.dumps(config).encode(),
                      "adapter_model.safetensors": save(tensors)},
        base_fingerprint=tiny_base.info.fingerprint, template_hash=tiny_base.info.template_hash,
        method="sft",
    )
    engine = make_engine()
    with pytest.raises(IncompatibleAdapterError, match=f"{hidden}->{hidden} in the base but the adapter is {hidden * 2}->{hidden}"):
        engine.generate(GenerationRequest(tuple(prompts[0]), adapter="misshapen", sampling=GREEDY))
