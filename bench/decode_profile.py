"""Where a decode step's time goes: the engine's forward with and without mixed adapters.

    .venv/bin/python bench/decode_profile.py                # 32 rows, 8 adapters in 32 slots, span 71
    .venv/bin/python bench/decode_profile.py --rows 8 --threads 2 --table

Builds the engine's own pieces (``DecoderRunner`` over the real default base in the precision the
hardware picks, a ``LoraSlots`` of ``--slots`` slots, as many as serve_bench's engine has, with
``--adapters`` random r=16 q/k/v/o adapters in the lowest), prefills ``--rows`` prompts of
``--span`` tokens, then times decode steps with no adapter and with every row on its own slot
(round robin), alternately, by the median wall time of ``--steps`` steps each, and splits
profiled steps into projections, LM head, attention, LoRA and the rest with ``torch.profiler``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from header import auto_precision, print_header
from torch.profiler import ProfilerActivity, profile, record_function

from adapterhub.core.hardware import detect_platform
from adapterhub.engine.decoder import DecoderRunner, compute_dtype
from adapterhub.engine.lora import LoraSlots
from adapterhub.models.adapters import LoraAdapter
from adapterhub.models.base import load_base, materialize_base

REPO = Path(__file__).resolve().parent.parent
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def labelled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(name):
            return fn(*args, **kwargs)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--slots", type=int, default=32, help="the slot table's size (>= --adapters)")
    parser.add_argument("--span", type=int, default=71, help="tokens already in each row's cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lora-dtype", default="float32", choices=["float32", "base"],
                        help="the slots' dtype, as EngineConfig.lora_dtype")
    parser.add_argument("--table", action="store_true", help="also print torch.profiler's op table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cache = Path(os.environ.get("ADAPTERHUB_TEST_CACHE", REPO / ".tmp" / "test-home"))
    platform = detect_platform()
    precision = auto_precision(platform)
    print_header("decode_profile", replace(platform, threads=args.threads), base=precision,
                 compute=platform.compute_dtype, lora=args.lora_dtype, kv_cache="float32")
    base = load_base(materialize_base(cache).path, precision)
    model = base.model
    layers = model.config.num_hidden_layers
    torch.inference_mode().__enter__()
    lora_dtype = torch.float32 if args.lora_dtype == "float32" else compute_dtype(model)
    slots = LoraSlots.for_model(model, num_slots=max(args.slots, args.adapters), rank=16, dtype=lora_dtype)
    dims = slots.dims
    for slot in range(args.adapters):
        tensors = {}
        for layer in range(layers):
            for t in ATTENTION:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{t}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(16, dims[t][0]) * 0.01
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(dims[t][1], 16) * 0.01
        adapter = LoraAdapter(config={"r": 16, "lora_alpha": 16}, tensors=tensors)
        slots.install(slot, slots.prepare(adapter, f"a{slot}"))
    runner = DecoderRunner(model, slots, max_rows=args.rows, max_seq_len=4 * args.span)
    runner.prefill([[1 + i] * args.span for i in range(args.rows)], 0, [{}] * args.rows)
    tokens = torch.randint(0, 1000, (args.rows,))
    lengths = torch.full((args.rows,), args.span)
    mixes = {
        "no adapter": None,
        f"{args.adapters} adapters mixed": slots.row_mix([{i % args.adapters: 1.0} for i in range(args.rows)]),
    }
    slots.add_delta = labelled("lora", slots.add_delta)  # type: ignore[method-assign]
    runner._logits = labelled("lm_head", runner._logits)  # type: ignore[method-assign]

    print(f"decode step: {args.rows} rows, span {args.span}, {args.threads} threads, {precision} base, "
          f"{args.adapters} adapters in {slots.num_slots} slots")
    # timed side by side: one step of each, in turn, so a busy neighbour slows both alike
    for mix in mixes.values():
        for _ in range(2):
            runner.decode(tokens, lengths, mix)
    times: dict[str, list[float]] = {name: [] for name in mixes}
    for _ in range(args.steps):
        for name, mix in mixes.items():
            start = time.perf_counter()
            runner.decode(tokens, lengths, mix)
            times[name].append(time.perf_counter() - start)
    steps = {name: statistics.median(t) * 1000 for name, t in times.items()}
    for name, mix in mixes.items():
        step_ms = steps[name]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                runner.decode(tokens, lengths, mix)
        events = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in prof.key_averages())

        def share(key: str, inclusive: bool = False, events: Any = events, total: float = total) -> float:
            event = events.get(key)
            if event is None:
                return 0.0
            return 100 * (event.cpu_time_total if inclusive else event.self_cpu_time_total) / total

        lora = share("lora", inclusive=True)
        print(
            f"  {name:20s} {step_ms:6.1f} ms/step | matmul {share('aten::mm'):4.1f}% "
            f"(LM head {share('lm_head', inclusive=True):4.1f}%) | bmm {share('aten::bmm'):4.1f}% "
            f"(attention + LoRA) | LoRA {lora:4.1f}% | KV writes {share('aten::_index_put_impl_'):3.1f}%"
        )
        if args.table:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    plain, mixed = steps.values()
    print(f"  no adapter / mixed step time: {plain / mixed:.2f} (the decode-only bound on serve_bench's (e)/(c))")


if __name__ == "__main__":
    main()
