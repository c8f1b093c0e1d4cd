"""The CUDA check, in one go: run it whenever a GPU machine is at hand, and paste its table.

    python bench/gpu_check.py                      # on a GPU: about 3-6 minutes
    python bench/gpu_check.py --device cpu --quick # the CPU-only smoke run `make test` does

It needs no hub and no cached base: the base is a random model with SmolLM2-135M's shapes
(30 layers, hidden 576, GQA 9/3 heads, vocab 49,152) and the test suite's tiny tokenizer, so
the figures measure the engine and the trainer, not a download. One table, one row per check:

* **equality**: the engine's mixed batch (3 adapters and the base, one batch) against PEFT
  running each request alone, in bf16 and nf4 (bitsandbytes' CUDA kernels): rows whose greedy
  tokens agree, and the largest prefill logit gap;
* **throughput**: 64 concurrent requests x 64 tokens, no adapter vs 8 adapters mixed, and
  their ratio;
* **cold load**: registry -> resident in a slot, r=16, median of 10;
* **training**: 20 QLoRA SFT steps through ``Hub.train`` against plain TRL ``SFTTrainer`` +
  PEFT on the same base, data and batch (``bench/train_bench.py``'s two runners).

A part whose library is missing on the machine (bitsandbytes, TRL) prints ``skipped`` with
the reason instead of failing the rest. The GPU machines here have torch and transformers but
not bitsandbytes, TRL or pydantic: carry their wheels (``pip download`` them on this side into
an ignored folder, name it in ``carry``, and ``pip install --no-index --find-links`` it first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tiny tokenizer and LoRA folders of the test suite

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}
QUICK = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}


def build_base(folder: Path, shape: dict[str, int]) -> Path:
    """A random Llama with ``shape`` and the tiny ChatML tokenizer, saved as a plain HF folder."""
    import torch
    from tinymodels import build_tiny_tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(folder)
    config = LlamaConfig(
        **shape, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # SmolLM2-like scale, so logits are not all near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def register_adapters(hub: Any, count: int, scratch: Path, r: int = 16) -> tuple[list[str], dict[str, Path]]:
    from tinymodels import make_lora_folder

    refs, folders = [], {}
    for i in range(count):
        folder = make_lora_folder(hub.base_info.path, scratch / f"lora-{i}", seed=i, r=r)
        if i < 3:
            folders[f"a{i}"] = folder
        refs.append(hub.import_adapter(folder, f"a{i}").ref)
    return refs, folders


# ----------------------------------------------------------------------------- checks


def check_equality(hub: Any, platform: Any, precision: str, folders: dict[str, Path]) -> list[tuple[str, str, str]]:
    import torch
    from peft import PeftModel

    from adapterhub.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
    from adapterhub.models.base import load_base

    if precision == "nf4" and not _importable("bitsandbytes"):
        return [(f"engine == PEFT, {precision}", "skipped", "bitsandbytes not installed")]
    base = load_base(hub.base_info.path, precision, platform=platform)
    texts = ["What is two plus two?", "The capital of France", "Arr matey", "hello world the quick brown fox"]
    prompts = [base.render_chat([{"role": "user", "content": t}]) for t in texts]
    plan = [(prompts[0], "a0"), (prompts[1], "a1"), (prompts[2], None), (prompts[3], "a2")]
    steps = 12
    with Engine(base, hub.registry, EngineConfig(max_slots=3)) as engine:
        results = engine.generate_many([
            GenerationRequest(tuple(p), adapter=f"{a}@1" if a else None,
                              sampling=SamplingParams(max_tokens=steps, ignore_eos=True))
            for p, a in plan
        ])
    reference = load_base(hub.base_info.path, precision, platform=platform)
    model = PeftModel.from_pretrained(reference.model, folders["a0"], adapter_name="a0")
    for name in ("a1", "a2"):
        model.load_adapter(folders[name], adapter_name=name)
    model.eval()
    agree, gap = 0, 0.0
    with torch.inference_mode():
        for (prompt, adapter), result in zip(plan, results, strict=True):
            ids = torch.tensor([prompt], device=reference.device)
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
            else:
                model.set_adapter(adapter)
                out = model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
            agree += out[0, len(prompt):].tolist() == list(result.token_ids)
    # prefill logits of one adapted row, engine vs PEFT
    from adapterhub.engine.decoder import DecoderRunner
    from adapterhub.engine.lora import LoraSlots

    slots = LoraSlots.for_model(base.model, num_slots=1, rank=16, dtype=torch.float32)
    slots.install(0, slots.prepare(hub.registry.load_adapter("a0@1"), "a0"))
    runner = DecoderRunner(base.model, slots, max_rows=1, max_seq_len=256)
    with torch.inference_mode():
        ours = runner.prefill([prompts[0]], 0, [{0: 1.0}])[0]
        model.set_adapter("a0")
        theirs = model(input_ids=torch.tensor([prompts[0]], device=reference.device)).logits[0, -1].float()
        gap = float((ours - theirs).abs().max())
    # fp32 must agree token for token; in bf16/nf4 a greedy path may fork at a near-tie that
    # rounding decides, so there the logit gap is the measure (bf16 keeps ~3 significant digits)
    if agree == len(plan):
        verdict = "ok"
    elif precision != "fp32" and gap < 0.1:
        verdict = "ok (forks at near-ties)"
    else:
        verdict = "DIFFERS"
    return [(f"engine == PEFT, {precision}: rows with equal greedy tokens", f"{agree}/{len(plan)}", verdict),
            (f"engine vs PEFT, {precision}: max |prefill logit diff|", f"{gap:.2e}", "")]


def check_throughput(hub: Any, platform: Any, precision: str, refs: list[str], requests: int,
                     tokens: int) -> list[tuple[str, str, str]]:
    from adapterhub.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
    from adapterhub.models.base import load_base

    base = load_base(hub.base_info.path, precision, platform=platform)
    prompts = [base.render_chat([{"role": "user", "content": f"Tell me a story, number {i}."}])
               for i in range(requests)]
    sampling = SamplingParams(max_tokens=tokens, ignore_eos=True)
    config = EngineConfig(max_rows=requests, max_slots=8, max_cpu_adapters=32)
    rows: list[tuple[str, str, str]] = []
    with Engine(base, hub.registry, config) as engine:
        def rate(adapters: list[str | None]) -> float:
            batch = [GenerationRequest(tuple(p), adapter=adapters[i % len(adapters)], sampling=sampling)
                     for i, p in enumerate(prompts)]
            start = time.perf_counter()
            done = engine.generate_many(batch)
            return sum(r.usage.completion_tokens for r in done) / (time.perf_counter() - start)

        rate(list(refs[:8]))  # warm-up: loads the 8 adapters, first kernels
        plain = max(rate([None]) for _ in range(2))
        mixed = max(rate(list(refs[:8])) for _ in range(2))
        rows += [(f"{requests} requests x {tokens} tokens, no adapter, {precision}", f"{plain:.0f} tok/s", ""),
                 (f"{requests} requests x {tokens} tokens, 8 adapters mixed", f"{mixed:.0f} tok/s", ""),
                 ("mixed-8 / no adapter", f"{mixed / plain:.2f}", "ok" if mixed / plain >= 0.8 else "LOW")]
        loads = []
        for ref in refs[8:18]:
            start = time.perf_counter()
            engine.load_adapter(ref)
            loads.append((time.perf_counter() - start) * 1000)
        rows.append(("cold load, registry -> slot (r=16, median of 10)", f"{statistics.median(loads):.1f} ms", ""))
    return rows


def check_training(hub: Any, steps: int) -> list[tuple[str, str, str]]:
    missing = [m for m in ("trl", "bitsandbytes") if not _importable(m)]
    if missing:
        return [("QLoRA SFT vs plain TRL", "skipped", f"{', '.join(missing)} not installed")]
    import json

    sys.path.insert(0, str(REPO / "bench"))
    from train_bench import DATA, run_ours, run_plain_trl

    args = Namespace(precision="nf4", steps=steps, batch_size=8, seed=0)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    ours = run_ours(hub, args)
    theirs = run_plain_trl(hub, args, rows)
    ratio = ours.tokens_per_s / theirs.tokens_per_s
    return [(f"QLoRA SFT {steps} steps x 8, adapterhub", f"{ours.tokens_per_s:.0f} tok/s", ""),
            (f"QLoRA SFT {steps} steps x 8, plain TRL + PEFT", f"{theirs.tokens_per_s:.0f} tok/s", ""),
            ("adapterhub / plain TRL", f"{ratio:.2f}x", "ok" if ratio >= 1.0 else "LOW")]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--quick", action="store_true", help="a 2-layer model and small workloads")
    args = parser.parse_args()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    from header import auto_precision, print_header

    from adapterhub import Hub
    from adapterhub.core.hardware import detect_platform

    platform = detect_platform(device=args.device)
    dense = auto_precision(platform)
    print_header("gpu_check", platform, base=f"{dense} and nf4", compute=platform.compute_dtype, lora="float32")
    if not platform.is_cuda:
        print("  (no CUDA device: this is the CPU smoke run, not the GPU check)", flush=True)
    shape = QUICK if args.quick else SMOLLM2
    table: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        hub = Hub(root / "home", device=args.device)
        hub.init(str(build_base(root / "smollm2-shaped", shape)))
        refs, folders = register_adapters(hub, 18, root)
        parts = [
            ("engine == PEFT, fp32", lambda: check_equality(
                hub, platform.with_overrides(compute_dtype="float32"), "fp32", folders)),
            (f"engine == PEFT, {dense}", lambda: check_equality(hub, platform, dense, folders)),
            ("engine == PEFT, nf4", lambda: check_equality(hub, platform, "nf4", folders)),
            ("throughput and cold load", lambda: check_throughput(
                hub, platform, dense, refs, 8 if args.quick else 64, 8 if args.quick else 64)),
            ("QLoRA SFT vs plain TRL", lambda: check_training(hub, 2 if args.quick else 20)),
        ]
        for label, part in parts:
            try:
                table += part()
            except Exception as e:  # one broken part must not hide the others' figures
                traceback.print_exc()
                table.append((label, "FAILED", f"{type(e).__name__}: {e}"[:60]))
        width = max(len(row[0]) for row in table)
        print(f"\n{'check':{width}}  {'value':>14}  verdict")
        for check, value, verdict in table:
            print(f"{check:{width}}  {value:>14}  {verdict}")
        print(f"\ngpu_check finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
