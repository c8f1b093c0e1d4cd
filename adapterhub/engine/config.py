"""The engine's settings: how many rows, slots and cached adapters; how long anyone may wait.

Read from the server's settings file or environment, so a pydantic model with limits and a
docstring per field. Defaults suit the default base (SmolLM2-135M) on a small CPU; the shape of
the knobs follows vLLM's ``LoRAConfig`` (``max_loras``, ``max_lora_rank``, ``max_cpu_loras``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """Capacity and scheduling settings of one :class:`~adapterhub.engine.Engine`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int = Field(default=32, ge=1, le=1024)
    """Rows (requests) decoded together in one step; more requests wait in the queue."""

    max_queue: int = Field(default=256, ge=0, le=100_000)
    """Requests that may wait for a row; one more is refused with ``CapacityError``."""

    max_slots: int = Field(default=8, ge=1, le=256)
    """Adapters resident in the stacked slot buffers at once (vLLM's ``max_loras``). Every step
    pays for the slots up to the highest one in use, so keep this near the number of adapters
    that are busy at the same time."""

    max_lora_rank: int = Field(default=16, ge=1, le=256)
    """Largest adapter rank a slot holds; a bigger adapter is refused with
    ``IncompatibleAdapterError``. Slots are padded to this rank, so it sets the per-step cost."""

    lora_dtype: Literal["float32", "base"] = "float32"
    """Dtype of the LoRA product. ``float32`` matches PEFT (which keeps adapter weights in
    float32 over a bf16 or 4-bit base); ``base`` uses the base's compute dtype (bf16: faster,
    slightly different rounding)."""

    max_cpu_adapters: int = Field(default=64, ge=0, le=100_000)
    """Adapters kept loaded in memory behind the slots (an LRU cache), so a slot is refilled by
    a copy instead of a registry read."""

    loader_threads: int = Field(default=2, ge=1, le=64)
    """Threads that read, verify and lay out adapters from the registry while rows decode. A
    burst of requests for cold adapters waits on them, so more than one keeps the last
    request of the burst from starting a whole chain of loads late."""

    max_seq_len: int | None = Field(default=None, ge=8, le=1_000_000)
    """Longest prompt plus completion; ``None`` takes the base's ``max_position_embeddings``."""

    max_prefill_tokens: int = Field(default=512, ge=1, le=1_000_000)
    """Prompt tokens prefilled in one step. Decoding rows wait while a prefill runs, so this
    bounds the stall a burst of long prompts causes; a longer prompt is prefilled this many
    tokens a step (chunked prefill), between the decoding rows' steps. 512 keeps a step near a
    few decode steps' time on a small CPU; a GPU prefills 2048 or more in that time."""

    chunked_prefill: bool = True
    """Prefill a prompt longer than ``max_prefill_tokens`` in chunks across steps (off: it is
    admitted alone and prefilled at once, every decoding row waiting for it). Bases with LongRoPE
    and prompts scored for log-probabilities are never chunked."""

    max_wait_steps: int = Field(default=64, ge=1, le=1_000_000)
    """After waiting this many steps, the oldest request stops everything younger from jumping
    ahead of it; it is then served once rows already running for the busy slots finish."""

    prefix_cache_mib: int = Field(default=256, ge=0, le=1_000_000)
    """Memory for the keys and values of prompt prefixes kept for reuse (a shared system prompt
    is prefilled once; :mod:`adapterhub.engine.prefix_cache`), least recently used dropped first;
    0 turns prefix caching off."""

    num_threads: int | None = Field(default=None, ge=1, le=1024)
    """torch intra-op threads of the engine's decode thread; ``None`` takes the constructing
    thread's setting (``torch.get_num_threads()``)."""

    latency_samples: int = Field(default=2048, ge=16, le=1_000_000)
    """How many recent TTFT and per-token latency samples the stats keep."""
