"""LoRA adapter files: read them safely and check that they fit a base.

An adapter on disk is the PEFT layout: ``adapter_config.json`` plus ``adapter_model.safetensors``.
Safetensors only: pickled weights (``.bin``, ``.pt``) are refused everywhere, because loading a
pickle runs code. Weights are checked for shapes, dtypes and non-finite values before anything
uses them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.errors import IncompatibleAdapterError, UnsafeAdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_RANK = 256
MAX_WEIGHTS_BYTES = 512 * 1024 * 1024


NOT_PLAIN_LORA = {
    "use_dora": "DoRA rescales each output column by a learned magnitude",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "whole modules trained beside the LoRA (e.g. an LM head)",
    "trainable_token_indices": "trained rows of the embedding",
    "target_parameters": "LoRA on raw parameters",
}
"""PEFT config keys of variants whose update is not B @ A x (key -> what it adds), which the
engine cannot batch and a mix cannot add up."""


@dataclass(frozen=True)
class LoraLimits:
    """What an adapter may be at most; over it is refused with the limit in the message."""

    max_rank: int = MAX_RANK
    max_weights_bytes: int = MAX_WEIGHTS_BYTES


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter in memory.

    ``tensors`` are keyed as PEFT saves them, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ([r, in]) and
    ``...lora_B.weight`` ([out, r]). ``extra_tensors`` holds anything else saved beside them
    (a reward model's score head, for instance).
    """

    config: Mapping[str, Any]
    tensors: Mapping[str, Any] = field(repr=False)
    extra_tensors: Mapping[str, Any] = field(default_factory=dict, repr=False)
    ref: str = ""

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.r))

    @property
    def scaling(self) -> float:
        """The factor on B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        if self.config.get("use_rslora"):
            return self.alpha / math.sqrt(self.r)
        return self.alpha / self.r

    def scaling_for(self, module: str) -> float:
        """The factor on B @ A of one module path, after ``rank_pattern`` and ``alpha_pattern``.

        PEFT's rule: the first pattern key that matches the path's tail (``(.*\.)?key$``)
        gives that module's r or alpha; otherwise the config's ``r`` and ``lora_alpha``.
        """
        r = float(_pattern_value(self.config.get("rank_pattern") or {}, module, self.r))
        alpha = float(_pattern_value(self.config.get("alpha_pattern") or {}, module, self.alpha))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(sorted({name.rsplit(".", 1)[-1] for name in self.pairs()}))

    def pairs(self) -> dict[str, tuple[Any, Any]]:
        """Per module path in the base model (``model.layers.0.self_attn.q_proj``): (A, B)."""
        pairs: dict[str, tuple[Any, Any]] = {}
        for key, tensor in self.tensors.items():
            if ".lora_A." not in key:
                continue
            module = _module_path(key.split(".lora_A.")[0])
            pairs[module] = (tensor, self.tensors[key.replace(".lora_A.", ".lora_B.")])
        return pairs

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _module_path(peft_prefix: str) -> str:
    # PEFT prefixes keys with "base_model.model." (the PeftModel's wrapper around the base).
    return peft_prefix.removeprefix("base_model.model.")


def refuse_pickles(filenames: list[str], *, where: str) -> None:
    """Raise if any file is a pickle format; say how to convert it.

    Raises:
        UnsafeAdapterError: names the offending files.
    """
    pickles = [n for n in filenames if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UnsafeAdapterError(
            f"{where} has pickled weights {pickles!r}; pickles can run code when loaded, so only "
            f"{WEIGHTS_FILE} is accepted. Convert with PEFT: "
            "`PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`"
        )


def load_lora_bytes(
    config_bytes: bytes,
    weights_bytes: bytes,
    *,
    ref: str = "",
    limits: LoraLimits = LoraLimits(),
) -> LoraAdapter:
    """Parse and validate an adapter from the bytes of its two files.

    Raises:
        UnsafeAdapterError: malformed config or weights, non-finite values, over the limits.
    """
    from safetensors.torch import load as load_safetensors

    where = ref or "adapter"
    try:
        config = json.loads(config_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsafeAdapterError(f"{where}: {CONFIG_FILE} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise UnsafeAdapterError(
            f"{where}: {CONFIG_FILE} must be a JSON object, got {config!r:.80}"
        )
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise UnsafeAdapterError(f"{where}: peft_type {peft_type!r} is not supported; only LORA is")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise UnsafeAdapterError(
            f"{where}: {CONFIG_FILE} has r={rank!r}; it must be a whole number >= 1"
        )
    patterns = config.get("rank_pattern") or {}
    if not isinstance(patterns, dict) or not all(isinstance(v, int) and v >= 1 for v in patterns.values()):
        raise UnsafeAdapterError(
            f"{where}: {CONFIG_FILE} has rank_pattern={patterns!r}; it must map module names to whole ranks >= 1"
        )
    if max([rank, *patterns.values()]) > limits.max_rank:
        raise UnsafeAdapterError(
            f"{where}: rank r={max([rank, *patterns.values()])} is over the limit of {limits.max_rank}"
        )
    if len(weights_bytes) > limits.max_weights_bytes:
        raise UnsafeAdapterError(
            f"{where}: {WEIGHTS_FILE} is {len(weights_bytes)} bytes, over the limit of "
            f"{limits.max_weights_bytes}"
        )
    try:
        tensors = load_safetensors(weights_bytes)
    except Exception as e:  # safetensors raises its own error type for bad headers
        raise UnsafeAdapterError(
            f"{where}: {WEIGHTS_FILE} is not a valid safetensors file ({e}); re-save it with PEFT"
        ) from e

    lora: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise UnsafeAdapterError(
                f"{where}: tensor {key!r} has dtype {tensor.dtype}; expected floats"
            )
        (lora if (".lora_A." in key or ".lora_B." in key) else extra)[key] = tensor
    bad = _first_non_finite(weights_bytes, tensors)
    if bad is not None:
        raise UnsafeAdapterError(
            f"{where}: tensor {bad!r} holds NaN or Inf values; retrain or re-export it"
        )
    if not lora:
        raise UnsafeAdapterError(f"{where}: {WEIGHTS_FILE} holds no lora_A/lora_B tensors")
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        b = lora.get(b_key)
        if b is None:
            raise UnsafeAdapterError(f"{where}: {key!r} has no matching {b_key!r}")
        r = _pattern_value(patterns, _module_path(key.split(".lora_A.")[0]), rank)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise UnsafeAdapterError(
                f"{where}: {key!r} has shapes A={tuple(a.shape)} B={tuple(b.shape)}; "
                f"expected A=[r, in] and B=[out, r] with r={r}"
            )
    return LoraAdapter(config=config, tensors=lora, extra_tensors=extra, ref=ref)


def _first_non_finite(weights_bytes: bytes, tensors: Mapping[str, Any]) -> str | None:
    """The first tensor holding a NaN or an infinity, or None: one pass over the file's data
    where it can.

    Once safetensors has parsed the file, its data section (after the 8-byte header length and
    the header) is exactly the tensors, end to end; when they share one dtype it is one array
    of that dtype. Its sum is finite only if every value is (a NaN or an infinity makes it NaN
    or infinite), and a sum is several times faster than ``isfinite`` over the values; only a
    sum that overflowed, of finite values, needs the values checked one by one. A check per
    tensor, on an adapter's hundreds of small tensors, was a visible share of a cold load.
    """
    import torch

    dtypes = {tensor.dtype for tensor in tensors.values()}
    if len(dtypes) == 1:
        start = 8 + int.from_bytes(weights_bytes[:8], "little")
        if start == len(weights_bytes):
            return None
        with warnings.catch_warnings():  # read only: torch warns that the buffer is not writable
            warnings.simplefilter("ignore", UserWarning)
            data = torch.frombuffer(weights_bytes, dtype=dtypes.pop(), offset=start)
        if bool(torch.isfinite(data.sum())):
            return None
    return next((key for key, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())), None)


def load_lora_folder(path: Path | str, *, limits: LoraLimits = LoraLimits()) -> LoraAdapter:
    """Read a PEFT adapter folder (safetensors only).

    Raises:
        UnsafeAdapterError: pickled weights, missing files, malformed contents.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UnsafeAdapterError(
            f"adapter folder {str(folder)!r} does not exist or is not a folder"
        )
    refuse_pickles([p.name for p in folder.iterdir()], where=str(folder))
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise UnsafeAdapterError(
            f"adapter folder {str(folder)!r} lacks {missing!r}; a PEFT LoRA folder has "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    return load_lora_bytes(
        (folder / CONFIG_FILE).read_bytes(),
        (folder / WEIGHTS_FILE).read_bytes(),
        ref=str(folder),
        limits=limits,
    )


def check_fits(adapter: LoraAdapter, model: Any) -> None:
    """Check every adapted module exists in ``model`` with matching in/out features.

    Raises:
        IncompatibleAdapterError: lists every module that is missing or mis-shaped.
    """
    modules = dict(model.named_modules())
    problems = []
    for path, (a, b) in adapter.pairs().items():
        module = modules.get(path)
        if module is None:
            problems.append(f"module {path!r} does not exist in the base")
            continue
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if (in_f, out_f) != (a.shape[1], b.shape[0]):
            problems.append(
                f"module {path!r} is {in_f}->{out_f} in the base but the adapter is "
                f"{a.shape[1]}->{b.shape[0]}"
            )
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise IncompatibleAdapterError(
            f"adapter {adapter.ref or ''!s} does not fit this base: {shown}. "
            "Was it trained on another base model?"
        )
