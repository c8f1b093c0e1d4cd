"""The inference engine: one frozen base, adapter slots, mixed-adapter continuous batching.

Public API: :class:`Engine` (sync, async streaming and admin calls), :class:`EngineConfig`,
the request/result types of :mod:`.types`, and :class:`RequestStream`.

The engine classes are imported lazily, so ``from adapterhub.engine.types import ...`` (what
the server's wire schemas and the TUI's HTTP backend need) does not import torch.
"""

from typing import TYPE_CHECKING, Any

from adapterhub.engine.types import (
    AdapterMix,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ResidentAdapter,
    SamplingParams,
    Usage,
)

if TYPE_CHECKING:
    from adapterhub.engine.config import EngineConfig
    from adapterhub.engine.engine import Engine, RequestStream

_LAZY = {
    "Engine": "adapterhub.engine.engine",
    "RequestStream": "adapterhub.engine.engine",
    "EngineConfig": "adapterhub.engine.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapterhub.engine' has no attribute {name!r}")

__all__ = [
    "AdapterMix",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerationChunk",
    "GenerationRequest",
    "GenerationResult",
    "RequestStream",
    "ResidentAdapter",
    "SamplingParams",
    "Usage",
]
