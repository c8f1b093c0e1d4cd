"""The decoder families the engine serves, and what sets each apart from Llama.

Every family here is a pre-norm decoder: embed, then per layer attention and a gated MLP each
around a residual, then a final norm and the LM head. They differ in a handful of switches,
read by :mod:`.decoder` and nowhere else, so a new family is one entry in :data:`FAMILIES`:

=============  ==============================================================================
llama          the reference: q/k/v/o and gate/up/down projections, RMSNorm, rotary
mistral        sliding-window attention on every layer when ``config.sliding_window`` is set
qwen2          bias on q/k/v (carried by the base's own modules); windows per ``layer_types``
qwen3          RMSNorm over each head's q and k before rotary; windows per ``layer_types``
gemma          embeddings scaled by sqrt(hidden) and (1 + weight) norms, both inside the base's
               own modules (``GemmaTextScaledWordEmbedding``, ``GemmaRMSNorm``)
gemma2         norms after attention and around the MLP; ``query_pre_attn_scalar``; attention
               and final-logit soft-capping; windows per ``layer_types``
gemma3_text    as gemma2 plus q/k norms and a rotary table per layer type (local and global)
phi3           one fused ``qkv_proj`` and one fused ``gate_up_proj``; partial rotary and
               LongRoPE come from the base's own rotary module
=============  ==============================================================================

Design choices:

* **The base's modules do what they can.** Scaled embeddings, (1 + weight) norms, biases,
  activations and every rope-scaling variant in a config (linear, llama3, yarn, longrope, partial
  rotary) are the loaded model's own modules; the table names only what changes the shape of the
  forward itself.
* **Refuse, never guess.** A model type not in the table, or a known one with a switch the engine
  does not honour (bidirectional Gemma 3 attention, stateful dynamic-NTK rope), is an
  :class:`EngineError` that names what is missing.
* **LoRA targets are the family's own module names**, so PEFT adapters trained on Phi-3's fused
  ``qkv_proj`` fit as they are. Targets that read one input share an A product (:mod:`.lora`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from adapterhub.errors import EngineError

Windows = Literal["none", "all", "layer_types"]


@dataclass(frozen=True)
class Family:
    """What a decoder family changes in the Llama forward.

    Attributes:
        fused: one ``qkv_proj`` and one ``gate_up_proj`` (Phi-3) instead of q/k/v and gate/up.
        qk_norm: an RMSNorm over each head of q and k, before rotary (``self_attn.q_norm``).
        sandwich_norms: Gemma 2's layer: ``post_attention_layernorm`` on the attention output,
            ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm`` around the MLP.
        windows: which layers use ``config.sliding_window``: none, all, or those that
            ``config.layer_types`` marks ``sliding_attention``.
        rope_per_layer_type: the rotary module takes the layer type (Gemma 3's local/global).
        query_pre_attn_scalar: attention scales by ``config.query_pre_attn_scalar ** -0.5``.
    """

    fused: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    windows: Windows = "none"
    rope_per_layer_type: bool = False
    query_pre_attn_scalar: bool = False

    @property
    def attention_targets(self) -> tuple[str, ...]:
        """The attention projections, as PEFT's ``target_modules`` name them."""
        return ("qkv_proj", "o_proj") if self.fused else ("q_proj", "k_proj", "v_proj", "o_proj")

    @property
    def mlp_targets(self) -> tuple[str, ...]:
        return ("gate_up_proj", "down_proj") if self.fused else ("gate_proj", "up_proj", "down_proj")

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """LoRA targets by shared input: ``qkv``, ``o``, ``gate_up``, ``down``."""
        attention, mlp = self.attention_targets, self.mlp_targets
        return {"qkv": attention[:-1], "o": attention[-1:], "gate_up": mlp[:-1], "down": mlp[-1:]}


FAMILIES: Mapping[str, Family] = {
    "llama": Family(),
    "mistral": Family(windows="all"),
    "qwen2": Family(windows="layer_types"),
    "qwen3": Family(windows="layer_types", qk_norm=True),
    "gemma": Family(),
    "gemma2": Family(windows="layer_types", sandwich_norms=True, query_pre_attn_scalar=True),
    "gemma3_text": Family(
        windows="layer_types", sandwich_norms=True, qk_norm=True, rope_per_layer_type=True,
        query_pre_attn_scalar=True,
    ),
    "phi3": Family(fused=True, windows="all"),
}
"""``config.model_type -> Family`` for every base the engine serves."""


def family_of(model: Any) -> Family:
    """The family of a loaded causal LM, checked for switches the engine does not honour.

    Raises:
        EngineError: the model type is not in :data:`FAMILIES`, or its config asks for
            something the engine's forward does not do; the message says what.
    """
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None) or type(model).__name__
    family = FAMILIES.get(kind)
    if family is None:
        hint = " (load the text model, Gemma3ForCausalLM)" if kind == "gemma3" else ""
        raise EngineError(
            f"the engine serves the decoder families {sorted(FAMILIES)!r}, not {kind!r}{hint}; "
            "use a base of one of these families, or add the family to adapterhub.engine.families"
        )
    inner = getattr(model, "model", None)
    missing = [name for name in ("layers", "embed_tokens", "norm", "rotary_emb") if not hasattr(inner, name)]
    if missing:
        raise EngineError(f"this {kind!r} model has no model.{missing[0]}; the engine needs the standard "
                          "Hugging Face layout (AutoModelForCausalLM)")
    if getattr(config, "use_bidirectional_attention", False):
        raise EngineError(f"this {kind!r} base uses bidirectional attention (an embedding model), "
                          "which a causal serving engine cannot run")
    rope = getattr(inner.rotary_emb, "rope_type", "default")
    if "dynamic" in (rope.values() if isinstance(rope, dict) else (rope,)):
        raise EngineError(f"this {kind!r} base uses dynamic-NTK rope scaling, whose tables depend on "
                          "every earlier call; serve it with rope_scaling removed or of a static type "
                          "(linear, yarn, llama3)")
    return family


def projection_dims(model: Any, family: Family) -> dict[str, tuple[int, int]]:
    """``target -> (in_features, out_features)`` of the first layer's projections."""
    layer = model.model.layers[0]
    dims = {}
    for target in (*family.attention_targets, *family.mlp_targets):
        parent = layer.self_attn if target in family.attention_targets else layer.mlp
        module = getattr(parent, target)
        dims[target] = (int(module.in_features), int(module.out_features))
    return dims


def layer_windows(model: Any, family: Family) -> list[int | None]:
    """Each layer's sliding window in tokens (a query sees keys ``< window`` behind it), or None."""
    config = model.config
    count = int(config.num_hidden_layers)
    window = getattr(config, "sliding_window", None)
    if family.windows == "none" or window is None:
        return [None] * count
    if family.windows == "all":
        return [int(window)] * count
    types = getattr(config, "layer_types", None) or ["full_attention"] * count
    return [int(window) if kind == "sliding_attention" else None for kind in types]
