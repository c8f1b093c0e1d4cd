"""Tiny-but-realistic bases, one per decoder family the engine serves, for ``serve_bench.py --base``.

    .venv/bin/python bench/family_bases.py .tmp/family-bases                 # every family, 4 layers
    .venv/bin/python bench/family_bases.py .tmp/family-bases --layers 2 --family mistral phi3
    for d in .tmp/family-bases/*/; do
        .venv/bin/python bench/serve_bench.py --base "$d" --only-mixed 2>/dev/null | grep '^mixed'
    done

Each folder (``OUT_DIR/<model_type>``) holds a random-weight model built from the family's
transformers config class with the widths of the family's smallest real member: hidden and
intermediate size, attention and KV heads, head_dim, rope, tied embeddings or not, and the
switches that set the family apart (Qwen2's q/k/v bias, built in; Qwen3's q/k norms, built in;
sliding windows; Gemma 2's soft-caps and ``query_pre_attn_scalar``; Gemma 3's local/global
layer pattern and its two rotary tables; Phi-3's fused projections). Only the depth is cut
(``--layers``, default 4), so a decode step costs per layer what the real model's does, and
``serve_bench.py --only-mixed`` runs in minutes on a 2-core CPU.

What is not the real model's:

* **Vocabulary capped at 32768** (the real one where smaller: Mistral v0.3 32768, Phi-3 32064).
  Llama 3.2's 128k, Qwen's 152k and Gemma's 256k rows would make the LM head most of a step on
  a CPU at 4 layers of 16-28; at 32k it is what it is for Mistral and Phi-3.
* **One tokenizer for all**: the tests' byte-level BPE with a ChatML template
  (``tests/tinymodels.build_tiny_tokenizer``, 320 tokens), its vocabulary padded with plain
  tokens (``Ġtok<i>``, no merges: encoding never produces them, decoding gives `` tok<i>``) up
  to the model's vocab, so every id the random model samples detokenizes to text, as with a
  real tokenizer. Its prompts are longer in tokens than a real one's: the bench's are 48 (~20).
* **Mistral** copies Mistral-7B-v0.3's widths, whose own config sets no sliding window; the
  window of 4096 (v0.1's) is set so that the engine's windowed path runs. At 4 layers it is
  ~1.1B parameters (2.3 GB in bf16): ``--layers 2`` halves its layers' share.
* **Gemma 3**: the real pattern is 5 local layers to 1 global; with fewer than 6 layers the
  last layer is made global, so both layer types and both rotary tables run.
* Random weights, saved in bf16 (as the real checkpoints are); ``materialize_base`` stores
  them in fp32 and ``load_base`` in the precision asked for.

Smallest real members copied: Llama-3.2-1B, Mistral-7B-v0.3, Qwen2.5-0.5B, Qwen3-0.6B,
gemma-2b, gemma-2-2b, gemma-3-1b, Phi-3-mini-4k.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from header import print_header

from adapterhub.core.hardware import detect_platform

REPO = Path(__file__).resolve().parent.parent
VOCAB_CAP = 32768


def _gemma3_layers(count: int) -> list[str]:
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(count)]
    if "full_attention" not in types:
        types[-1] = "full_attention"
    return types


# model_type -> (config class, real member, real vocab, its config but depth and vocab)
FAMILIES: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "Llama-3.2-1B", 128256, {
        "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192},
    }),
    "mistral": ("MistralConfig", "Mistral-7B-v0.3", 32768, {
        "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32768, "sliding_window": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    }),
    "qwen2": ("Qwen2Config", "Qwen2.5-0.5B", 151936, {  # bias on q/k/v: Qwen2's own modules
        "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
        "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768, "use_sliding_window": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    }),
    "qwen3": ("Qwen3Config", "Qwen3-0.6B", 151936, {  # q/k norms: Qwen3's own modules
        "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960, "use_sliding_window": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    }),
    "gemma": ("GemmaConfig", "gemma-2b", 256000, {
        "hidden_size": 2048, "intermediate_size": 16384, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
    }),
    "gemma2": ("Gemma2Config", "gemma-2-2b", 256000, {  # layers alternate local/global
        "hidden_size": 2304, "intermediate_size": 9216, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
    }),
    "gemma3_text": ("Gemma3TextConfig", "gemma-3-1b", 262144, {
        "hidden_size": 1152, "intermediate_size": 6912, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768, "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256, "sliding_window": 512,
        "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
    }),
    "phi3": ("Phi3Config", "Phi-3-mini-4k-instruct", 32064, {  # fused qkv_proj, gate_up_proj
        "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32,
        "num_key_value_heads": 32, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "sliding_window": 2047,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
    }),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="one folder per family is written under it")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of every base (default 4)")
    parser.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES),
                        help="families to write (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def padded_tokenizer(vocab: int, scratch: Path) -> Any:
    """The tests' ChatML byte-level BPE, its vocabulary padded to ``vocab`` with plain tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    sys.path.insert(0, str(REPO / "tests"))
    from tinymodels import build_tiny_tokenizer

    tiny = build_tiny_tokenizer(scratch)
    data = json.loads(tiny.backend_tokenizer.to_str())
    table = data["model"]["vocab"]
    if sorted(table.values()) != list(range(len(table))) or len(tiny) != len(table):
        raise SystemExit("the tiny tokenizer's ids are not 0..n-1; cannot pad its vocabulary")
    i = 0
    while len(table) < vocab:
        token = f"Ġtok{i}"
        if token not in table:
            table[token] = len(table)
        i += 1
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tiny.bos_token, eos_token=tiny.eos_token, pad_token=tiny.pad_token, unk_token=tiny.unk_token,
    )
    fast.chat_template = tiny.chat_template
    assert len(fast) == vocab
    return fast


def build(family: str, folder: Path, layers: int, seed: int, scratch: Path) -> int:
    """Write ``family``'s base into ``folder``; return its parameter count."""
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    class_name, _member, real_vocab, sizes = FAMILIES[family]
    vocab = min(real_vocab, VOCAB_CAP)
    tokenizer = padded_tokenizer(vocab, scratch / family)
    extra: dict[str, Any] = {}
    if family == "gemma3_text":
        extra["layer_types"] = _gemma3_layers(layers)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = getattr(transformers, class_name)(
        vocab_size=vocab, num_hidden_layers=layers, **special, **sizes, **extra
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(**special)
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    args = parse_args()
    print_header("family_bases", detect_platform(), weights="bfloat16 (random)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="family-bases-") as tmp:
        for family in args.family:
            class_name, member, real_vocab, sizes = FAMILIES[family]
            count = build(family, args.out / family, args.layers, args.seed, Path(tmp))
            print(f"{family:12s} {class_name:17s} as {member:23s} hidden {sizes['hidden_size']:5d}, "
                  f"{args.layers} layers, vocab {min(real_vocab, VOCAB_CAP)} (real {real_vocab}): "
                  f"{count / 1e6:7.1f} M parameters -> {args.out / family}", flush=True)


if __name__ == "__main__":
    main()
