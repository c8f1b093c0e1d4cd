"""Every family the engine serves, against PEFT alone: a tiny random model per family, built from
its transformers config class with the switches that set it apart turned on (windows shorter
than the prompts, soft-caps small enough to bite, partial rotary, fused projections, q/k norms).

Each family gets three adapters that together cover what users bring: attention-only, every
linear layer with rsLoRA, and per-module ranks and alphas (``rank_pattern`` / ``alpha_pattern``,
one keyed by a full module path) on attention and MLP.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tinymodels import FAMILY_CONFIGS, PeftReference, build_tiny_folder, save_lora

from adapterhub.base import load_base, materialize_base
from adapterhub.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from adapterhub.engine.decoder import DecoderRunner
from adapterhub.engine.families import FAMILIES
from adapterhub.engine.lora import LoraSlots, prepare_adapter
from adapterhub.errors import EngineError, IncompatibleAdapterError
from adapterhub.registry import Registry

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)
TEXTS = ["What is two plus two?", "The capital of France", "Arr matey", "hello world the quick brown fox"]


def _adapters(model_type: str) -> dict[str, tuple[int, int, tuple[str, ...], dict[str, Any]]]:
    """name -> (seed, r, targets, more LoraConfig) in the family's own module names."""
    family = FAMILIES[model_type]
    attention, mlp = family.attention_targets, family.mlp_targets
    first, last, down = attention[0], attention[-1], mlp[-1]
    return {
        "attn": (1, 4, attention, {}),
        "all": (2, 8, (*attention, *mlp), {"use_rslora": True}),
        "patterned": (3, 4, (first, last, *mlp), {
            "rank_pattern": {f"model.layers.1.self_attn.{first}": 3, first: 2, down: 6},
            "alpha_pattern": {last: 3.0},
        }),
    }


@dataclass
class Case:
    model_type: str
    base_dir: Path
    folders: dict[str, Path]
    base: Any
    registry: Registry
    reference: PeftReference
    prompts: list[list[int]]


@pytest.fixture(scope="module", params=list(FAMILY_CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    model_type = request.param
    root = tmp_path_factory.mktemp(model_type)
    base_dir = materialize_base(root / "home", str(build_tiny_folder(root / f"tiny-{model_type}", model_type))).path
    folders = {
        name: save_lora(base_dir, root / name, seed=seed, r=r, targets=targets, **more)
        for name, (seed, r, targets, more) in _adapters(model_type).items()
    }
    base = load_base(base_dir, "fp32")
    registry = Registry(root / "home")
    for name, folder in folders.items():
        registry.register(
            name, {f.name: f for f in folder.iterdir() if f.suffix in (".json", ".safetensors")},
            base_fingerprint=base.info.fingerprint, template_hash=base.info.template_hash, method="sft",
        )
    prompts = [base.render_chat([{"role": "user", "content": t}]) for t in TEXTS]
    assert min(len(p) for p in prompts) > 6, "prompts must outrun the tiny sliding window"
    yield Case(model_type, base_dir, folders, base, registry, PeftReference(base_dir, folders), prompts)


def test_mixed_batch_with_a_late_joiner_equals_peft_alone(case: Case) -> None:
    plan = [(case.prompts[0], "attn"), (case.prompts[1], "all"), (case.prompts[2], None),
            (case.prompts[3], "patterned"), (case.prompts[1], "attn")]
    late_plan = (case.prompts[2], "all")
    first: list[Any] = []
    late_chunks: list[Any] = []
    done = threading.Semaphore(0)

    def collect(into: list[Any]) -> Any:
        def sink(chunk: Any) -> None:
            into.append(chunk)
            if chunk.finish_reason:
                done.release()
        return sink

    with Engine(case.base, case.registry, EngineConfig(max_slots=3)) as engine:
        late = GenerationRequest(tuple(late_plan[0]), adapter=late_plan[1], sampling=GREEDY)
        first_sink = collect(first)

        def sink(chunk: Any) -> None:  # the late request joins while the first is mid-flight
            first_sink(chunk)
            if len(first) == 4:
                engine.submit(late, collect(late_chunks))

        engine.submit(GenerationRequest(tuple(plan[0][0]), adapter=plan[0][1], sampling=GREEDY), sink)
        results = engine.generate_many(
            [GenerationRequest(tuple(p), adapter=a, sampling=GREEDY) for p, a in plan[1:]]
        )
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
    got = [[t for c in first for t in c.token_ids], *[list(r.token_ids) for r in results],
           [t for c in late_chunks for t in c.token_ids]]
    for tokens, (prompt, adapter) in zip(got, [*plan, late_plan], strict=True):
        assert tokens == case.reference.greedy(prompt, adapter, GREEDY.max_tokens), (case.model_type, adapter)
    assert got[0] != case.reference.greedy(plan[0][0], None, GREEDY.max_tokens)  # adapters bite


@torch.inference_mode()
def test_prefill_and_decode_logits_match_peft(case: Case) -> None:
    names = list(case.folders)
    model = case.base.model
    slots = LoraSlots.for_model(model, num_slots=len(names), rank=8, dtype=torch.float32)
    for slot, name in enumerate(names):
        adapter = case.registry.load_adapter(f"{name}@1")
        slots.install(slot, prepare_adapter(adapter, name, slots.dims, slots.num_layers, max_rank=8, dtype=slots.dtype))
    runner = DecoderRunner(model, slots, max_rows=4, max_seq_len=128)
    plan = [(case.prompts[0], "patterned"), (case.prompts[1], None), (case.prompts[2], "all"), (case.prompts[3], "attn")]
    row_slots = [{names.index(a): 1.0} if a else {} for _, a in plan]
    logits = runner.prefill([p for p, _ in plan], 0, row_slots)
    seqs = [list(p) for p, _ in plan]
    for _ in range(8):  # past the window, so decode's window masks are compared too
        for row, (seq, (_, adapter)) in enumerate(zip(seqs, plan, strict=True)):
            expected = case.reference.logits(seq, adapter)
            scale = max(1.0, float(expected.abs().max()))  # 1e-4 of the logits' size (a few units)
            torch.testing.assert_close(logits[row], expected, atol=1e-4 * scale, rtol=1e-4,
                                       msg=lambda m, a=adapter: f"{case.model_type} {a}: {m}")
            seq.append(int(expected.argmax()))
        tokens = torch.tensor([s[-1] for s in seqs])
        lengths = torch.tensor([len(s) - 1 for s in seqs])
        logits = runner.decode(tokens, lengths, slots.row_mix(row_slots))


def test_nf4_base_equals_peft_up_to_its_near_ties(case: Case) -> None:
    """As in test_engine_equality: PEFT over the same nf4 base decides; a step where its best two
    logits are within ``tie`` ends the comparison of that row."""
    tie = 0.02
    reference = PeftReference(case.base_dir, case.folders, "nf4")
    base = load_base(case.base_dir, "nf4")
    plan = [(case.prompts[0], "attn"), (case.prompts[1], "all"), (case.prompts[2], None), (case.prompts[3], "patterned")]
    with Engine(base, case.registry, EngineConfig(max_slots=3)) as engine:
        results = engine.generate_many([GenerationRequest(tuple(p), adapter=a, sampling=GREEDY) for p, a in plan])
    compared = 0
    for (prompt, adapter), result in zip(plan, results, strict=True):
        expected, margins = reference.greedy_with_margins(prompt, adapter, GREEDY.max_tokens)
        for got, want, margin in zip(result.token_ids, expected, margins, strict=True):
            if margin < tie:
                break
            assert got == want, (case.model_type, adapter, result.token_ids, expected, margins)
            compared += 1
    assert compared >= len(plan) * GREEDY.max_tokens // 4, (case.model_type, compared)


# ---------------------------------------------------------------------- refusals


def test_a_family_not_served_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64))
    slots = None
    with pytest.raises(EngineError, match=r"not 'gpt2'.*adapterhub.engine.families") as raised:
        DecoderRunner(model, slots, max_rows=1, max_seq_len=16)  # type: ignore[arg-type]
    assert "qwen2" in str(raised.value) and "phi3" in str(raised.value)


@pytest.mark.parametrize(("setting", "expected"), [
    ({"use_bidirectional_attention": True}, "bidirectional attention"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10_000.0, "factor": 2.0}}, "dynamic-NTK"),
])
def test_a_config_switch_the_engine_does_not_honour_is_refused(setting: dict[str, Any], expected: str) -> None:
    import transformers

    family = "gemma3_text" if "use_bidirectional_attention" in setting else "llama"
    config_class, extra = FAMILY_CONFIGS[family]
    config = getattr(transformers, config_class)(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, **{**extra, **setting},
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(EngineError, match=expected):
        DecoderRunner(model, LoraSlots.for_model(model, num_slots=1, rank=4, dtype=torch.float32),
                      max_rows=1, max_seq_len=16)


@pytest.mark.parametrize(("setting", "named"), [
    ({"use_dora": True}, "use_dora"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_dora_and_modules_to_save_are_refused_with_what_to_do(
    setting: dict[str, Any], named: str, tiny_base: Any, tiny_base_dir: Path, registry: Registry, tmp_path: Path
) -> None:
    folder = save_lora(tiny_base_dir, tmp_path / named, seed=5, r=4, targets=("q_proj", "v_proj"), **setting)
    registry.register(
        named, {f.name: f for f in folder.iterdir() if f.suffix in (".json", ".safetensors")},
        base_fingerprint=tiny_base.info.fingerprint, template_hash=tiny_base.info.template_hash, method="sft",
    )
    refused = pytest.raises(IncompatibleAdapterError, match=rf"{named}=.*does not serve.*merge_and_unload")
    with Engine(tiny_base, registry) as engine, refused:
        engine.generate(GenerationRequest((1, 2, 3), adapter=named, sampling=GREEDY))
