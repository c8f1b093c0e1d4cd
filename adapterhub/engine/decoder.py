"""Our own forward pass and KV cache for the decoder families of :mod:`.families`, with
per-row LoRA deltas.

vLLM and LoRAX keep their own model code for the same reason: a serving forward needs a KV cache
laid out for continuous batching and a hook for batched LoRA, neither of which the Hugging Face
forward gives without per-step overhead.

Design choices:

* **The base's own modules do the frozen work.** Embedding, norms, rotary tables, the
  projections and the LM head are called as the loaded model has them, so a base in nf4 or int8
  (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``), bf16 or fp32 all run the same code, and a
  family's scaled embeddings, (1 + weight) norms, biases and rope variants come for free. What a
  family changes in the forward's shape (q/k norms, Gemma's extra norms, windows, soft-capping,
  fused projections) is a switch of :class:`~.families.Family`, read here and nowhere else.
* **Attention in float32, with our own kernels for decode.** The KV cache is float32 and a
  decode step's attention is two ``bmm`` calls over a ``[rows * kv_heads, span, head_dim]`` view
  of it (no copy, no ``repeat_kv``: the query heads of one KV head are a ``[group, head_dim]``
  matrix). On a CPU, ``scaled_dot_product_attention`` in bf16 with a mask was far slower than
  this (measured: see bench/README.md, "Figures behind design choices"); on CUDA decode goes
  through ``scaled_dot_product_attention`` (its fused kernels) unless the family soft-caps
  attention logits, which no fused kernel does. The projections stay in the base's dtype. Every
  buffer lives on the base's device.
* **Sliding windows are masks.** A layer with a window sees the keys less than ``window``
  positions behind the query (transformers' convention); the cache still keeps every position,
  so memory is that of full attention (a rolling per-layer cache is left for later).
* **Row-major KV cache.** One tensor ``[layers, 2, rows, kv_heads, capacity, head_dim]``. Row i
  of the running batch is cache row i, its tokens at positions ``0..len-1`` (no left padding, so
  positions and rotary phases are those of the request run alone). The engine keeps running rows
  contiguous by moving the last row into a finished row's place; capacity doubles on demand.
* **Prefill and decode are separate forwards.** A prefill runs the newly admitted prompts,
  right-padded to one length; a decode step runs one token per running row and attends to each
  row's own length through a mask. Only the last position of a prompt goes through the LM head.
* **Tokens are flattened** to ``[tokens, hidden]`` around the projections so that the LoRA
  products of :mod:`.lora` run once per group of projections for the whole batch.
* **q|k|v and gate|up run as one matmul each** when the base's projections are plain
  ``nn.Linear`` (bf16/fp32): the engine keeps a fused copy of those weights (+50 % of the
  attention and MLP input weights, 140 MB for SmolLM2-135M in bf16), which saves three matmul
  dispatches per layer and lets one LoRA scatter update the fused output. Quantized layers are
  called one by one and their outputs concatenated; Phi-3's are fused already.
* **Rope tables per row where they depend on length.** LongRoPE switches its factors when a
  sequence passes the original context; the engine asks for each row's table alone, as if the
  request ran by itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adapterhub.engine.families import Family, family_of, layer_windows
from adapterhub.engine.lora import LoraSlots, RowMix
from adapterhub.errors import EngineError


def compute_dtype(model: Any) -> torch.dtype:
    """The dtype activations flow in: the embedding's (bnb keeps it unquantized)."""
    dtype: torch.dtype = model.model.embed_tokens.weight.dtype
    return dtype


def model_device(model: Any) -> torch.device:
    """The device the base's weights (and so the engine's buffers) live on."""
    device: torch.device = model.model.embed_tokens.weight.device
    return device


class KvCache:
    """Keys and values of every running row, ``[layers, 2, rows, kv_heads, capacity, head_dim]``."""

    def __init__(
        self,
        *,
        num_layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        initial_len: int = 256,
    ) -> None:
        self.max_len = max_len
        self.device = torch.device(device)
        self._shape = (num_layers, 2, rows, kv_heads, head_dim)
        self.data = self._alloc(min(initial_len, max_len), dtype)

    def _alloc(self, capacity: int, dtype: torch.dtype) -> torch.Tensor:
        layers, two, rows, heads, dim = self._shape
        return torch.zeros(layers, two, rows, heads, capacity, dim, dtype=dtype, device=self.device)

    @property
    def capacity(self) -> int:
        return self.data.shape[4]

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions per row (doubling, up to ``max_len``)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise EngineError(f"sequence length {length} is over the cache's max_len={self.max_len}")
        capacity = min(self.max_len, max(length, 2 * self.capacity))
        grown = self._alloc(capacity, self.data.dtype)
        grown[:, :, :, :, : self.capacity].copy_(self.data)
        self.data = grown

    def block(self, row: int, start: int, end: int) -> torch.Tensor:
        """A view of row ``row``'s positions ``start .. end``: ``[layers, 2, kv_heads, n, head_dim]``."""
        return self.data[:, :, row, :, start:end]

    def write(self, row: int, start: int, blocks: Sequence[torch.Tensor]) -> int:
        """Copy ``blocks`` (as :meth:`block` gives them) into row ``row`` from ``start`` on;
        return the position after them."""
        self.reserve(start + sum(b.shape[3] for b in blocks))
        for block in blocks:  # one copy each (a torch.cat first would copy them twice)
            end = start + block.shape[3]
            self.data[:, :, row, :, start:end] = block
            start = end
        return start

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions into row ``dst``."""
        if src != dst and length > 0:
            self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]


class _Fused:
    """Several projections of one input as one output ``[tokens, sum(out)]``."""

    def __init__(self, modules: Sequence[Any]) -> None:
        self.modules = list(modules)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        if all(type(m) is torch.nn.Linear for m in modules):
            self.weight = torch.cat([m.weight.detach() for m in modules]).contiguous()
            if any(m.bias is not None for m in modules):
                self.bias = torch.cat([
                    m.bias.detach() if m.bias is not None
                    else torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)
                    for m in modules
                ])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        return torch.cat([m(x) for m in self.modules], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dim = cos.shape[-1]
    if dim < x.shape[-1]:  # partial rotary (Phi-4-mini): the rest of each head passes through
        return torch.cat((_rotate(x[..., :dim], cos, sin), x[..., dim:]), dim=-1)
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass(frozen=True)
class _Layer:
    """One decoder layer as the runner calls it: the base's modules and its switches."""

    qkv: _Fused
    o_proj: Any
    gate_up: _Fused
    down_proj: Any
    act: Any
    input_norm: Any
    attention_out_norm: Any | None  # Gemma 2/3: on the attention output, before the residual
    mlp_in_norm: Any
    mlp_out_norm: Any | None  # Gemma 2/3: on the MLP output, before the residual
    q_norm: Any | None
    k_norm: Any | None
    window: int | None
    rope: str | None  # the rotary table it uses (Gemma 3's layer type), None for the only one


def _layer(layer: Any, family: Family, window: int | None, rope: str | None) -> _Layer:
    attn, mlp, groups = layer.self_attn, layer.mlp, family.groups
    sandwich = family.sandwich_norms
    return _Layer(
        qkv=_Fused([getattr(attn, name) for name in groups["qkv"]]),
        o_proj=getattr(attn, groups["o"][0]),
        gate_up=_Fused([getattr(mlp, name) for name in groups["gate_up"]]),
        down_proj=getattr(mlp, groups["down"][0]),
        act=getattr(mlp, "act_fn", None) or mlp.activation_fn,
        input_norm=layer.input_layernorm,
        attention_out_norm=layer.post_attention_layernorm if sandwich else None,
        mlp_in_norm=layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm,
        mlp_out_norm=layer.post_feedforward_layernorm if sandwich else None,
        q_norm=attn.q_norm if family.qk_norm else None,
        k_norm=attn.k_norm if family.qk_norm else None,
        window=window,
        rope=rope,
    )


def _softcap(scores: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's ``cap * tanh(scores / cap)``, in place; nothing without a cap."""
    if cap is None:
        return scores
    return torch.tanh_(scores.div_(cap)).mul_(cap)


class DecoderRunner:
    """Prefill and decode steps over a Hugging Face causal LM of :data:`~.families.FAMILIES`.

    Not thread-safe: the engine thread alone calls it.
    """

    def __init__(self, model: Any, slots: LoraSlots, *, max_rows: int, max_seq_len: int) -> None:
        """Args:
        model: the frozen base (any precision).
        slots: the LoRA slot buffers the deltas come from.
        max_rows: cache rows, the most requests decoded at once.
        max_seq_len: longest prompt plus completion.

        Raises:
            EngineError: the base's family, or a switch in its config, is not served.
        """
        family = family_of(model)
        config = model.config
        self.model = model
        self.family = family
        self.slots = slots
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.dtype = compute_dtype(model)
        self.device = model_device(model)
        count = int(config.num_hidden_layers)
        layer_types = list(getattr(config, "layer_types", None) or [None] * count)
        ropes = layer_types if family.rope_per_layer_type else [None] * count
        windows = layer_windows(model, family)
        self.layers = [
            _layer(layer, family, window, rope)
            for layer, window, rope in zip(model.model.layers[:count], windows, ropes, strict=True)
        ]
        self.windows = sorted({w for w in windows if w is not None})
        self.rope_kinds = sorted(set(ropes), key=str)
        rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
        self.rope_per_row = "longrope" in (rope_type.values() if isinstance(rope_type, dict) else (rope_type,))
        scalar = config.query_pre_attn_scalar if family.query_pre_attn_scalar else self.head_dim
        self.scale = float(scalar) ** -0.5
        self.attention_softcap = getattr(config, "attn_logit_softcapping", None)
        self.final_softcap = getattr(config, "final_logit_softcapping", None)
        # CPU: our two-bmm decode kernel (SDPA with a mask is far slower there); CUDA: SDPA,
        # whose fused kernels do not soft-cap
        self.sdpa_decode = self.device.type == "cuda" and self.attention_softcap is None
        self.cache = KvCache(
            num_layers=len(self.layers),
            rows=max_rows,
            kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_len=max_seq_len,
            dtype=torch.float32,
            device=self.device,
        )
        self.group = self.num_heads // self.num_kv_heads
        self.q_width = self.num_heads * self.head_dim
        self.kv_width = self.num_kv_heads * self.head_dim
        self.intermediate = int(config.intermediate_size)
        self._probe = torch.empty(0, device=self.device)  # float32 on the device, for the rope module
        self.prompt_logits: dict[int, torch.Tensor] = {}  # the last prefill's every_position rows

    # ------------------------------------------------------------------ steps

    def prefill(
        self,
        prompts: Sequence[Sequence[int]],
        row_start: int,
        row_slots: Sequence[Mapping[int, float]],
        every_position: Collection[int] = (),
        starts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Run new prompt tokens into cache rows ``row_start ..``; return their next-token logits.

        Args:
            prompts: token ids of each row still to run (the whole prompt, or what follows
                its cached prefix).
            row_start: the first row; prompt i goes to row ``row_start + i``.
            row_slots: each row's slots and mix weights (empty for the base).
            every_position: indices into ``prompts`` whose every position goes through the LM
                head too; their ``[len, vocab]`` logits are in :attr:`prompt_logits` afterwards.
            starts: tokens already in each row's cache (a reused prefix, written there by the
                caller); the new tokens follow them. None: every row starts empty.

        Returns:
            ``[len(prompts), vocab]`` float32 logits at each prompt's last position.
        """
        count = len(prompts)
        widths = [len(p) for p in prompts]
        width = max(widths)
        offsets = list(starts) if starts is not None and any(starts) else None
        # keys a query may see: the longest row's, cached prefix and new tokens
        span = max(s + n for s, n in zip(offsets, widths, strict=True)) if offsets else width
        self.cache.reserve(span)
        ids = torch.zeros(count, width, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        lengths = torch.tensor(widths, device=self.device)
        begin = torch.tensor(offsets or [0] * count, device=self.device)
        positions = begin[:, None] + torch.arange(width, device=self.device)
        masks = self._prefill_masks(positions, begin + lengths, span, padded=offsets is not None or min(widths) < width)
        token_mix = self.slots.row_mix(row_slots, tokens_per_row=width)
        x = self.model.model.embed_tokens(ids.view(-1))  # [count*width, hidden]
        ropes = self._rope_tables(positions, widths)  # kind -> [count, 1, width, rotary dim]
        rows = slice(row_start, row_start + count)
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim

        def attend(index: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self._normed(layer, q.reshape(count, width, heads, dim), k.reshape(count, width, kv_heads, dim))
            q, k = q.float().transpose(1, 2), k.float().transpose(1, 2)
            v = v.float().reshape(count, width, kv_heads, dim).transpose(1, 2)
            cos, sin = ropes[layer.rope]
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            cache = self.cache.data[index]
            if offsets is None:
                cache[0, rows, :, :width] = k
                cache[1, rows, :, :width] = v
            else:  # each row's new tokens after its own prefix; attend over prefix + new
                for i, (start, n) in enumerate(zip(offsets, widths, strict=True)):
                    cache[0, row_start + i, :, start : start + n] = k[i, :, :n]
                    cache[1, row_start + i, :, start : start + n] = v[i, :, :n]
                k, v = cache[0, rows, :, :span], cache[1, rows, :, :span]
            mask = masks.get(layer.window)
            if self.attention_softcap is not None:
                out = self._math_attention(q, k, v, mask if mask is not None else masks["causal"])
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=True
                )  # [count, heads, width, head_dim]
            return out.transpose(1, 2).reshape(count * width, -1).to(self.dtype)

        x = self._layers(x, token_mix, attend).view(count, width, -1)
        self.prompt_logits = {i: self._logits(x[i, : widths[i]]) for i in every_position}
        last = x[torch.arange(count, device=self.device), lengths - 1]  # [count, hidden]
        return self._logits(last)

    def decode(self, tokens: torch.Tensor, lengths: torch.Tensor, mix: RowMix | None) -> torch.Tensor:
        """One token for each of the first ``len(tokens)`` cache rows.

        Args:
            tokens: ``[rows]`` the last sampled token of each row.
            lengths: ``[rows]`` tokens already in each row's cache (the new token's position).
            mix: :meth:`LoraSlots.row_mix` of the rows, or None when none uses an adapter.

        Returns:
            ``[rows, vocab]`` float32 logits.
        """
        count = tokens.shape[0]
        span = int(lengths.max()) + 1  # lengths stay on the host: no device sync for this
        self.cache.reserve(span)
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        tokens, lengths = tokens.to(self.device), lengths.to(self.device)
        row_ids = torch.arange(count, device=self.device)
        biases = self._decode_biases(lengths, span)  # window -> additive mask, once for all layers
        x = self.model.model.embed_tokens(tokens)  # [rows, hidden]
        ropes = self._rope_tables(lengths[:, None], [1] * count)  # kind -> [rows, 1, 1, rotary dim]

        def attend(index: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k = self._normed(layer, q.reshape(count, heads, dim), k.reshape(count, kv_heads, dim))
            cos, sin = ropes[layer.rope]
            cos, sin = cos[:, 0], sin[:, 0]  # [rows, 1, rotary dim]
            q, k = _rotate(q.float(), cos, sin), _rotate(k.float(), cos, sin)
            cache = self.cache.data[index]  # [2, rows, kv_heads, capacity, head_dim]
            cache[0][row_ids, :, lengths] = k
            cache[1][row_ids, :, lengths] = v.float().reshape(count, kv_heads, dim)
            capacity = cache.shape[3]
            bias = biases[layer.window]
            if self.sdpa_decode:  # the GPU's fused (memory-efficient) attention kernel
                # a KV head's query heads as its query length: [rows, kv_heads, group, head_dim],
                # so no enable_gqa (which the fused fp32 kernel refuses) and no K/V copies
                out = F.scaled_dot_product_attention(
                    q.view(count, kv_heads, self.group, dim),
                    cache[0][:count, :, :span], cache[1][:count, :, :span], attn_mask=bias, scale=self.scale,
                )  # [rows, kv_heads, group, head_dim]
                return out.reshape(count, heads * dim).to(self.dtype)
            keys = cache[0].view(-1, capacity, dim)[: count * kv_heads, :span]  # [rows*kv, span, dim]
            values = cache[1].view(-1, capacity, dim)[: count * kv_heads, :span]
            scores = torch.bmm(q.view(count * kv_heads, self.group, dim), keys.transpose(1, 2))
            _softcap(scores.mul_(self.scale), self.attention_softcap).add_(bias)  # [rows*kv, group, span]
            probs = torch.softmax(scores, dim=-1)
            out = torch.bmm(probs, values)  # [rows*kv, group, dim]
            return out.view(count, heads * dim).to(self.dtype)

        x = self._layers(x, mix, attend)
        return self._logits(x)

    # ------------------------------------------------------------------ attention pieces

    def _normed(self, layer: _Layer, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k ``[..., heads, head_dim]`` through the layer's per-head norms, if it has them."""
        if layer.q_norm is None:
            return q, k
        return layer.q_norm(q), layer.k_norm(k)

    def _rope_tables(self, positions: torch.Tensor, lengths: Sequence[int]) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
        """``kind -> (cos, sin)`` ``[rows, 1, width, rotary dim]`` for every rotary table in use."""
        rotary = self.model.model.rotary_emb
        tables = {}
        for kind in self.rope_kinds:
            extra = () if kind is None else (kind,)
            if self.rope_per_row:  # each row's own length picks its factors, as if it ran alone
                parts = [rotary(self._probe, positions[i : i + 1, :n], *extra) for i, n in enumerate(lengths)]
                pad = positions.shape[1]
                cos = torch.cat([F.pad(c, (0, 0, 0, pad - c.shape[1])) for c, _ in parts])
                sin = torch.cat([F.pad(s, (0, 0, 0, pad - s.shape[1])) for _, s in parts])
            else:
                cos, sin = rotary(self._probe, positions, *extra)
            tables[kind] = (cos[:, None], sin[:, None])
        return tables

    def _prefill_masks(self, positions: torch.Tensor, ends: torch.Tensor, span: int, *,
                       padded: bool) -> dict[Any, torch.Tensor | None]:
        """``window -> [count, 1, width, span]`` boolean masks (True: attend) of queries at
        ``positions`` over keys ``0 .. span``, a row's keys ending at ``ends``; None means plain
        causal (SDPA's ``is_causal``). ``"causal"`` is the full mask written out."""
        keys = torch.arange(span, device=self.device)[None, None, :]
        query = positions[:, :, None]  # [count, width, 1]
        real = query < ends[:, None, None]
        allowed = (keys <= query) & (keys < ends[:, None, None])
        # a padding query sees key 0, so that no row of its softmax is empty (NaN would reach
        # the cache, and 0 * NaN is NaN in the next layer's products)
        allowed = (allowed | (~real & (keys == 0)))[:, None]
        masks: dict[Any, torch.Tensor | None] = {None: allowed if padded else None, "causal": allowed}
        for window in self.windows:
            masks[window] = allowed & ((keys > query - window) | (~real & (keys == 0)))[:, None]
        return masks

    def _decode_biases(self, lengths: torch.Tensor, span: int) -> dict[int | None, torch.Tensor]:
        """``window -> additive mask`` in the decode kernel's layout, for every window in use."""
        keys = torch.arange(span, device=self.device)[None, :]
        biases = {}
        for window in (None, *self.windows):
            masked = keys > lengths[:, None]
            if window is not None:
                masked |= keys <= lengths[:, None] - window
            bias = torch.zeros(masked.shape, device=self.device).masked_fill_(masked, float("-inf"))
            if self.sdpa_decode:  # [rows, 1, 1, span], broadcast over KV heads and their query heads
                biases[window] = bias[:, None, None, :]
            else:  # [rows * kv_heads, 1, span], the bmm kernel's layout
                rows = bias.shape[0]
                biases[window] = bias[:, None, None, :].expand(rows, self.num_kv_heads, 1, span).reshape(-1, 1, span)
        return biases

    def _math_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attention written out, for soft-capped logits: q ``[c, heads, w, d]``, k/v ``[c, kv, span, d]``."""
        count, _, width, dim = q.shape
        kv_heads, span = k.shape[1], k.shape[2]
        grouped = q.reshape(count, kv_heads, self.group * width, dim)  # a KV head's query heads
        scores = torch.matmul(grouped, k.transpose(-1, -2)).view(count, kv_heads, self.group, width, span)
        scores = _softcap(scores.mul_(self.scale), self.attention_softcap)
        scores.masked_fill_(~allowed[:, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(count, kv_heads, self.group * width, span)
        return torch.matmul(probs, v).view(count, self.num_heads, width, dim)

    # ------------------------------------------------------------------ shared body

    def _layers(self, x: torch.Tensor, mix: RowMix | None, attend: Any) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            qkv = self._project(layer.qkv, "qkv", index, layer.input_norm(x), mix)  # [tokens, q + k + v]
            q, k, v = torch.split(qkv, [self.q_width, self.kv_width, self.kv_width], dim=-1)
            o = self._project(layer.o_proj, "o", index, attend(index, layer, q, k, v), mix)
            x = x + (o if layer.attention_out_norm is None else layer.attention_out_norm(o))
            gate_up = self._project(layer.gate_up, "gate_up", index, layer.mlp_in_norm(x), mix)
            gate, up = torch.split(gate_up, [self.intermediate, self.intermediate], dim=-1)
            d = self._project(layer.down_proj, "down", index, layer.act(gate) * up, mix)
            x = x + (d if layer.mlp_out_norm is None else layer.mlp_out_norm(d))
        return x

    def _project(self, module: Any, group: str, index: int, x: torch.Tensor, mix: RowMix | None) -> torch.Tensor:
        """A group of the base's projections of ``x``, plus each row's LoRA delta."""
        out: torch.Tensor = module(x)
        if mix is not None:
            self.slots.add_delta(mix, index, group, x, out)
        return out

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model.lm_head(self.model.model.norm(hidden)).float()
        return _softcap(logits, self.final_softcap)
