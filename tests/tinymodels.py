"""Tiny models for tests: a random 2-layer Llama (or any family the engine serves) with a byte-level BPE tokenizer and a ChatML
template, and random PEFT LoRA adapters that really change its outputs.

Plain functions, importable from any test (``from tinymodels import make_lora_folder``);
tests/conftest.py wraps them in fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


_SHAPE = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
WINDOW = 6
"""The sliding window of the tiny windowed families: shorter than every test prompt."""
_WIDE = {"initializer_range": 0.1}
"""Weights 5x transformers' default: logits of a few units, so that greedy steps are rarely at a
near-tie in nf4, and Gemma 2's final cap of 2 squeezes them."""
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    # name -> (transformers config class, what sets the family apart, small enough to bite);
    # the Llama is the suite's shared tiny base, at transformers' default initialisation
    "llama": ("LlamaConfig", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {**_WIDE, "sliding_window": WINDOW, "tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {**_WIDE,  # bias on q/k/v; the second layer windowed
        "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1, "tie_word_embeddings": True,
    }),
    "qwen3": ("Qwen3Config", {**_WIDE,
        "head_dim": 32, "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1,
        "tie_word_embeddings": True,
    }),
    "gemma": ("GemmaConfig", {**_WIDE, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh"}),
    "gemma2": ("Gemma2Config", {**_WIDE,
        "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": WINDOW,
        "attn_logit_softcapping": 0.5, "final_logit_softcapping": 2.0,
    }),
    "gemma3_text": ("Gemma3TextConfig", {**_WIDE,
        "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 2.0},
        },
    }),
    "phi3": ("Phi3Config", {**_WIDE,  # fused qkv_proj and gate_up_proj; rotary on half of each head
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5},
        "tie_word_embeddings": False,
    }),
    "phi3-longrope": ("Phi3Config", {**_WIDE,  # Phi-3.5 / Phi-4-mini: factors switch past 24 tokens, inside the test prompts (20-38)
        "rope_parameters": {
            "rope_type": "longrope", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [2.0, 4.0, 8.0, 16.0],
        },
        "original_max_position_embeddings": 24, "tie_word_embeddings": False,
    }),
}
"""Tiny random configs of every family the engine serves: ``config.model_type`` names, and a
variant or two (``phi3-longrope``) where a family's configs differ in what the engine must do."""


def build_tiny_folder(folder: Path, family: str = "llama", *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a tiny random causal LM of ``family`` (a key of :data:`FAMILY_CONFIGS`) and its
    tokenizer as a plain HF folder."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tiny_tokenizer(folder)
    config_class, extra = FAMILY_CONFIGS[family]
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_SHAPE,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_llama_folder(folder: Path, *, seed: int = 0, hidden: int = 64) -> Path:
    """Save a tiny random LlamaForCausalLM and its tokenizer as a plain HF folder."""
    return build_tiny_folder(folder, "llama", seed=seed, hidden=hidden)


def make_lora_folder(
    base_dir: Path,
    folder: Path,
    *,
    seed: int = 0,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    """Save a PEFT LoRA adapter with random non-zero A and B (so it really changes outputs)."""
    return save_lora(base_dir, folder, seed=seed, r=r, targets=targets, std=0.5)


def save_lora(base_dir: Path, folder: Path, *, seed: int, r: int, targets: Sequence[str], std: float = 0.3,
              **lora: Any) -> Path:
    """A PEFT LoRA with random non-zero A and B (init_lora_weights=False), saved as safetensors;
    ``lora`` goes to PEFT's ``LoraConfig`` (``use_rslora``, ``rank_pattern``, ...)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, **lora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # large enough to change greedy tokens on a random model
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, std)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


class PeftReference:
    """Runs one request alone through PEFT (full recompute each step, no cache tricks)."""

    def __init__(self, base_dir: Path, folders: dict[str, Path], precision: str = "fp32", *,
                 platform: Any = None) -> None:
        from peft import PeftModel

        from adapterhub.models.base import load_base

        self.base = load_base(base_dir, precision, platform=platform)
        names = list(folders)
        self.model = PeftModel.from_pretrained(self.base.model, folders[names[0]], adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(folders[name], adapter_name=name)
        self.model.eval()

    def logits(self, ids: Sequence[int], adapter: str | None) -> Any:
        """Next-token logits ``[vocab]`` after ``ids`` with ``adapter`` (None: adapters off)."""
        import torch

        with torch.inference_mode():
            return self._logits(ids, adapter)

    def _logits(self, ids: Sequence[int], adapter: str | None) -> Any:
        import torch

        x = torch.tensor([list(ids)], device=self.base.device)
        if adapter is None:
            with self.model.disable_adapter():
                return self.model(input_ids=x).logits[0, -1].float()
        self.model.set_adapter(adapter)
        return self.model(input_ids=x).logits[0, -1].float()

    def cached_greedy(self, prompt: Sequence[int], adapter: str | None, n: int) -> tuple[list[int], list[Any]]:
        """Greedy tokens and each step's logits with transformers' own KV cache, as ``generate``
        runs a request: where a rope's tables depend on the length (LongRoPE), the keys cached
        before the switch keep theirs, unlike a full recompute (:meth:`greedy`)."""
        import contextlib

        import torch

        context = self.model.disable_adapter() if adapter is None else contextlib.nullcontext()
        if adapter is not None:
            self.model.set_adapter(adapter)
        tokens: list[int] = []
        steps: list[Any] = []
        with torch.inference_mode(), context:
            out = self.model(input_ids=torch.tensor([list(prompt)], device=self.base.device), use_cache=True)
            for _ in range(n):
                steps.append(out.logits[0, -1].float())
                tokens.append(int(steps[-1].argmax()))
                out = self.model(input_ids=torch.tensor([[tokens[-1]]], device=self.base.device),
                                 cache=out.cache, use_cache=True)
        return tokens, steps

    def greedy(self, prompt: Sequence[int], adapter: str | None, n: int) -> list[int]:
        return self.greedy_with_margins(prompt, adapter, n)[0]

    def greedy_with_margins(
        self, prompt: Sequence[int], adapter: str | None, n: int
    ) -> tuple[list[int], list[float]]:
        """Greedy tokens and, per step, the gap between the best and second-best logit."""
        ids, margins = list(prompt), []
        for _ in range(n):
            logits = self.logits(ids, adapter)
            top = logits.topk(2).values
            ids.append(int(logits.argmax()))
            margins.append(float(top[0] - top[1]))
        return ids[len(prompt):], margins
