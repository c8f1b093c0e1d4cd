"""One request at a time through HF ``generate`` + PEFT: the reference path.

This is the slow, obviously-correct path the batching engine is checked against, and what
``Hub.generate`` uses until a request needs batching. Adapters are injected into the shared base
once (by ref) and switched with PEFT's ``set_adapter``; the base itself is never modified.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

from adapterhub.registry import ensure_compatible

if TYPE_CHECKING:
    from adapterhub.engine.types import SamplingParams
    from adapterhub.facade import Hub


def peft_model_for(hub: Hub, ref: str) -> tuple[Any, str]:
    """The base wrapped by PEFT with version ``ref`` loaded and active; returns (model, version ref)."""
    from peft import PeftModel

    base = hub.base
    version = hub.registry.resolve(ref)
    ensure_compatible(version, base.info.fingerprint, base.info.template_hash)
    adapter_name = version.ref.replace("@", "_v").replace(".", "_")
    model = base.model
    loaded = getattr(model, "peft_config", {})
    if adapter_name not in loaded:
        with tempfile.TemporaryDirectory() as tmp:
            hub.registry.export(version, tmp)  # checksums verified here
            if isinstance(model, PeftModel):
                model.load_adapter(tmp, adapter_name=adapter_name)
            else:
                model = PeftModel.from_pretrained(model, tmp, adapter_name=adapter_name)
                model.requires_grad_(False)
                base.model = model
    model.set_adapter(adapter_name)
    return model, version.ref


def generate_with_peft(
    hub: Hub, ref: str | None, prompt_ids: list[int], sampling: SamplingParams
) -> str:
    """Generate one completion for ``prompt_ids`` with adapter ``ref`` (None = base)."""
    import torch

    base = hub.base
    model = base.model
    if ref is not None:
        model, _ = peft_model_for(hub, ref)
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_tokens,
        "min_new_tokens": sampling.min_tokens or None,
        "pad_token_id": base.tokenizer.pad_token_id or base.tokenizer.eos_token_id,
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
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
    else:
        kwargs["do_sample"] = False
    input_ids = torch.tensor([prompt_ids], device=base.device)
    with torch.inference_mode():
        if ref is None and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        else:
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    text = base.tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)
    for stop in sampling.stop:
        text = text.split(stop, 1)[0]
    return text.strip()
