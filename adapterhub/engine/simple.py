"""One request at a time through HF ``generate`` + PEFT: the reference path.

This is the slow, obviously-correct path the batching engine is checked against, and what
``Hub.generate`` uses. It never changes the base it is given, which the engine and other threads
may be using: PEFT injects its layers into a *structural copy* of the base model, whose modules
are new but whose parameters and buffers are the base's own tensors (a few module objects, no
weights, copied). Adapters are loaded into that copy once each, by ref, and switched with PEFT's
``set_adapter``; one lock makes switch-then-generate a single step, so concurrent callers never
run with each other's adapter.
"""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from adapterhub.models.base import cpu_packing_kept
from adapterhub.registry import ensure_compatible

if TYPE_CHECKING:
    from adapterhub.engine.types import SamplingParams
    from adapterhub.models.base import LoadedBase
    from adapterhub.registry import Registry


class ReferencePath:
    """PEFT adapters over a shared, frozen base, one request at a time.

    Args:
        base: the loaded base; read, never modified.
        registry: where adapter refs resolve and their files come from.
    """

    def __init__(self, base: LoadedBase, registry: Registry) -> None:
        self.base = base
        self.registry = registry
        self._peft: Any = None  # peft.PeftModel over the structural copy, made on first adapter
        self._lock = threading.Lock()

    @contextmanager
    def activated(self, ref: str | None) -> Iterator[Any]:
        """The model with version ``ref``'s adapter active (None: the bare base), for this caller
        alone until the block ends.

        Raises:
            AdapterNotFoundError: ``ref`` does not resolve.
            IncompatibleAdapterError: the version was trained on another base or template.
        """
        with self._lock:
            if ref is None:
                yield self.base.model
                return
            version = self.registry.resolve(ref)
            ensure_compatible(version, self.base.info.fingerprint, self.base.info.template_hash)
            name = version.ref.replace("@", "_v").replace(".", "_")
            if self._peft is None or name not in self._peft.peft_config:
                self._load(version, name)
            self._peft.set_adapter(name)
            yield self._peft

    def _load(self, version: Any, name: str) -> None:
        from peft import PeftModel

        # PEFT reads the base's state dict while it loads, which would unpack (and move) NF4
        # weights bitsandbytes packed for the CPU; they are put back as they were
        with tempfile.TemporaryDirectory() as tmp, cpu_packing_kept(self.base.model):
            self.registry.export(version, tmp)  # checksums verified here
            if self._peft is None:
                model = PeftModel.from_pretrained(_sharing_copy(self.base.model), tmp, adapter_name=name)
                self._peft = model.requires_grad_(False)
            else:
                self._peft.load_adapter(tmp, adapter_name=name)

    def generate(self, ref: str | None, prompt_ids: list[int], sampling: SamplingParams) -> str:
        """One completion of ``prompt_ids`` with adapter ``ref`` (None: the base)."""
        import torch

        tokenizer = self.base.tokenizer
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "min_new_tokens": sampling.min_tokens or None,
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        }
        if sampling.ignore_eos:
            kwargs["eos_token_id"] = None
        if sampling.temperature > 0:
            kwargs.update(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or None,
            )
        else:
            kwargs["do_sample"] = False
        input_ids = torch.tensor([prompt_ids], device=self.base.device)
        with self.activated(ref) as model, torch.inference_mode():
            if sampling.temperature > 0 and sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        text = tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)
        for stop in sampling.stop:
            text = text.split(stop, 1)[0]
        return text.strip()


def _sharing_copy(model: Any) -> Any:
    """A copy of ``model``'s module tree that holds the very tensors of ``model``: PEFT can
    replace its submodules without touching ``model`` or copying a weight."""
    import torch

    shared: dict[int, Any] = {}
    for module in model.modules():
        for value in (*module._parameters.values(), *module._buffers.values(), *vars(module).values()):
            if isinstance(value, torch.Tensor):
                shared[id(value)] = value
    return copy.deepcopy(model, memo=shared)
