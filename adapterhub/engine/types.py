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

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens!r} must be at least 1")
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


@dataclass(frozen=True)
class GenerationResult:
    """A whole finished request (the non-streaming form)."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    adapter_version: str | None = None


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
    requests_finished: int
    prompt_tokens: int
    completion_tokens: int
    ttft_seconds: tuple[float, ...]
    ttft_count: int
    ttft_sum: float
    token_latency_seconds: tuple[float, ...]
    token_latency_count: int
    token_latency_sum: float
