"""A weighted mix of LoRA adapters as one ordinary LoRA adapter, exactly.

Engines that cannot mix adapters per request (vLLM, SGLang) can still serve a mix when it is
turned into a derived adapter whose delta is the weighted sum of the parts' deltas:

    delta_mix = sum_i w_i * s_i * B_i @ A_i
              = s * [w_1 s_1 B_1 | ... | w_n s_n B_n] @ [A_1; ...; A_n]    with s = 1

So the derived adapter's A is the parts' A stacked ([sum r_i, in]), its B the parts' B side by
side, each scaled by its weight and its own LoRA scaling ([out, sum r_i]), and its config says
``r = lora_alpha = sum r_i`` (scaling 1, no rsLoRA, no patterns). Nothing is approximated: there
is no SVD and no truncation, so the rank is the sum of the ranks, and a replica whose
``max_lora_rank`` is smaller refuses it (:class:`IncompatibleAdapterError` here, before any
replica sees it).

Design choices:

* **One rank everywhere.** A module that a part does not adapt, or adapts at a smaller rank
  (``rank_pattern``), gets zero rows and columns for that part, so every module of the mix has
  the same rank (engines size slots by one rank) and the zeros add nothing to the delta.
* **Only plain LoRA mixes.** DoRA magnitudes, LoRA biases, ``fan_in_fan_out`` and saved extra
  tensors (score heads, ``modules_to_save``) do not add linearly, so a part with any of them is
  refused, naming the field.
* **Float32 sums.** Products are formed in float32 and stored in the widest dtype of the parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError, IncompatibleAdapterError
from adapterhub.models.adapters import CONFIG_FILE, NOT_PLAIN_LORA, WEIGHTS_FILE, LoraAdapter

_NOT_LINEAR = (*NOT_PLAIN_LORA, "fan_in_fan_out")  # fan_in_fan_out: stored transposed


def mix_rank(adapters: Sequence[LoraAdapter]) -> int:
    """The rank of the derived adapter: the sum of each part's largest rank."""
    return sum(_part_rank(adapter) for adapter in adapters)


def refuse_over_rank(where: str, rank: int, max_rank: int | None, why: str = "the sum of its adapters' ranks") -> None:
    """Raise when a mix's rank is over the replicas' ``max_lora_rank`` (None: no limit).

    Raises:
        IncompatibleAdapterError: names the rank, the limit and the flags that raise it.
    """
    if max_rank is not None and rank > max_rank:
        raise IncompatibleAdapterError(
            f"{where} has rank {rank} ({why}), over the replica's max_lora_rank={max_rank}; mix fewer "
            f"or lower-rank adapters, or start the replicas with --max-lora-rank {rank} or more (and "
            "raise ADAPTERHUB_REPLICA_MAX_LORA_RANK)"
        )


def _part_rank(adapter: LoraAdapter) -> int:
    patterns = adapter.config.get("rank_pattern") or {}
    return max([adapter.r, *(int(v) for v in patterns.values())])


def mix_loras(
    adapters: Sequence[LoraAdapter], weights: Sequence[float], *, max_rank: int | None = None,
    label: str = "",
) -> LoraAdapter:
    """The adapter whose delta on every module is ``sum(w * delta)`` of ``adapters``.

    Args:
        adapters: the parts, each a plain LoRA on the same base.
        weights: one factor per part (any sign).
        max_rank: refuse a mix whose rank (the sum of the parts' ranks) is over this.
        label: how the mix is named in messages and in the result's ``ref``.

    Raises:
        ConfigError: no parts, or weights and parts of different lengths.
        IncompatibleAdapterError: a part that does not add linearly, parts whose module shapes
            disagree, or a rank over ``max_rank``.
    """
    import torch

    if not adapters or len(adapters) != len(weights):
        raise ConfigError(
            f"a mix needs one weight per adapter; got {len(adapters)} adapters and {len(weights)} weights"
        )
    where = label or "the mix"
    for adapter in adapters:
        bad = [key for key in _NOT_LINEAR if adapter.config.get(key)]
        if adapter.extra_tensors:
            bad.append(f"saved tensors {sorted(adapter.extra_tensors)[:2]!r}")
        if bad:
            raise IncompatibleAdapterError(
                f"{where}: {adapter.ref or 'a part'} has {', '.join(bad)}, which do not add up "
                "linearly, so it cannot be mixed into one LoRA; mix plain LoRA adapters only"
            )
    ranks = [_part_rank(adapter) for adapter in adapters]
    rank = sum(ranks)
    refuse_over_rank(where, rank, max_rank, f"the sum of its adapters' ranks {ranks}")
    keys: dict[str, str] = {}  # module path -> the PEFT key prefix of its tensors
    shapes: dict[str, tuple[int, int]] = {}  # module path -> (in, out)
    for adapter in adapters:
        for key in adapter.tensors:
            if ".lora_A." not in key:
                continue
            prefix = key.split(".lora_A.")[0]
            module = prefix.removeprefix("base_model.model.")
            a = adapter.tensors[key]
            b = adapter.tensors[key.replace(".lora_A.", ".lora_B.")]
            shape = (int(a.shape[1]), int(b.shape[0]))
            if shapes.setdefault(module, shape) != shape:
                raise IncompatibleAdapterError(
                    f"{where}: module {module!r} is {shapes[module]} (in, out) in one part and "
                    f"{shape} in {adapter.ref or 'another'}; mix adapters of the same base"
                )
            keys.setdefault(module, prefix)
    dtype = torch.float32
    for adapter in adapters:
        for tensor in adapter.tensors.values():
            dtype = torch.promote_types(dtype, tensor.dtype)
    tensors: dict[str, Any] = {}
    for module, prefix in sorted(keys.items()):
        fan_in, fan_out = shapes[module]
        a_parts, b_parts = [], []
        for adapter, weight, part_rank in zip(adapters, weights, ranks, strict=True):
            a_full = torch.zeros(part_rank, fan_in, dtype=torch.float32)  # [r_i, in]
            b_full = torch.zeros(fan_out, part_rank, dtype=torch.float32)  # [out, r_i]
            pair = adapter.pairs().get(module)
            if pair is not None:
                a, b = pair
                r = int(a.shape[0])
                a_full[:r] = a.float()
                b_full[:, :r] = b.float() * (float(weight) * adapter.scaling_for(module))
            a_parts.append(a_full)
            b_parts.append(b_full)
        tensors[f"{prefix}.lora_A.weight"] = torch.cat(a_parts, dim=0).to(dtype).contiguous()  # [R, in]
        tensors[f"{prefix}.lora_B.weight"] = torch.cat(b_parts, dim=1).to(dtype).contiguous()  # [out, R]
    first = adapters[0].config
    leaves = sorted({module.rsplit(".", 1)[-1] for module in keys})
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": first.get("base_model_name_or_path"),
        "task_type": first.get("task_type", "CAUSAL_LM"),
        "r": rank,
        "lora_alpha": rank,  # scaling alpha / r = 1: the parts' scalings are inside B
        "target_modules": leaves,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    return LoraAdapter(config=config, tensors=tensors, ref=label)


def module_delta(adapter: LoraAdapter, module: str) -> Any:
    """One module's weight delta, ``scaling * B @ A`` ([out, in], float32); None when the
    adapter does not adapt ``module``."""
    pair = adapter.pairs().get(module)
    if pair is None:
        return None
    a, b = pair
    return adapter.scaling_for(module) * (b.float() @ a.float())


def save_lora_folder(adapter: LoraAdapter, folder: Path | str) -> Path:
    """Write ``adapter`` as a PEFT folder (``adapter_config.json`` + safetensors) in ``folder``."""
    from safetensors.torch import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(dict(adapter.config), indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in adapter.tensors.items()}, str(path / WEIGHTS_FILE),
              metadata={"format": "pt"})
    return path
