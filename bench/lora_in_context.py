"""What the grouped LoRA ops cost alone, and between the base's matmuls as in a real step.

    .venv/bin/python bench/lora_in_context.py               # 1 thread
    .venv/bin/python bench/lora_in_context.py --threads 2

Lays out ``--adapters`` random r=16 q/k/v/o adapters in a ``LoraSlots`` of 32 slots with
SmolLM2-135M's widths (30 layers, hidden 576, 3 KV heads of 64, MLP 1536), mixes 32 rows round
robin, and times, per 30-layer pass (median of 15): the base's projections alone (random
weights in the compute dtype, a fresh set per layer as a real step streams them), the LoRA
deltas alone, and both interleaved layer by layer; then the same with one layer's base weights
reused (nothing streams) and with one layer's LoRA weights reused. "in context" is interleaved
minus base alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from header import auto_precision, print_header

from adapterhub.core.hardware import detect_platform
from adapterhub.engine.lora import LoraSlots
from adapterhub.models.adapters import LoraAdapter

LAYERS, HIDDEN, KV, MLP = 30, 576, 192, 1536
DIMS = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV), "o_proj": (HIDDEN, HIDDEN)}
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",)}


def timed(fn: Callable[[int], None]) -> float:
    """Median ms of a 30-layer pass of ``fn(layer)``."""
    for _ in range(3):
        for layer in range(LAYERS):
            fn(layer)
    passes = []
    for _ in range(15):
        start = time.perf_counter()
        for layer in range(LAYERS):
            fn(layer)
        passes.append((time.perf_counter() - start) * 1000)
    return statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--lora-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    platform = detect_platform()
    dtype = torch.bfloat16 if auto_precision(platform) == "bf16" else torch.float32
    print_header("lora_in_context", replace(platform, threads=args.threads), base=str(dtype).removeprefix("torch."),
                 lora=args.lora_dtype)
    torch.inference_mode().__enter__()

    slots = LoraSlots(DIMS, GROUPS, num_layers=LAYERS, num_slots=32, rank=16, dtype=getattr(torch, args.lora_dtype))
    for slot in range(args.adapters):
        tensors = {}
        for layer in range(LAYERS):
            for target, (fan_in, fan_out) in DIMS.items():
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(16, fan_in) * 0.01
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, 16) * 0.01
        slots.install(slot, slots.prepare(LoraAdapter({"r": 16, "lora_alpha": 16}, tensors), f"a{slot}"))
    mix = slots.row_mix([{i % args.adapters: 1.0} for i in range(32)])
    assert mix is not None

    x = torch.randn(32, HIDDEN, dtype=dtype)
    mlp_x = torch.randn(32, MLP, dtype=dtype)
    qkv, o = torch.zeros(32, HIDDEN + 2 * KV, dtype=dtype), torch.zeros(32, HIDDEN, dtype=dtype)
    weights = [
        (torch.randn(HIDDEN + 2 * KV, HIDDEN, dtype=dtype), torch.randn(HIDDEN, HIDDEN, dtype=dtype),
         torch.randn(2 * MLP, HIDDEN, dtype=dtype), torch.randn(HIDDEN, MLP, dtype=dtype))
        for _ in range(LAYERS)
    ]

    def base(layer: int) -> None:
        w_qkv, w_o, w_gate_up, w_down = weights[layer]
        torch.mm(x, w_qkv.t(), out=qkv)
        torch.mm(x, w_o.t(), out=o)
        torch.mm(x, w_gate_up.t())
        torch.mm(mlp_x, w_down.t())

    def lora(layer: int) -> None:
        slots.add_delta(mix, layer, "qkv", x, qkv)
        slots.add_delta(mix, layer, "o", x, o)

    print(f"one 30-layer pass, 32 rows, {args.adapters} adapters in 32 slots (ms, median of 15):")
    for label, base_of, lora_of in (
        ("every layer its own weights", lambda i: i, lambda i: i),
        ("one layer's base weights reused", lambda i: 0, lambda i: i),
        ("one layer's LoRA weights reused", lambda i: i, lambda i: 0),
    ):
        alone_base = timed(lambda i, f=base_of: base(f(i)))
        alone_lora = timed(lambda i, f=lora_of: lora(f(i)))
        both = timed(lambda i, f=base_of, g=lora_of: (base(f(i)), lora(g(i))))
        print(f"  {label:32s} base {alone_base:6.2f} | LoRA alone {alone_lora:5.2f} | interleaved {both:6.2f} "
              f"| LoRA in context {both - alone_base:5.2f} ({(both - alone_base) / alone_lora:.1f}x alone)")


if __name__ == "__main__":
    main()
