"""Our own forward pass and KV cache for Llama-family bases, with per-row LoRA deltas.

vLLM and LoRAX keep their own model code for the same reason: a serving forward needs a KV cache
laid out for continuous batching and a hook for batched LoRA, neither of which the Hugging Face
forward gives without per-step overhead.

Design choices:

* **The base's own modules do the frozen work.** Embedding, RMSNorm, rotary tables, the seven
  projections and the LM head are called as the loaded model has them, so a base in nf4 or int8
  (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``), bf16 or fp32 all run the same code.
* **Attention in float32, with our own kernels for decode.** The KV cache is float32 and a
  decode step's attention is two ``bmm`` calls over a ``[rows * kv_heads, span, head_dim]`` view
  of it (no copy, no ``repeat_kv``: the query heads of one KV head are a ``[group, head_dim]``
  matrix). On a CPU, ``scaled_dot_product_attention`` in bf16 with a mask was about 10x slower
  than this; on CUDA decode goes through ``scaled_dot_product_attention`` (its fused kernels).
  The projections stay in the base's dtype. Every buffer lives on the base's device.
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
  called one by one and their outputs concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from adapterhub.engine.lora import TARGETS, LoraSlots, RowMix
from adapterhub.errors import EngineError

SUPPORTED_MODEL_TYPES = ("llama",)


def is_supported(model: Any) -> bool:
    """Whether ``model`` is a Llama-family causal LM that :class:`LlamaRunner` can drive."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
        and hasattr(model, "model")
        and hasattr(model.model, "layers")
        and hasattr(model.model, "rotary_emb")
    )


def projection_dims(model: Any) -> dict[str, tuple[int, int]]:
    """``target -> (in_features, out_features)`` of the first layer's projections."""
    layer = model.model.layers[0]
    dims = {}
    for target in TARGETS:
        parent = layer.self_attn if target in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
        module = getattr(parent, target)
        dims[target] = (int(module.in_features), int(module.out_features))
    return dims


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

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` positions into row ``dst``."""
        if src != dst and length > 0:
            self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]


def _frozen(module: Any) -> Any:
    """The base layer under a PEFT wrapper, if someone injected adapters into the shared base.

    The engine adds its own deltas; a PEFT ``LoraLayer`` left active in the base by another user
    of the same model (``Hub.generate``'s reference path, a trainer) must not add its own.
    """
    return getattr(module, "base_layer", module)


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
                    else torch.zeros(m.out_features, dtype=m.weight.dtype)
                    for m in modules
                ])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        return torch.cat([m(x) for m in self.modules], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaRunner:
    """Prefill and decode steps over a Hugging Face ``LlamaForCausalLM`` with a KV cache.

    Not thread-safe: the engine thread alone calls it.
    """

    def __init__(self, model: Any, slots: LoraSlots, *, max_rows: int, max_seq_len: int) -> None:
        """Args:
        model: the frozen base (any precision).
        slots: the LoRA slot buffers the deltas come from.
        max_rows: cache rows, the most requests decoded at once.
        max_seq_len: longest prompt plus completion.
        """
        if not is_supported(model):
            kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise EngineError(
                f"the engine's fast path serves Llama-family bases {SUPPORTED_MODEL_TYPES!r}, "
                f"not {kind!r}; use a Llama-architecture base"
            )
        config = model.config
        self.model = model
        self.slots = slots
        self.layers = list(model.model.layers)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.dtype = compute_dtype(model)
        self.device = model_device(model)
        # CPU: our two-bmm decode kernel (SDPA with a mask was ~10x slower there); CUDA: SDPA
        self.sdpa_decode = self.device.type == "cuda"
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
        self.scale = self.head_dim**-0.5
        self.q_width = self.num_heads * self.head_dim
        self.kv_width = self.num_kv_heads * self.head_dim
        # references taken now, unwrapped: later PEFT injection into the base cannot reach us
        self.qkv = [
            _Fused([_frozen(getattr(layer.self_attn, n)) for n in ("q_proj", "k_proj", "v_proj")])
            for layer in self.layers
        ]
        self.o_proj = [_frozen(layer.self_attn.o_proj) for layer in self.layers]
        self.gate_up = [
            _Fused([_frozen(layer.mlp.gate_proj), _frozen(layer.mlp.up_proj)]) for layer in self.layers
        ]
        self.down_proj = [_frozen(layer.mlp.down_proj) for layer in self.layers]
        self.intermediate = int(config.intermediate_size)

    # ------------------------------------------------------------------ steps

    def prefill(
        self,
        prompts: Sequence[Sequence[int]],
        row_start: int,
        row_slots: Sequence[Mapping[int, float]],
    ) -> torch.Tensor:
        """Run new prompts into cache rows ``row_start ..``; return their next-token logits.

        Args:
            prompts: token ids of each new request.
            row_start: the first free cache row; prompt i goes to row ``row_start + i``.
            row_slots: each new row's slots and mix weights (empty for the base).

        Returns:
            ``[len(prompts), vocab]`` float32 logits at each prompt's last position.
        """
        count = len(prompts)
        widths = [len(p) for p in prompts]
        width = max(widths)
        self.cache.reserve(width)
        ids = torch.zeros(count, width, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        lengths = torch.tensor(widths, device=self.device)
        positions = torch.arange(width, device=self.device).expand(count, width)
        if min(widths) == width:
            attn_mask = None
        else:  # causal and not past the row's own end: [count, 1, width, width]
            causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
            attn_mask = (causal & (positions < lengths[:, None])[:, None, :])[:, None]
        token_mix = self.slots.row_mix(row_slots, tokens_per_row=width)
        x = self.model.model.embed_tokens(ids.view(-1))  # [count*width, hidden]
        cos, sin = self.model.model.rotary_emb(x.float(), positions)  # [count, width, head_dim]
        cos, sin = cos[:, None], sin[:, None]
        rows = slice(row_start, row_start + count)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = q.float().reshape(count, width, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.float().reshape(count, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = v.float().reshape(count, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.cache.data[layer, 0, rows, :, :width] = k
            self.cache.data[layer, 1, rows, :, :width] = v
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, enable_gqa=True
            )  # [count, heads, width, head_dim]
            return out.transpose(1, 2).reshape(count * width, -1).to(self.dtype)

        x = self._layers(x, token_mix, attend)
        last = x.view(count, width, -1)[torch.arange(count, device=self.device), lengths - 1]  # [count, hidden]
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
        # additive mask, once per step for all layers: [rows * kv_heads, 1, span]
        masked = torch.arange(span, device=self.device)[None, :] > lengths[:, None]
        bias = torch.zeros(count, span, device=self.device).masked_fill_(masked, float("-inf"))
        if self.sdpa_decode:  # [rows, 1, 1, span], broadcast over KV heads and their query heads
            bias = bias[:, None, None, :]
        else:  # [rows * kv_heads, 1, span], the bmm kernel's layout
            bias = bias[:, None, None, :].expand(count, kv_heads, 1, span).reshape(-1, 1, span)
        x = self.model.model.embed_tokens(tokens)  # [rows, hidden]
        cos, sin = self.model.model.rotary_emb(x.float(), lengths[:, None])  # [rows, 1, head_dim]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q = _rotate(q.float().reshape(count, heads, dim), cos, sin)
            k = _rotate(k.float().reshape(count, kv_heads, dim), cos, sin)
            cache = self.cache.data[layer]  # [2, rows, kv_heads, capacity, head_dim]
            cache[0][row_ids, :, lengths] = k
            cache[1][row_ids, :, lengths] = v.float().reshape(count, kv_heads, dim)
            capacity = cache.shape[3]
            if self.sdpa_decode:  # the GPU's fused (memory-efficient) attention kernel
                # a KV head's query heads as its query length: [rows, kv_heads, group, head_dim],
                # so no enable_gqa (which the fused fp32 kernel refuses) and no K/V copies
                out = F.scaled_dot_product_attention(
                    q.view(count, kv_heads, self.group, dim),
                    cache[0][:count, :, :span], cache[1][:count, :, :span], attn_mask=bias,
                )  # [rows, kv_heads, group, head_dim]
                return out.reshape(count, heads * dim).to(self.dtype)
            keys = cache[0].view(-1, capacity, dim)[: count * kv_heads, :span]  # [rows*kv, span, dim]
            values = cache[1].view(-1, capacity, dim)[: count * kv_heads, :span]
            scores = torch.bmm(q.view(count * kv_heads, self.group, dim), keys.transpose(1, 2))
            scores.mul_(self.scale).add_(bias)  # [rows*kv, group, span]
            probs = torch.softmax(scores, dim=-1)
            out = torch.bmm(probs, values)  # [rows*kv, group, dim]
            return out.view(count, heads * dim).to(self.dtype)

        x = self._layers(x, mix, attend)
        return self._logits(x)

    # ------------------------------------------------------------------ shared body

    def _layers(self, x: torch.Tensor, mix: RowMix | None, attend: Any) -> torch.Tensor:
        slots = self.slots
        for index, layer in enumerate(self.layers):
            act_fn = layer.mlp.act_fn
            h = layer.input_layernorm(x)
            qkv = self.qkv[index](h)  # [tokens, q + k + v]
            if mix is not None:
                slots.add_delta(mix, index, "qkv", h, qkv)
            q, k, v = torch.split(qkv, [self.q_width, self.kv_width, self.kv_width], dim=-1)
            o_in = attend(index, q, k, v)
            o = self.o_proj[index](o_in)
            if mix is not None:
                slots.add_delta(mix, index, "o", o_in, o)
            x = x + o
            h = layer.post_attention_layernorm(x)
            gate_up = self.gate_up[index](h)  # [tokens, 2 * intermediate]
            if mix is not None:
                slots.add_delta(mix, index, "gate_up", h, gate_up)
            gate, up = torch.split(gate_up, [self.intermediate, self.intermediate], dim=-1)
            d_in = act_fn(gate) * up
            d = self.down_proj[index](d_in)
            if mix is not None:
                slots.add_delta(mix, index, "down", d_in, d)
            x = x + d
        return x

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model.lm_head(self.model.model.norm(hidden))
        return logits.float()
