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

from adapterhub.engine.grammar import allowed_tokens
from adapterhub.engine.types import SamplingParams, TokenLogprob

_PROMPT_CONTEXT = 5  # prompt tokens kept in the decode window, for tokenizers that merge spaces
# Below this a temperature is greedy (vLLM's _SAMPLING_EPS): float32 logits divided by a
# vanishing temperature overflow to inf, and softmax turns them into NaN.
_MIN_TEMPERATURE = 1e-5


class RowSampler:
    """Sampling state of one request."""

    def __init__(self, params: SamplingParams, stop_token_ids: Sequence[int], prompt_ids: Sequence[int] = (),
                 matcher: Any = None) -> None:
        """Args:
        params: the request's sampling settings.
        stop_token_ids: end-of-sequence tokens (masked before ``min_tokens``).
        prompt_ids: the prompt, for the repetition penalty.
        matcher: the row's llguidance matcher when ``params.grammar`` is set (:mod:`.grammar`).
        """
        self.params = params
        self.matcher = matcher
        self.stop_token_ids = tuple(stop_token_ids)
        self._prompt_seen = sorted(set(prompt_ids)) if params.repetition_penalty != 1.0 else []
        self.generator: torch.Generator | None = None
        if params.temperature >= _MIN_TEMPERATURE:
            self.generator = torch.Generator()
            seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
            self.generator.manual_seed(seed)

    def adjust(self, logits: torch.Tensor, generated: Sequence[int]) -> None:
        """Apply the row's bias and penalties to its ``[vocab]`` logits, in place.

        In vLLM's order: ``logit_bias``, then the repetition penalty over prompt and completion
        (transformers' ``RepetitionPenaltyLogitsProcessor``), then OpenAI's presence and frequency
        penalties over the completion.
        """
        p = self.params
        if p.logit_bias:
            ids, biases = zip(*p.logit_bias, strict=True)
            index = torch.tensor(ids, device=logits.device)
            logits.index_add_(0, index, torch.tensor(biases, dtype=logits.dtype, device=logits.device))
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted({*self._prompt_seen, *generated}), dtype=torch.long, device=logits.device)
            scores = logits[seen]
            logits[seen] = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and generated:
            ids_seen, counts = torch.tensor(list(generated), device=logits.device).unique(return_counts=True)
            logits[ids_seen] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty

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
    generated: Sequence[Sequence[int]],
    on_error: Callable[[int, Exception], None] | None = None,
) -> list[int | None]:
    """Pick the next token of every row (``logits`` are changed in place: bias, penalties,
    ``min_tokens`` and grammar masks).

    Args:
        logits: ``[rows, vocab]`` float32.
        samplers: each row's sampler.
        generated: the tokens each row has produced so far (penalties, ``min_tokens``).
        on_error: called with ``(row, error)`` when a row's sampler raises; that row's token is
            then None and the other rows are unaffected (each draws exactly once). Without it
            the error propagates.

    Returns:
        One token id per row (None for a row whose sampler failed).
    """
    for i, (sampler, done) in enumerate(zip(samplers, generated, strict=True)):
        if sampler.params.adjusts_logits:
            sampler.adjust(logits[i], done)
        if len(done) < sampler.params.min_tokens and sampler.stop_token_ids:
            logits[i, list(sampler.stop_token_ids)] = float("-inf")
        if sampler.matcher is not None:
            logits[i].masked_fill_(~allowed_tokens(sampler.matcher, logits.shape[-1], logits.device), float("-inf"))
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


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen ``token``'s entry of one row's ``[vocab]`` log-softmax, with its ``top`` best."""
    best = torch.topk(logprobs, top) if top else None
    return TokenLogprob(
        token_id=token,
        logprob=float(logprobs[token]),
        top=() if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)),
    )


def prompt_token_logprobs(logits: torch.Tensor, prompt: Sequence[int], top: int) -> tuple[TokenLogprob | None, ...]:
    """Each prompt token's log-probability given the tokens before it (None for the first, which
    has none), from the prompt's ``[len, vocab]`` logits."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)  # position i scores token i + 1
    tokens = list(prompt[1:])
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
    best = torch.topk(logprobs, top) if top else None
    ids = best.indices.tolist() if best is not None else [[] for _ in tokens]
    values = best.values.tolist() if best is not None else [[] for _ in tokens]
    return (None, *(
        TokenLogprob(token, value, tuple(zip(i, v, strict=True)))
        for token, value, i, v in zip(tokens, chosen, ids, values, strict=True)
    ))


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
        """The text still held back, at the end of the request.

        Tokens held because they end inside a UTF-8 character are decoded now, with the
        replacement character, as decoding the whole completion at once gives them.
        """
        if not self.stopped and self._read < len(self._ids):
            start = len(self.text)
            self.text += self._decode(self._ids[self._prefix :])[len(self._decode(self._ids[self._prefix : self._read])) :]
            self._read = len(self._ids)
            if self.stop:
                self._find_stop(max(0, start - self._hold))
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        end = len(self.text) if (final or self.stopped) else len(self.text) - self._hold
        if end <= self._sent:
            return ""
        chunk = self.text[self._sent : end]
        self._sent = end
        return chunk
