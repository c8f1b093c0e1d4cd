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

from adapterhub.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from adapterhub.engine.decoder import DecoderRunner
from adapterhub.engine.families import Family, family_of
from adapterhub.engine.lora import LoraSlots
from adapterhub.errors import EngineError, IncompatibleAdapterError
from adapterhub.models.base import load_base, materialize_base
from adapterhub.registry import Registry

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)
TEXTS = ["What is two plus two?", "The capital of France", "Arr matey", "hello world the quick brown fox"]


def _adapters(family: Family) -> dict[str, tuple[int, int, tuple[str, ...], dict[str, Any]]]:
    """name -> (seed, r, targets, more LoraConfig) in the family's own module names."""
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
    base = load_base(base_dir, "fp32")
    folders = {
        name: save_lora(base_dir, root / name, seed=seed, r=r, targets=targets, **more)
        for name, (seed, r, targets, more) in _adapters(family_of(base.model)).items()
    }
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
        assert tokens == case.reference.cached_greedy(prompt, adapter, GREEDY.max_tokens)[0], (case.model_type, adapter)
    assert got[0] != case.reference.cached_greedy(plan[0][0], None, GREEDY.max_tokens)[0]  # adapters bite


def test_a_cached_prefix_gives_what_prefilling_it_gives(case: Case) -> None:
    """Prompts sharing a system prompt far past the sliding window: rows that reuse its cached
    keys and values (beside a row that computes its own, in one prefill) get PEFT's tokens and
    the log-probabilities of an engine without the cache. Under LongRoPE nothing is reused."""
    system = "The capital of France is Paris. The capital of Italy is Rome. Arr matey! " * 2
    prompts = [case.base.render_chat([{"role": "system", "content": system}, {"role": "user", "content": t}])
               for t in TEXTS]
    sampling = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3)
    plan = [(prompts[1], None), (prompts[2], "attn"), (prompts[3], None), (prompts[0], "attn")]
    requests = [GenerationRequest(tuple(p), adapter=a, sampling=sampling) for p, a in plan]
    with Engine(case.base, case.registry, EngineConfig(max_slots=3)) as cached, \
            Engine(case.base, case.registry, EngineConfig(max_slots=3, prefix_cache_mib=0)) as plain:
        cached.generate_many([GenerationRequest(tuple(prompts[0]), adapter=a, sampling=sampling)
                              for a in (None, "attn")])  # the warm-up: the prefix is cached
        results, hits = cached.generate_many(requests), cached.stats().prefix_cache_hit_tokens
        uncached = plain.generate_many(requests)
    for (prompt, adapter), got, want in zip(plan, results, uncached, strict=True):
        assert list(got.token_ids) == case.reference.cached_greedy(prompt, adapter, 6)[0], (case.model_type, adapter)
        for mine, theirs in zip(got.logprobs, want.logprobs, strict=True):
            torch.testing.assert_close(dict(mine.top), dict(theirs.top), atol=1e-4, rtol=1e-4)
    if case.model_type == "phi3-longrope":
        assert hits == 0
    else:
        assert hits >= len(plan) * 2 * 16, (case.model_type, hits)


def test_prompts_prefilled_in_chunks_equal_peft(case: Case) -> None:
    """A step budget of 8 tokens, under the prompts' lengths and past the window: every prompt
    fills its row in chunks (sliding windows and soft-caps across chunk edges) and the rows get
    PEFT's tokens and a whole prefill's log-probabilities. (LongRoPE is never chunked.)"""
    sampling = SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3)
    plan = [(case.prompts[3], "patterned"), (case.prompts[0], None), (case.prompts[1], "all")]
    requests = [GenerationRequest(tuple(p), adapter=a, sampling=sampling) for p, a in plan]
    settings = {"max_slots": 3, "max_prefill_tokens": 8, "prefix_cache_mib": 0}
    with Engine(case.base, case.registry, EngineConfig(**settings)) as chunked, \
            Engine(case.base, case.registry, EngineConfig(**settings, chunked_prefill=False)) as whole:
        results, expected = chunked.generate_many(requests), whole.generate_many(requests)
    for (prompt, adapter), got, want in zip(plan, results, expected, strict=True):
        assert list(got.token_ids) == case.reference.cached_greedy(prompt, adapter, 6)[0], (case.model_type, adapter)
        for mine, theirs in zip(got.logprobs, want.logprobs, strict=True):
            torch.testing.assert_close(dict(mine.top), dict(theirs.top), atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_prefill_and_decode_logits_match_peft(case: Case) -> None:
    names = list(case.folders)
    model = case.base.model
    slots = LoraSlots.for_model(model, num_slots=len(names), rank=8, dtype=torch.float32)
    for slot, name in enumerate(names):
        adapter = case.registry.load_adapter(f"{name}@1")
        slots.install(slot, slots.prepare(adapter, name))
    runner = DecoderRunner(model, slots, max_rows=4, max_seq_len=128)
    plan = [(case.prompts[0], "patterned"), (case.prompts[1], None), (case.prompts[2], "all"), (case.prompts[3], "attn")]
    row_slots = [{names.index(a): 1.0} if a else {} for _, a in plan]
    steps = 8  # past the window, so decode's window masks are compared too
    references = [case.reference.cached_greedy(p, a, steps) for p, a in plan]
    logits = runner.prefill([p for p, _ in plan], 0, row_slots)
    for step in range(steps):
        for row, ((_, adapter), (_, expected)) in enumerate(zip(plan, references, strict=True)):
            scale = max(1.0, float(expected[step].abs().max()))  # 1e-4 of the logits' size (a few units)
            torch.testing.assert_close(logits[row], expected[step], atol=1e-4 * scale, rtol=1e-4,
                                       msg=lambda m, a=adapter, k=step: f"{case.model_type} {a} step {k}: {m}")
        tokens = torch.tensor([tokens[step] for tokens, _ in references])
        lengths = torch.tensor([len(p) + step for p, _ in plan])
        logits = runner.decode(tokens, lengths, slots.row_mix(row_slots))


@pytest.mark.parametrize("precision", ["nf4", "int8", "bf16"])
def test_quantized_base_equals_peft_up_to_its_near_ties(case: Case, precision: str) -> None:
    """Over the same base in ``precision``, the engine's distribution is PEFT's to ``TOL`` (in
    log-probability, both computing in that precision's dtype), token after token; where the two
    choose differently, PEFT itself was within ``TOL`` of the engine's choice, and the row ends.

    These tiny models' logits run to about 8, which bf16 rounds to 1/32; over two layers PEFT
    (bf16 attention) and the engine (fp32 attention) were seen up to 0.22 apart. A wrong mask,
    rope or norm moves log-probabilities by whole units."""
    tol = 0.3
    reference = PeftReference(case.base_dir, case.folders, precision)
    base = load_base(case.base_dir, precision)
    plan = [(case.prompts[0], "attn"), (case.prompts[1], "all"), (case.prompts[2], None), (case.prompts[3], "patterned")]
    sampling = SamplingParams(max_tokens=GREEDY.max_tokens, ignore_eos=True, logprobs=0)
    with Engine(base, case.registry, EngineConfig(max_slots=3)) as engine:
        results = engine.generate_many([GenerationRequest(tuple(p), adapter=a, sampling=sampling) for p, a in plan])
    compared, worst = 0, 0.0
    for (prompt, adapter), result in zip(plan, results, strict=True):
        expected, steps = reference.cached_greedy(prompt, adapter, GREEDY.max_tokens)
        for got, want, logits in zip(result.logprobs, expected, steps, strict=True):
            theirs = torch.log_softmax(logits, dim=-1)
            if got.token_id != want:
                gap = float(theirs[want] - theirs[got.token_id])
                assert gap <= tol, (case.model_type, precision, adapter, gap, result.token_ids, expected)
                break
            worst = max(worst, abs(got.logprob - float(theirs[want])))
            compared += 1
    assert worst <= tol, (case.model_type, precision, worst)
    assert compared >= len(plan) * GREEDY.max_tokens // 2, (case.model_type, precision, compared)


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
