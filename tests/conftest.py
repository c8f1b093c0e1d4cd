"""Shared fixtures: a tiny random Llama base, a temporary hub home, the real default base.

Everything is offline. The tiny base is a 2-layer Llama with a byte-level BPE tokenizer trained in
milliseconds and a ChatML template, materialised through the same code path as a real base.
The real default base (SmolLM2-135M-Instruct) is materialised once into ``.tmp/test-home``
(gitignored; override with ``ADAPTERHUB_TEST_CACHE``) and reused by the few end-to-end tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["hubserver.fixtures"]  # the Hub-compatible test server (tests/hubserver/)

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

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


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test runs offline with its own HF cache; ADAPTERHUB_HOME points nowhere real."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path_factory.getbasetemp() / "unset-home"))


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


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A materialised tiny base folder (built once per session)."""
    from adapterhub.base import materialize_base

    src = build_tiny_llama_folder(tmp_path_factory.mktemp("tiny-src"))
    home = tmp_path_factory.mktemp("tiny-home")
    return materialize_base(home, str(src)).path


@pytest.fixture(scope="session")
def other_tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny base, wider and with other weights, for compatibility tests."""
    from adapterhub.base import materialize_base

    src = build_tiny_llama_folder(
        tmp_path_factory.mktemp("other-src") / "tiny-other", seed=1, hidden=96
    )
    home = tmp_path_factory.mktemp("other-home")
    return materialize_base(home, str(src)).path


@pytest.fixture(scope="session")
def tiny_base(tiny_base_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny base loaded in fp32 (shared; tests must not modify it)."""
    from adapterhub.base import load_base

    return load_base(tiny_base_dir, "fp32")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh hub home, also exported as ADAPTERHUB_HOME for CLI subprocesses."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ADAPTERHUB_HOME", str(path))
    return path


@pytest.fixture
def registry(home: Path):  # type: ignore[no-untyped-def]
    from adapterhub.registry import Registry

    return Registry(home)


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


@pytest.fixture
def lora_factory():  # type: ignore[no-untyped-def]
    """:func:`make_lora_folder`, for tests that need several or unusual adapters."""
    return make_lora_folder


@pytest.fixture
def lora_dir(tiny_base_dir: Path, tmp_path: Path) -> Path:
    """A random PEFT adapter folder that fits the tiny base."""
    return make_lora_folder(tiny_base_dir, tmp_path / "lora")


@pytest.fixture(scope="session")
def real_base_dir() -> Path:
    """The real default base, materialised once through the offline path and cached."""
    from adapterhub.base import materialize_base

    cache = Path(os.environ.get("ADAPTERHUB_TEST_CACHE", REPO / ".tmp" / "test-home"))
    return materialize_base(cache, progress=lambda msg: print(msg, file=sys.stderr)).path
