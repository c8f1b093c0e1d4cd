"""Stacked LoRA slot buffers and the per-row delta of a mixed batch (a grouped BGMV).

Every resident adapter owns a *slot*. For each group of projections that share an input
(``q/k/v``, ``o``, ``gate/up``, ``down``) the A matrices of all slots are stacked into one buffer
``[layers, S, in, R * targets]``, and for each projection the pre-scaled B matrices into
``[layers, S, R, out]`` (S slots, R the rank every slot is padded to). A step then runs, for all
rows at once and per group of projections::

    xg  = x[src]                      # [slots, g, in]   rows grouped by slot, padded to g
    h   = bmm(xg, A[layer, slots])    # [slots, g, R * targets]
    h  *= weight                      # a row's mix weight for that slot (0 on padding)
    d   = cat([bmm(h_t, B_t[layer, slots]) for each projection t])   # [slots, g, out]
    out.index_add_(0, dst, d)         # one scatter-add into the group's fused output

where ``slots`` is the span of slots from the lowest to the highest one the batch uses: a slice,
so the weights are read where they lie, never copied.

Design choices:

* **Grouped, exact products.** Every row multiplies only by its own adapters' A and B: the
  LoRA cost is ``rows * r * (in + out)``, whatever the number of resident slots. Both
  alternatives were slower (measured: see bench/README.md, "Figures behind design choices"):
  Punica-style per-row gathers of A and B copy ``rows * r * (in + out)`` weights per
  projection; multiplying every row by all slots and masking (one GEMM, no gather) grows with
  the slots. Grouping gathers activations (``rows * in``), not weights.
* **Weights are sliced, not gathered.** Slots are taken lowest-free-first
  (:mod:`.residency`), so the slots a batch uses lie in a short span; the product runs over the
  whole span as a view (a slot in it that no row uses is a group of padding, weight 0). Indexing
  ``A[layer, used]`` instead copied every used slot's A and B, every layer of every step. Only a
  span over twice the slots used (a sparse table) falls back to that gather.
* **One A product per shared input.** q, k and v read the same normalised hidden state, so
  their A matrices sit side by side and one ``bmm`` serves all three (likewise gate and up);
  their deltas, side by side, land in the fused q|k|v output of :mod:`.decoder` in one
  scatter-add. (A block-diagonal B, one ``bmm`` for the whole group, was measured too: no
  faster than a ``bmm`` per projection and a concatenation, and 3x the memory.)
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
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.engine.families import family_of, projection_dims
from adapterhub.errors import IncompatibleAdapterError
from adapterhub.models.adapters import NOT_PLAIN_LORA, LoraAdapter

_MODULE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
_UNSERVED = NOT_PLAIN_LORA  # served by no batched kernel here, so refused


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter laid out as a slot holds it, so installing it is one copy per buffer.

    Attributes:
        key: the resolved version ref, e.g. ``pirate@3``.
        rank: the LoRA rank r (the largest, with ``rank_pattern``).
        a: ``group -> [layers, in, R * targets]``, the group's A^T side by side, zero where the
            adapter has no such layer or target, or a rank under R.
        b: ``target -> [layers, R, out]``, the pre-scaled B^T of each target it adapts.
        num_bytes: memory the tensors take.
    """

    key: str
    rank: int
    a: Mapping[str, torch.Tensor] = field(repr=False)
    b: Mapping[str, torch.Tensor] = field(repr=False)
    num_bytes: int

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(self.b)


@dataclass(frozen=True)
class RowMix:
    """Which slots each row (or token) of a batch uses, as grouped gather/scatter indices.

    Attributes:
        src: ``[slots, g]`` row of each group member (padding points at row 0).
        dst: ``[slots * g]`` the same rows, flattened, for the scatter-add.
        weight: ``[slots, g, 1]`` mix weight of each member (0 on padding), or None
            when every weight is 1 (no mix, no padding: the multiply is skipped).
        slots: the slots the groups stand for, as an index into the slot dimension: a slice
            (a view of the buffers) or, for a sparse table, a tensor of the used slots (a copy).
        targets: projections that any used slot adapts; a group of projections none of them
            adapts is skipped.
        weights: ``(group, layer) -> (A, (B per target))`` over :attr:`slots`, filled on first
            use: a mix lives for as long as its batch's composition, many steps, and indexing
            the buffers is a visible share of a small model's step.
    """

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor | None
    slots: slice | torch.Tensor
    targets: frozenset[str]
    weights: dict[tuple[str, int], tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )


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

    def prepare(self, adapter: LoraAdapter, key: str) -> PreparedAdapter:
        """Check an adapter against the base and lay its weights out as a slot holds them.

        Runs on a loader thread (it reads only the layout, never the buffers), so the work of
        an install is done here and the decode thread only copies: one copy per buffer. The
        shape checks are against the projection sizes rather than a walk of the model's
        modules (a visible share of a cold load; see bench/README.md).

        Args:
            adapter: weights as the registry loaded them.
            key: the resolved ref it is known by.

        Raises:
            IncompatibleAdapterError: shapes do not fit, rank is over the slots' rank (the
                engine's ``max_lora_rank``), or the adapter uses a LoRA variant the engine does
                not serve (DoRA, bias, modules_to_save, trainable tokens).
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
        # (target, r) -> the layers, A, B and scaling of each module: stacked in one go below,
        # a per-module copy being a visible share of a cold load
        found: dict[tuple[str, int], list[tuple[int, torch.Tensor, torch.Tensor, float]]] = {}
        problems = []
        for path, (a, b) in adapter.pairs().items():
            match = _MODULE.match(path)
            if match is None or match.group(3) not in self.dims or int(match.group(1)) >= self.num_layers:
                problems.append(f"module {path!r} is not a projection of this base's {self.num_layers} layers")
                continue
            layer, target = int(match.group(1)), match.group(3)
            fan_in, fan_out = self.dims[target]
            if (a.shape[1], b.shape[0]) != (fan_in, fan_out):
                problems.append(
                    f"module {path!r} is {fan_in}->{fan_out} in the base but the adapter is "
                    f"{a.shape[1]}->{b.shape[0]}"
                )
                continue
            r = a.shape[0]
            if r > self.rank:
                raise IncompatibleAdapterError(
                    f"adapter {key!r} has rank r={r} on {path!r} but the engine's max_lora_rank is "
                    f"{self.rank}; raise EngineConfig.max_lora_rank to at least {r}"
                )
            found.setdefault((target, r), []).append((layer, a, b, adapter.scaling_for(path)))
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise IncompatibleAdapterError(
                f"adapter {key!r} does not fit this base: {shown}. Was it trained on another base? "
                f"(the engine serves LoRA on {', '.join(self.dims)})"
            )
        a_parts: dict[str, torch.Tensor] = {}
        b_parts: dict[str, torch.Tensor] = {}
        for (target, r), modules in found.items():
            group = self._group_of[target]
            fan_in, fan_out = self.dims[target]
            if group not in a_parts:
                width = self.rank * len(self.groups[group])
                a_parts[group] = torch.zeros(self.num_layers, fan_in, width, dtype=self.dtype)
            if target not in b_parts:
                b_parts[target] = torch.zeros(self.num_layers, self.rank, fan_out, dtype=self.dtype)
            layers = torch.tensor([m[0] for m in modules])
            a = torch.stack([m[1] for m in modules]).transpose(1, 2)  # [n, in, r]
            scales = torch.tensor([m[3] for m in modules], dtype=torch.float32)[:, None, None]
            bt = (torch.stack([m[2] for m in modules]).to(torch.float32) * scales).transpose(1, 2)  # [n, r, out]
            column = self.groups[group].index(target) * self.rank
            a_parts[group][:, :, column : column + r].index_copy_(0, layers, a.to(self.dtype))
            b_parts[target][:, :r].index_copy_(0, layers, bt.to(self.dtype))
        rank = max((r for _, r in found), default=0)
        size = sum(t.numel() * t.element_size() for t in (*a_parts.values(), *b_parts.values()))
        return PreparedAdapter(key=key, rank=rank, a=a_parts, b=b_parts, num_bytes=size)

    def install(self, slot: int, adapter: PreparedAdapter) -> None:
        """Copy an adapter into ``slot``, replacing whatever was there: one copy per buffer,
        and zeros only where the slot's previous adapter had weights this one lacks."""
        stale = self._slot_targets[slot] - adapter.targets
        for group in {self._group_of[t] for t in self._slot_targets[slot]} - adapter.a.keys():
            self._clear(slot, group, self.groups[group])
        for group, a in adapter.a.items():
            self._alloc(group)
            self._a[group][:, slot].copy_(a)
            self._clear(slot, group, [t for t in self.groups[group] if t in stale], a_too=False)
        for target, b in adapter.b.items():
            self._b[target][:, slot].copy_(b)
        self._slot_targets[slot] = adapter.targets
        self.generation += 1

    def clear(self, slot: int) -> None:
        """Zero ``slot`` so that a stale adapter can never leak into a row."""
        for group in {self._group_of[t] for t in self._slot_targets[slot]}:
            self._clear(slot, group, self.groups[group])
        self._slot_targets[slot] = frozenset()
        self.generation += 1

    def _clear(self, slot: int, group: str, targets: Sequence[str], *, a_too: bool = True) -> None:
        # per layer: [layer, slot] is contiguous, and zero_() on the strided [:, slot] view was
        # far slower on one machine (see bench/README.md)
        for layer in range(self.num_layers):
            if a_too:
                self._a[group][layer, slot].zero_()
            for target in targets:
                self._b[target][layer, slot].zero_()

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
        first, last = used[0], used[-1]
        dense = last - first + 1 <= 2 * len(used)
        groups = list(range(first, last + 1)) if dense else used
        width = max(len(m) for m in members.values()) * tokens_per_row
        src = torch.zeros(len(groups), width, dtype=torch.long)
        weight = torch.zeros(len(groups), width, 1, dtype=self.dtype)
        steps = torch.arange(tokens_per_row)
        for g, slot in enumerate(groups):
            for j, (index, w) in enumerate(members.get(slot, ())):
                lo = j * tokens_per_row
                src[g, lo : lo + tokens_per_row] = index * tokens_per_row + steps
                weight[g, lo : lo + tokens_per_row] = w
        targets = frozenset().union(*(self._slot_targets[s] for s in used))
        src = src.to(self.device)
        return RowMix(
            src=src,
            dst=src.view(-1),
            weight=None if bool((weight == 1.0).all()) else weight.to(self.device),
            slots=slice(first, last + 1) if dense else torch.tensor(used, device=self.device),
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
        weights = mix.weights.get((group, layer))
        if weights is None:
            if mix.targets.isdisjoint(targets):
                return
            weights = mix.weights[(group, layer)] = (
                self._a[group][layer, mix.slots],  # [slots, in, R * targets]
                tuple(self._b[target][layer, mix.slots] for target in targets),  # [slots, R, out]
            )
        a, bs = weights
        xg = torch.index_select(x, 0, mix.dst).view(*mix.src.shape, x.shape[-1])  # [slots, g, in]
        if xg.dtype != a.dtype:
            xg = xg.to(a.dtype)
        h = torch.bmm(xg, a)  # [slots, g, R * targets]
        if mix.weight is not None:
            h.mul_(mix.weight)
        if len(bs) == 1:
            delta = torch.bmm(h, bs[0])
        else:
            # bmm is slow on a strided column slice: give each target a contiguous [slots, g, R];
            # the targets' products side by side then land in one scatter-add
            slots, width, _ = h.shape
            parts = h.view(slots, width, len(bs), self.rank).permute(2, 0, 1, 3).contiguous().unbind(0)
            delta = torch.cat([torch.bmm(part, b) for part, b in zip(parts, bs, strict=True)], dim=-1)
        out.index_add_(0, mix.dst, delta.view(len(mix.dst), -1).to(out.dtype))
