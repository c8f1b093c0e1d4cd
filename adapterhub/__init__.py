"""adapterhub: one frozen, quantized base model; many small LoRA adapters trained, versioned,
shared and served over it.

``import adapterhub`` gives the :class:`Hub` facade. Importing it never imports fastapi or textual.
"""

from adapterhub.facade import Hub

__version__ = "0.1.0"
__all__ = ["Hub", "__version__"]
