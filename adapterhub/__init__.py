"""adapterhub: one frozen, quantized base model; many small LoRA adapters trained, versioned,
shared and served over it.

``import adapterhub`` gives the :class:`Hub` facade. Importing it never imports fastapi or textual.

The layers, lowest first (each imports only those below it; ``tests/test_layers.py`` enforces it)::

    adapterhub.errors                     the error tree
    adapterhub.core                       refs, progress, hardware
    adapterhub.models                     the base model, LoRA adapter files
    adapterhub.registry                   versions, aliases, blobs, gates (storage)
    adapterhub.engine                     batched multi-adapter inference
    adapterhub.training | .evaluation | .hfhub    train, evaluate, share on the Hugging Face Hub
    adapterhub.facade | .protocol         the Hub front door; wire schemas for server and TUI
    adapterhub.cli                        the command line
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterhub.facade import Hub

__version__ = "0.1.0"
__all__ = ["Hub", "__version__"]


def __getattr__(name: str) -> object:
    # The facade loads on first use, so ``import adapterhub.errors`` (a client, the server's error
    # table) does not load every layer.
    if name == "Hub":
        from adapterhub.facade import Hub

        return Hub
    raise AttributeError(f"module 'adapterhub' has no attribute {name!r}")
