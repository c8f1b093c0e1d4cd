"""Tiny models for tests: a random 2-layer Llama with a byte-level BPE tokenizer and a ChatML
template, and random PEFT LoRA adapters that really change its outputs.

Plain functions, importable from any test (``from tinymodels import make_lora_folder``);
tests/conftest.py wraps them in fixtures.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Answer in JSON with keys answer and confidence.",
    "Arr matey, the sea be calm today! What is two plus two? Four.",
    "user assistant system hello world the quick brown fox jumps over the lazy dog 0123456789",
    '{"answer": "yes", "confidence": 0.9} [1, 2, 3] a b c d e f g h i j k l m n o p q r s t u v w x y z',
]


def _devices() -> list[str]:
    import torch

    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


DEVICES = _devices()
"""Every device present: the CPU always, CUDA where torch sees a GPU (tests parametrise over it)."""


def build_tiny_tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer with ChatML special tokens, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama_folder(folder: Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a tiny random LlamaForCausalLM and its tokenizer as a plain HF folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_lora_folder(
    base_dir: Path,
    folder: Path,
    *,
    seed: int = 0,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    """Save a PEFT LoRA adapter with random non-zero A and B (so it really changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # large enough to change greedy tokens on a random model
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder
