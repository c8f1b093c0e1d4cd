"""A vLLM LoRA resolver plugin: plain ``vllm serve --enable-lora`` serves adapterhub refs itself.

vLLM documents resolver plugins (``vllm/lora/resolver.py``, ``docs/design/lora_resolver_plugins.md``):
a function registered under the ``vllm.general_plugins`` entry point group registers a
``LoRAResolver`` with ``LoRAResolverRegistry``; when a request names a model vLLM has not loaded,
it asks each resolver ``resolve_lora(base_model_name, lora_name)`` for a ``LoRARequest`` (a name,
a unique integer id, a folder). adapterhub declares :func:`register` under that group, so with
adapterhub installed beside vLLM::

    export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    export ADAPTERHUB_HOME=/shared/adapterhub       # the registry to serve (required)
    export VLLM_PLUGINS=adapterhub                  # optional: vLLM loads every plugin when unset
    vllm serve BASE --enable-lora --max-lora-rank 64

and a request with ``model="pirate@3"``, ``"pirate:prod"`` or ``"pirate"`` is resolved from the
registry, exported (checked hashes, :func:`adapterhub.registry.export.export_version`) into
``ADAPTERHUB_VLLM_CACHE`` (default ``<home>/replica-cache``) on the vLLM machine, and loaded.

Design choices:

* **Importable without vLLM.** vLLM is imported inside :func:`register` only; the lookup itself
  (:func:`resolve_ref`) is plain library code, tested without vLLM.
* **No side effects by accident.** vLLM loads every installed general plugin when
  ``VLLM_PLUGINS`` is unset; without ``ADAPTERHUB_HOME`` set, :func:`register` registers nothing
  (it would otherwise create a registry in the home folder of whoever runs vLLM).
* **Ids from digests.** ``lora_int_id`` comes from the version's content digest, so two versions
  never share an id. vLLM 0.32 replaces it with its own counter when it loads what a resolver
  found (``OpenAIServingModels.resolve_lora``); the digest id stands for callers that keep it.
* **What vLLM keys by.** vLLM keeps a resolved adapter under the name the request used, for the
  rest of its life. ``name@N`` is immutable, so that is safe; ``name:alias`` and ``name`` resolve
  once per vLLM process: after moving the alias, unload the name (``/v1/unload_lora_adapter``)
  or route through ``adapterhub serve --engine vllm``, which sends digest names that never go
  stale.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.core.refs import AdapterRef
from adapterhub.errors import AdapterNotFoundError, ConfigError
from adapterhub.registry.export import export_version, version_digest
from adapterhub.registry.store import Registry

log = logging.getLogger("adapterhub.vllm_resolver")
HOME_ENV = "ADAPTERHUB_HOME"
CACHE_ENV = "ADAPTERHUB_VLLM_CACHE"
RESOLVER_NAME = "adapterhub"


@dataclass(frozen=True)
class ResolvedLora:
    """What vLLM needs to load a version: its folder and a unique integer id."""

    ref: str  # the version, name@N
    path: Path
    lora_int_id: int


def resolve_ref(registry: Registry, text: str, cache: Path | str) -> ResolvedLora | None:
    """``name``, ``name@N`` or ``name:alias`` as an exported folder; None when ``text`` is not a
    ref or names nothing registered (vLLM then asks its next resolver)."""
    try:
        version = registry.resolve(AdapterRef.parse(text))
    except (ConfigError, AdapterNotFoundError):
        return None
    exported = export_version(registry, version, cache)
    return ResolvedLora(version.ref, exported.path, int(version_digest(version)[:15], 16) + 1)


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the adapterhub resolver with vLLM.

    Raises:
        ImportError: vLLM is not installed (it calls this only when it is).
    """
    home = os.environ.get(HOME_ENV)
    if not home:
        log.info("adapterhub resolver not registered: set %s to the hub home to serve", HOME_ENV)
        return
    import asyncio

    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    registry = Registry(home)
    cache = Path(os.environ.get(CACHE_ENV) or Path(home) / "replica-cache")

    class AdapterHubResolver(LoRAResolver):  # type: ignore[misc]  (vLLM's class is untyped here)
        """Resolves adapterhub refs from the registry at ``ADAPTERHUB_HOME``."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> Any:
            found = await asyncio.to_thread(resolve_ref, registry, lora_name, cache)
            if found is None:
                return None
            log.info("resolved %r to %s at %s", lora_name, found.ref, found.path)
            return LoRARequest(lora_name=lora_name, lora_int_id=found.lora_int_id, lora_path=str(found.path))

    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, AdapterHubResolver())
