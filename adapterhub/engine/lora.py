"""Stacked LoRA slot buffers and the per-row delta of a mixed batch (a grouped BGMV).

Every resident adapter owns a *slot*. For each group of projections that share an input
(``q/k/v``, ``o``, ``gate/up``, ``down``) the A matrices of all slots are stacked into one buffer
``[layers, S, in, R * targets]``, and for each projection the pre-scaled B matrices into
``[layers, S, R, out]`` (S slots, R the rank every slot is padded to). A step then runs, for all
rows at once and per group of projections::

    xg  = x[src]                      # [slots used, g, in]   rows grouped by slot, padded to g
    h   = bmm(xg, A[layer, used])     # [slots used, g, R * targets]
    h  *= weight                      # a row's mix weight for that slot (0 on padding)
    out[:, cols_t].index_add_(0, dst, bmm(h_t, B_t[layer, used]))   # per projection t

Design choices:

* **Grouped, exact products.** Every row multiplies only by its own adapters' A and B: the
  LoRA cost is ``rows * r * (in + out)``, whatever the number of resident slots. Both
  alternatives were slower (measured: see bench/README.md, "Figures behind design choices"):
  Punica-style per-row gathers of A and B copy ``rows * r * (in + out)`` weights per
  projection; multiplying every row by all slots and masking (one GEMM, no gather) grows with
  the slots. Grouping gathers activations (``rows * in``), not weights.
* **One A product per shared input.** q, k and v read the same normalised hidden state, so
  their A matrices sit side by side and one ``bmm`` serves all three (likewise gate and up);
  their deltas land in the fused q|k|v output of :mod:`.decoder`. (A block-diagonal B, one
  ``bmm`` for the whole group, was measured too: no faster, and 3x the memory.)
* **Mixing is free.** A request-time mix puts a row in several slots' groups, each with its
  weight: ``sum_i w_i * B_i A_i x``. Rows with no adapter are in no group and get no delta.
* **No adapter costs nothing.** A batch where no row has an adapter skips the LoRA path.
* **Scaling is folded into B** when an adapter is prepared, off the decode path.
* **The LoRA product runs in its own dtype** (float32 by default, as PEFT keeps adapter weights
  in float32 over a bf16 or 4-bit base); the delta is rounded to the base's dtype and added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.engine.families import family_of, projection_dims
from adapterhub.errors import IncompatibleAdapterError
from adapterhub.models.adapters import LoraAdapter

_MODULE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
# PEFT variants whose forward is not B @ A x: served by no batched kernel here, so refused
_UNSERVED = {
    "use_dora": "DoRA rescales each output column by a learned magnitude",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "whole modules trained beside the LoRA (e.g. an LM head)",
    "trainable_token_indices": "trained rows of the embedding",
    "target_parameters": "LoRA on raw parameters",
}


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter ready to copy into a slot: per (layer, target), A and scaled B^T.

    Attributes:
        key: the resolved version ref, e.g. ``pirate@3``.
        rank: the LoRA rank r.
        weights: ``(layer, target) -> (A [r, in], Bt [r, out])`` in the engine's dtype.
        num_bytes: memory the tensors take.
    """

    key: str
    rank: int
    weights: Mapping[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    num_bytes: int

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(target for _, target in self.weights)


def prepare_adapter(
    adapter: LoraAdapter,
    key: str,
    dims: Mapping[str, tuple[int, int]],
    num_layers: int,
    *,
    max_rank: int,
    dtype: torch.dtype,
) -> PreparedAdapter:
    """Check an adapter against the base and lay its weights out for a slot.

    Runs on the loader thread, so the shape checks are against the projection sizes rather
    than a walk of the model's modules (a visible share of a cold load; see bench/README.md).

    Args:
        adapter: weights as the registry loaded them.
        key: the resolved ref it is known by.
        dims: ``target -> (in_features, out_features)`` of the base's projections.
        num_layers: decoder layers of the base.
        max_rank: the engine's ``max_lora_rank``.
        dtype: the dtype of the LoRA product.

    Raises:
        IncompatibleAdapterError: shapes do not fit, rank is over ``max_rank``, or the adapter
            uses a LoRA variant the engine does not serve (DoRA, bias, modules_to_save, patterns).
    """
    config = adapter.config
    used = {name: why for name, why in _UNSERVED.items() if config.get(name)}
    if used:
        name, why = next(iter(used.items()))
        raise IncompatibleAdapterError(
            f"adapter {key!r} sets {name}={config[name]!r} ({why}), which the engine does not serve: "
            "its batched kernel computes plain LoRA (B @ A x with per-module rank, alpha and rsLoRA). "
            "Merge the adapter into a base (PeftModel.merge_and_unload) and serve that, or retrain "
            f"without {name}"
        )
    if adapter.extra_tensors:
        raise IncompatibleAdapterError(
            f"adapter {key!r} carries tensors beside LoRA's A and B ({sorted(adapter.extra_tensors)[:3]!r}), "
            "which the engine does not serve; merge them into a base, or retrain without them"
        )
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    problems = []
    for path, (a, b) in adapter.pairs().items():
        match = _MODULE.match(path)
        if match is None or match.group(3) not in dims or int(match.group(1)) >= num_layers:
            problems.append(f"module {path!r} is not a projection of this base's {num_layers} layers")
            continue
        target = match.group(3)
        fan_in, fan_out = dims[target]
        if (a.shape[1], b.shape[0]) != (fan_in, fan_out):
            problems.append(
                f"module {path!r} is {fan_in}->{fan_out} in the base but the adapter is "
                f"{a.shape[1]}->{b.shape[0]}"
            )
            continue
        if a.shape[0] > max_rank:
            raise IncompatibleAdapterError(
                f"adapter {key!r} has rank r={a.shape[0]} on {path!r} but the engine's max_lora_rank is "
                f"{max_rank}; raise EngineConfig.max_lora_rank to at least {a.shape[0]}"
            )
        a_t = a.to(dtype=dtype).contiguous()  # [r, in]
        bt = (b.to(torch.float32) * adapter.scaling_for(path)).t().to(dtype=dtype).contiguous()  # [r, out]
        weights[(int(match.group(1)), target)] = (a_t, bt)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise IncompatibleAdapterError(
            f"adapter {key!r} does not fit this base: {shown}. Was it trained on another base? "
            f"(the engine serves LoRA on {', '.join(dims)})"
        )
    size = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in weights.values())
    rank = max((a.shape[0] for a, _ in weights.values()), default=0)
    return PreparedAdapter(key=key, rank=rank, weights=weights, num_bytes=size)


@dataclass(frozen=True)
class RowMix:
    """Which slots each row (or token) of a batch uses, as grouped gather/scatter indices.

    Attributes:
        src: ``[slots used, g]`` row of each group member (padding points at row 0).
        dst: ``[slots used * g]`` the same rows, flattened, for the scatter-add.
        weight: ``[slots used, g, 1]`` mix weight of each member (0 on padding), or None
            when every weight is 1 (no mix, no padding: the multiply is skipped).
        used: the slots in use, or None when they are all S slots in order (no weight gather).
        targets: projections that any used slot adapts; the others are skipped.
    """

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor | None
    used: torch.Tensor | None
    targets: frozenset[str]


class LoraSlots:
    """The stacked per-slot A/B buffers of every adapted projection, and the batched delta.

    Buffers for a group of projections are allocated the first time an adapter that targets
    one of them is installed, so an engine serving attention-only adapters never pays for the MLP.
    """

    def __init__(
        self,
        dims: Mapping[str, tuple[int, int]],
        groups: Mapping[str, Sequence[str]],
        *,
        num_layers: int,
        num_slots: int,
        rank: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        """Args:
        dims: ``target -> (in_features, out_features)`` of the base's projections.
        groups: ``qkv``, ``o``, ``gate_up`` and ``down`` -> the targets that read that input, in
            the order their outputs sit side by side (:attr:`.families.Family.groups`).
        num_layers: decoder layers of the base.
        num_slots: S, adapters resident at once.
        rank: R, the rank every slot is padded to.
        dtype: the dtype of the LoRA buffers and product.
        device: where the buffers live (the base's device).
        """
        self.device = torch.device(device)
        self.dims = dict(dims)
        self.groups = {group: tuple(targets) for group, targets in groups.items()}
        self._group_of = {target: group for group, targets in self.groups.items() for target in targets}
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.rank = rank
        self.dtype = dtype
        # group -> A [L, S, in, R * targets]: one bmm for the group's shared input;
        # target -> B [L, S, R, out]: one bmm per projection on its R columns of the product
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._columns = {  # target -> its columns in the group's fused output
            t: (sum(self.dims[u][1] for u in g[: g.index(t)]), self.dims[t][1])
            for g in self.groups.values() for t in g
        }
        self._slot_targets: list[frozenset[str]] = [frozenset()] * num_slots
        self.generation = 0  # bumped on every install/clear, so cached mixes know to rebuild

    @classmethod
    def for_model(cls, model: Any, *, num_slots: int, rank: int, dtype: torch.dtype) -> LoraSlots:
        """Slots laid out for a loaded base: its family's targets and groups, on its device."""
        family = family_of(model)
        return cls(
            projection_dims(model, family), family.groups,
            num_layers=int(model.config.num_hidden_layers), num_slots=num_slots, rank=rank, dtype=dtype,
            device=model.get_input_embeddings().weight.device,
        )

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._a.values(), *self._b.values()))

    def out_features(self, group: str) -> int:
        """Width of a group's concatenated outputs (e.g. q + k + v)."""
        return sum(self.dims[t][1] for t in self.groups[group])

    def _alloc(self, group: str) -> None:
        if group in self._a:
            return
        targets = self.groups[group]
        fan_in = self.dims[targets[0]][0]
        shape = (self.num_layers, self.num_slots, self.rank * len(targets))
        self._a[group] = torch.zeros(*shape[:2], fan_in, shape[2], dtype=self.dtype, device=self.device)
        for target in targets:
            self._b[target] = torch.zeros(
                *shape[:2], self.rank, self.dims[target][1], dtype=self.dtype, device=self.device
            )

    def install(self, slot: int, adapter: PreparedAdapter) -> None:
        """Copy an adapter into ``slot``, replacing whatever was there."""
        self.clear(slot)
        for (layer, target), (a, bt) in adapter.weights.items():
            group = self._group_of[target]
            self._alloc(group)
            row = self.groups[group].index(target) * self.rank
            r = bt.shape[0]
            self._a[group][layer, slot, :, row : row + r].copy_(a.t())
            self._b[target][layer, slot, :r].copy_(bt)
        self._slot_targets[slot] = adapter.targets
        self.generation += 1

    def clear(self, slot: int) -> None:
        """Zero ``slot`` so that a stale adapter can never leak into a row."""
        # per layer: [layer, slot] is contiguous, and zero_() on the strided [:, slot] view is
        # far slower (see bench/README.md)
        for group in {self._group_of[t] for t in self._slot_targets[slot]}:
            for layer in range(self.num_layers):
                self._a[group][layer, slot].zero_()
                for target in self.groups[group]:
                    self._b[target][layer, slot].zero_()
        self._slot_targets[slot] = frozenset()
        self.generation += 1

    def row_mix(self, rows: Sequence[Mapping[int, float]], tokens_per_row: int = 1) -> RowMix | None:
        """Index a batch whose row i uses ``rows[i]`` (slot -> weight; empty = the base).

        Args:
            rows: each row's slots and mix weights.
            tokens_per_row: T when the batch is a ``[rows * T]`` flattened prefill.

        Returns:
            None when no row uses an adapter, so the step skips LoRA entirely.
        """
        members: dict[int, list[tuple[int, float]]] = {}
        for i, row in enumerate(rows):
            for slot, w in row.items():
                if w != 0.0:
                    members.setdefault(slot, []).append((i, w))
        if not members:
            return None
        used = sorted(members)
        width = max(len(m) for m in members.values()) * tokens_per_row
        src = torch.zeros(len(used), width, dtype=torch.long)
        weight = torch.zeros(len(used), width, 1, dtype=self.dtype)
        steps = torch.arange(tokens_per_row)
        for g, slot in enumerate(used):
            for j, (index, w) in enumerate(members[slot]):
                lo = j * tokens_per_row
                src[g, lo : lo + tokens_per_row] = index * tokens_per_row + steps
                weight[g, lo : lo + tokens_per_row] = w
        all_slots = used == list(range(self.num_slots))
        targets = frozenset().union(*(self._slot_targets[s] for s in used))
        src = src.to(self.device)
        return RowMix(
            src=src,
            dst=src.view(-1),
            weight=None if bool((weight == 1.0).all()) else weight.to(self.device),
            used=None if all_slots else torch.tensor(used, device=self.device),
            targets=targets,
        )

    def add_delta(
        self, mix: RowMix, layer: int, group: str, x: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Add every row's LoRA delta to one group of projections' output, in place.

        Args:
            mix: from :meth:`row_mix`.
            layer: decoder layer index.
            group: ``qkv``, ``o``, ``gate_up`` or ``down``.
            x: the group's shared input, ``[tokens, in]``.
            out: the group's base outputs side by side (``[tokens, q + k + v]`` for ``qkv``).
        """
        targets = self.groups[group]
        if mix.targets.isdisjoint(targets):
            return
        a = self._a[group][layer]  # [S, in, R * targets]
        if mix.used is not None:
            a = a[mix.used]
        xg = x[mix.src]  # [used, g, in]
        if xg.dtype != a.dtype:
            xg = xg.to(a.dtype)
        h = torch.bmm(xg, a)  # [used, g, R * targets]
        if mix.weight is not None:
            h.mul_(mix.weight)
        used, width, _ = h.shape
        # bmm is slow on a strided column slice: give each target a contiguous [used, g, R]
        parts = h.view(used, width, len(targets), self.rank).permute(2, 0, 1, 3).contiguous()
        for index, target in enumerate(targets):
            if target not in mix.targets:
                continue
            b = self._b[target][layer]  # [S, R, out]
            if mix.used is not None:
                b = b[mix.used]
            lo, size = self._columns[target]
            delta = torch.bmm(parts[index], b).view(-1, size)  # [used * g, out]
            out[:, lo : lo + size].index_add_(0, mix.dst, delta.to(out.dtype))
