"""The engine's request and result types: what a caller hands in and what streams back.

Plain frozen dataclasses, shared by the library facade, the HTTP server and the TUI. The server's
wire schemas (pydantic) convert to and from these in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from adapterhub.errors import ConfigError

if TYPE_CHECKING:
    from adapterhub.registry import Version

FinishReason = Literal["stop", "length", "cancelled", "error"]
MAX_LOGPROBS = 20
"""The most alternatives a token's log-probabilities list (OpenAI's ``top_logprobs`` limit)."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; every row of a batch carries its own.

    ``temperature == 0`` means greedy. ``seed`` makes sampling reproducible for that request
    alone, whatever else shares its batch.
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    prompt_logprobs: int | None = None
    """Return the log-probability of every prompt token after the first, with the
    ``prompt_logprobs`` most likely tokens at each position (0-20; vLLM's field, behind the
    completions API's ``echo``). With it ``max_tokens`` may be 0: the prompt is scored only."""
    logprobs: int | None = None
    """Return each chosen token's log-probability and those of the ``logprobs`` most likely
    tokens (0-20); None returns none. They are the model's own distribution for the row's
    adapter, before bias, penalties and temperature (vLLM's default, ``raw_logprobs``)."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token the completion already holds."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted once per earlier occurrence in the completion."""
    repetition_penalty: float = 1.0
    """vLLM's and transformers': a logit of a token seen in the prompt or the completion is
    divided by it (multiplied when negative); 1 turns it off."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """``(token id, bias)`` pairs added to the logits (OpenAI's ``logit_bias``)."""
    grammar: str | None = None
    """An llguidance grammar the completion must match (``engine.grammar.json_schema_grammar``
    makes one from a JSON schema); decoding is constrained token by token, and the completion
    stops when the grammar is complete."""

    @property
    def adjusts_logits(self) -> bool:
        """Whether bias or a penalty changes this row's logits before it chooses."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty != 1.0)

    def __repr__(self) -> str:  # a compiled grammar runs to kilobytes; logs need its size only
        fields = ", ".join(
            f"{name}={f'<grammar, {len(value)} chars>' if name == 'grammar' and value else repr(value)}"
            for name, value in self.__dict__.items()
        )
        return f"SamplingParams({fields})"

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < (0 if self.prompt_logprobs is not None else 1):
            problems.append(f"max_tokens={self.max_tokens!r} must be at least 1 (0 only to score a "
                            "prompt, with prompt_logprobs)")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature!r} must be >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p!r} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k!r} must be >= 0 (0 turns it off)")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            problems.append(
                f"min_tokens={self.min_tokens!r} must be between 0 and max_tokens={self.max_tokens}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                problems.append(f"{name}={value!r} must be between 0 and {MAX_LOGPROBS}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                problems.append(f"{name}={getattr(self, name)!r} must be between -2 and 2")
        if not 0.01 <= self.repetition_penalty <= 10:  # below, a logit divided by it overflows
            problems.append(f"repetition_penalty={self.repetition_penalty!r} must be between 0.01 and 10 (1 is off)")
        bad = [(t, b) for t, b in self.logit_bias if t < 0 or not -100 <= b <= 100]
        if bad:
            problems.append(f"logit_bias {bad[:3]!r}: token ids must be >= 0 and biases between -100 and 100")
        if problems:
            raise ConfigError(problems, source="sampling")


@dataclass(frozen=True)
class AdapterMix:
    """A request-time linear combination of adapters: sum of weight * (B @ A) per row."""

    refs: tuple[str | Version, ...]  # refs, or versions resolved from them
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.refs or len(self.refs) != len(self.weights):
            raise ConfigError(
                f"mix refs={self.refs!r} and weights={self.weights!r} must be non-empty and the "
                "same length"
            )


@dataclass(frozen=True)
class GenerationRequest:
    """One request: prompt token ids, which adapter (None = base), how to sample.

    ``adapter`` is a ref (``pirate``, ``pirate@3``, ``pirate:prod``) or a version already resolved
    from one (:meth:`Engine.resolve`: a server resolves once per HTTP request, off its event
    loop, and every row of it carries the result); ``mix`` instead combines several adapters with
    weights. At most one of them is set.
    """

    prompt_ids: tuple[int, ...]
    adapter: str | Version | None = None
    mix: AdapterMix | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""

    def __post_init__(self) -> None:
        if self.adapter is not None and self.mix is not None:
            raise ConfigError("a request names either one adapter or a mix, not both")
        if not self.prompt_ids:
            raise ConfigError("prompt is empty; give at least one token")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the most likely tokens at its step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), most likely first


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed step of a request: newly decoded text and token ids.

    The last chunk of a request has ``finish_reason`` and ``usage`` set.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    adapter_version: str | None = None  # the resolved ref, e.g. "pirate@3"
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token id, when the request asked for them
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()  # on the first chunk: per prompt token, None first


@dataclass(frozen=True)
class GenerationResult:
    """A whole finished request (the non-streaming form)."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    adapter_version: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()


@dataclass(frozen=True)
class ResidentAdapter:
    """An adapter in one of the engine's slots (for admin listings and metrics)."""

    ref: str  # the resolved version, e.g. "pirate@3"
    slot: int
    pinned: bool
    active_rows: int  # running rows that use it now
    rank: int
    num_bytes: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine for ``/metrics`` and the TUI.

    Counters are totals since the engine started; the latency tuples hold the most recent
    samples (``EngineConfig.latency_samples`` of them), with ``*_count``/``*_sum`` totals so a
    Prometheus summary can be exported without losing observations.
    """

    steps: int
    queue_depth: int
    running_rows: int
    max_rows: int
    max_slots: int
    resident: tuple[ResidentAdapter, ...]
    cached_adapters: int
    loads_in_flight: int
    cache_hits: int
    cache_misses: int
    prefix_cache_blocks: int  # blocks of prompt prefixes kept (adapterhub.engine.prefix_cache)
    prefix_cache_bytes: int
    prefix_cache_queried_tokens: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hit_tokens: int  # of them, reused instead of prefilled
    requests_finished: int
    prompt_tokens: int
    completion_tokens: int
    ttft_seconds: tuple[float, ...]
    ttft_count: int
    ttft_sum: float
    token_latency_seconds: tuple[float, ...]
    token_latency_count: int
    token_latency_sum: float
