"""Per-row token choice and stop rules: each row of a batch samples and stops on its own terms.

Design choices:

* **Greedy rows are one ``argmax``** over the whole batch; only rows with ``temperature > 0``
  go through temperature, top-k and top-p, one at a time.
* **A seed is a generator of the request's own**, so a seeded request draws the same tokens
  whatever else shares its batch and wherever it sits in it.
* **Text is detokenized incrementally** (the prefix/read-offset scheme of vLLM and TGI): each
  step decodes a short window, so the cost per token does not grow with the completion, and a
  multi-byte character split over tokens is held back until it is whole.
* **Stop strings are cut out of the text** as the OpenAI API does, and text that could still be
  the start of a stop string is held back from the stream until it cannot be.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from adapterhub.engine.types import SamplingParams

_PROMPT_CONTEXT = 5  # prompt tokens kept in the decode window, for tokenizers that merge spaces
# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): float32 logits divided by a
# vanishing temperature overflow to inf, and softmax turns them into NaN.
_MIN_TEMPERATURE = 1e-5


class RowSampler:
    """Sampling state of one request."""

    def __init__(self, params: SamplingParams, stop_token_ids: Sequence[int]) -> None:
        self.params = params
        self.stop_token_ids = tuple(stop_token_ids)
        self.generator: torch.Generator | None = None
        if params.temperature >= _MIN_TEMPERATURE:
            self.generator = torch.Generator()
            seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
            self.generator.manual_seed(seed)

    def choose(self, logits: torch.Tensor) -> int:
        """Sample one token from ``[vocab]`` float32 logits (already masked for min_tokens)."""
        p = self.params
        if self.generator is None:  # greedy (temperature 0 or vanishing)
            return int(logits.argmax())
        logits = logits.cpu() / p.temperature  # the request's generator lives on the host
        if p.top_k and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= p.top_p
            drop[0] = False  # a top_p under float32's range compares as 0 and would drop all
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def choose_tokens(
    logits: torch.Tensor,
    samplers: Sequence[RowSampler],
    generated: Sequence[int],
    on_error: Callable[[int, Exception], None] | None = None,
) -> list[int | None]:
    """Pick the next token of every row.

    Args:
        logits: ``[rows, vocab]`` float32.
        samplers: each row's sampler.
        generated: tokens each row has produced so far (for ``min_tokens``).
        on_error: called with ``(row, error)`` when a row's sampler raises; that row's token is
            then None and the other rows are unaffected (each draws exactly once). Without it
            the error propagates.

    Returns:
        One token id per row (None for a row whose sampler failed).
    """
    for i, (sampler, count) in enumerate(zip(samplers, generated, strict=True)):
        if count < sampler.params.min_tokens and sampler.stop_token_ids:
            logits[i, list(sampler.stop_token_ids)] = float("-inf")
    tokens: list[int | None] = logits.argmax(dim=-1).tolist()
    for i, sampler in enumerate(samplers):
        if sampler.generator is not None:
            try:
                tokens[i] = sampler.choose(logits[i])
            except Exception as error:
                if on_error is None:
                    raise
                on_error(i, error)
                tokens[i] = None
    return tokens


class TextTracker:
    """Incremental detokenization of one request plus its stop strings.

    ``push`` returns the text that may be streamed now; ``stopped`` says a stop string was seen.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self.text = ""  # all decoded completion text (cut at a stop string once seen)
        self._sent = 0  # characters of ``text`` already streamed
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int, *, check_stop: bool = True) -> str:
        """Add one generated token; return the newly streamable text.

        Args:
            token: the generated token id.
            check_stop: look for stop strings in the new text (off before ``min_tokens``).
        """
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            start = len(self.text)
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            if self.stop and check_stop:
                self._find_stop(max(0, start - self._hold))
        return self._release(final=False)

    def _find_stop(self, search_from: int) -> None:
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def flush(self) -> str:
        """The text still held back, at the end of the request."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        end = len(self.text) if (final or self.stopped) else len(self.text) - self._hold
        if end <= self._sent:
            return ""
        chunk = self.text[self._sent : end]
        self._sent = end
        return chunk
