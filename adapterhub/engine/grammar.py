"""Constrained decoding: a row's completion must match a grammar (a JSON schema, most often).

llguidance (the grammar engine behind vLLM's and SGLang's ``guidance`` backends, and OpenAI's
structured outputs) does the work; we keep three things here:

* **One tokenizer view per engine.** ``llguidance.hf.from_tokenizer`` walks the vocabulary
  (slow on a real one), so it is built once, on first use, and shared by every row.
* **A matcher per row.** Each constrained request gets its own ``LLMatcher``, built on the
  caller's thread at submit, since compiling a grammar is too slow for the engine thread
  (measured: see bench/README.md, "Figures behind design choices"); a schema the library cannot
  compile is a :class:`ConfigError` with its message.
* **Masks as logits.** Each step, a constrained row's allowed tokens (llguidance's bitmask, one
  bit per token) set every other logit to ``-inf`` before the row chooses; rows without a
  grammar are not touched.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from adapterhub.errors import ConfigError

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
"""The schema of OpenAI's ``response_format={"type": "json_object"}``: any JSON object."""


def json_schema_grammar(schema: Mapping[str, Any] | None = None) -> str:
    """An llguidance grammar for compact JSON matching ``schema`` (any object when None): no
    whitespace between tokens, so a model cannot pad an answer out to ``max_tokens``.

    Raises:
        ConfigError: ``schema`` is not a JSON object.
    """
    import llguidance

    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(dict(schema or ANY_OBJECT)), defaults={"whitespace_flexible": False}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"response_format schema is not a JSON schema object ({e})") from e


class Grammars:
    """The engine's grammar compiler: checks grammars and makes one matcher per row."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        """Args:
        tokenizer: the base's (fast) Hugging Face tokenizer.
        vocab_size: the model's logits width (may be over the tokenizer's length).
        eos_token_ids: tokens that end a completion; allowed where the grammar is complete.
        """
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._view: Any = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> Any:
        with self._lock:
            if self._view is None:
                import llguidance.hf

                self._view = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self.vocab_size, eos_token=self._eos or None
                )
            return self._view

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for one row.

        Raises:
            ConfigError: the grammar does not compile (the library's reason is in the message).
        """
        import llguidance

        view = self._llg_tokenizer()
        problem = llguidance.LLMatcher.validate_grammar(grammar, view)
        if problem:
            raise ConfigError(f"response_format: the schema cannot be enforced: {problem}")
        return llguidance.LLMatcher(view, grammar, log_level=0)


def allowed_tokens(matcher: Any, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[vocab]`` bool: the tokens ``matcher`` allows next (llguidance's bitmask, unpacked)."""
    packed = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.uint8)
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # little-endian within each byte
    return bits.flatten()[:vocab_size].bool().to(device)
