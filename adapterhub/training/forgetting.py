"""The forgetting check: how much general capability an adapter cost.

Each trained version records its perplexity on a small fixed general-text set (20 short
paragraphs written for this project on everyday topics: ``data/general_text.txt``) next to the
base's perplexity on the same text. A ratio near 1.0 means the adapter left general language
alone; a large ratio means it overwrote it. Both are measured in the same process, on the same
quantized base, with the adapter switched on and off, so the two numbers are directly comparable.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

GENERAL_TEXT = "data/general_text.txt"
BASE_ADAPTER = "forgetting-base"


def general_texts() -> list[str]:
    """The fixed general-text set, one paragraph per entry."""
    text = resources.files("adapterhub.training").joinpath(GENERAL_TEXT).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def perplexity(model: Any, tokenizer: Any, texts: list[str], *, max_length: int = 256) -> float:
    """Token-level perplexity of ``model`` on ``texts`` (plain text, no chat template)."""
    import torch

    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
                if ids.shape[1] < 2:
                    continue
                logits = model(input_ids=ids).logits.float()  # [1, seq, vocab]
                nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
                total_nll += float(nll)
                total_tokens += ids.shape[1] - 1
    finally:
        model.train(was_training)
    return math.exp(total_nll / max(1, total_tokens))


def forgetting_metrics(peft_model: Any, tokenizer: Any, *, base_adapter: Path | None = None) -> dict[str, float]:
    """General-text perplexity with the adapter and without it (the base), and their ratio.

    Args:
        base_adapter: for an adapter trained over a rewritten base (PiSSA, OLoRA: W - B0 A0), its
            saved start (B0, A0): the base is measured with it in place of the adapter, which
            gives W back, since switching the adapter off would measure W - B0 A0.
    """
    texts = general_texts()
    adapter_ppl = perplexity(peft_model, tokenizer, texts)
    if base_adapter is None:
        with peft_model.disable_adapter():
            base_ppl = perplexity(peft_model, tokenizer, texts)
    else:
        active = peft_model.active_adapter
        peft_model.load_adapter(str(base_adapter), adapter_name=BASE_ADAPTER)
        try:
            peft_model.set_adapter(BASE_ADAPTER)
            base_ppl = perplexity(peft_model, tokenizer, texts)
        finally:
            peft_model.set_adapter(active)
            peft_model.delete_adapter(BASE_ADAPTER)
    return {
        "general_ppl_base": round(base_ppl, 4),
        "general_ppl_adapter": round(adapter_ppl, 4),
        "general_ppl_ratio": round(adapter_ppl / base_ppl, 4),
    }
