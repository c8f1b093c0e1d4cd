"""A registered reward-model version as a scorer: LoRA + scalar score head on the shared base.

A reward model is trained by the ``reward`` method (TRL's ``RewardTrainer`` over
``AutoModelForSequenceClassification`` with ``num_labels=1``); its version holds the LoRA weights
and, in the same ``adapter_model.safetensors``, the score head (``...score.weight``, ``[1, hidden]``),
which :class:`~adapterhub.models.adapters.LoraAdapter` keeps in ``extra_tensors``.

:func:`load_reward_scorer` loads that version *into the model already in memory* as one more named
LoRA adapter, so scoring costs no second copy of the base: GRPO and PPO switch to the reward
adapter for a no-grad pass and back. The score is computed exactly as
``GenericForSequenceClassification`` does: the final (normed) hidden state of the last real token
of ``chat_template(prompt + [assistant completion])`` times the head. Inputs are right-padded, so
the last real token is found from the attention mask, not from the pad id (which on SmolLM2 is
the end-of-turn token itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.errors import ConfigError, IncompatibleAdapterError
from adapterhub.registry import Registry, ensure_compatible
from adapterhub.training.templates import as_messages, chat_token_ids

if TYPE_CHECKING:
    from adapterhub.models.adapters import LoraAdapter
    from adapterhub.training.recipe import LoraConfig as RecipeLora

REWARD_METHOD = "reward"
SCORE_HEAD_SUFFIX = "score.weight"


@contextmanager
def active_adapter(model: Any, name: str | None) -> Iterator[None]:
    """Run a no-grad pass with LoRA adapter ``name`` active (None: the bare base), then restore.

    PEFT's ``set_adapter`` also flips ``requires_grad`` of every adapter; this restores the
    active adapter, every parameter's ``requires_grad`` and train/eval mode as they were, so a
    trainer's policy adapter is untouched by a reference or reward pass. Dropout is off inside.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    previous = model.active_adapter
    model.eval()
    try:
        if name is None:
            with model.disable_adapter():
                yield
        else:
            model.set_adapter(name)
            yield
    finally:
        if name is not None:
            model.set_adapter(previous)
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


def load_lora_weights(
    model: Any, tensors: Mapping[str, Any], adapter_name: str, *, where: str
) -> None:
    """Put saved PEFT tensors into adapter ``adapter_name`` of ``model``; every tensor must land.

    Raises:
        IncompatibleAdapterError: some tensors match no module of the adapter (names them).
    """
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(tensors), adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise IncompatibleAdapterError(
            f"{where}: {len(unexpected)} saved tensors fit no module of adapter {adapter_name!r} "
            f"(e.g. {unexpected[0]!r}); was it trained on another base or with another shape?"
        )


def add_saved_lora(model: Any, adapter: LoraAdapter, name: str, *, where: str) -> None:
    """Add a registered adapter's LoRA to ``model`` as adapter ``name``, in its saved shape
    (no dropout), with its saved weights.

    Raises:
        IncompatibleAdapterError: some tensors match no module of the adapter.
    """
    from peft import LoraConfig

    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        target_modules=list(adapter.target_modules),
        lora_dropout=0.0,
        use_rslora=bool(adapter.config.get("use_rslora", False)),
        bias="none",
    )
    model.add_adapter(name, config)
    load_lora_weights(model, adapter.tensors, name, where=where)


def backbone_of(model: Any) -> Any:
    """The transformer trunk (``LlamaModel`` for Llama) under a PeftModel or a plain model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix)


def score_model_over(causal_lm: Any) -> Any:
    """``AutoModelForSequenceClassification`` (one label) sharing ``causal_lm``'s trunk, no copy.

    The trunk's modules are the causal LM's own objects, so the base is in memory once; only the
    score head ``Linear(hidden, 1)`` is new, initialised with std ``1/sqrt(hidden + 1)`` as in
    Ziegler et al. 2019 (and Huang et al. 2024).
    """
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    prefix = causal_lm.base_model_prefix
    setattr(model, prefix, getattr(causal_lm, prefix))
    hidden = config.get_text_config().hidden_size
    model.score = torch.nn.Linear(hidden, 1, bias=False, dtype=torch.float32)
    torch.nn.init.normal_(model.score.weight, std=1.0 / math.sqrt(hidden + 1))
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method"):
        if hasattr(causal_lm, attr):  # TRL and PEFT read these to treat the model as QLoRA
            setattr(model, attr, getattr(causal_lm, attr))
    return model


def attach_score_lora(causal_lm: Any, lora: RecipeLora, *, parent_dir: Path | None = None) -> Any:
    """The reward model to train: the score model over ``causal_lm`` with a LoRA and a trainable head.

    Args:
        causal_lm: the frozen base as loaded for training.
        lora: the adapter's shape (with a parent, the runner has already set it to the parent's).
        parent_dir: a parent version's PEFT folder; its LoRA weights (and its score head, when the
            parent is a reward model) are the starting point. An SFT parent gives the LoRA only,
            as InstructGPT initialises its reward model from the SFT model.

    Returns:
        A ``PeftModel`` (task SEQ_CLS) whose adapter ``default`` and ``score`` head are trainable;
        ``save_pretrained`` writes the head into ``adapter_model.safetensors`` beside the LoRA.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors.torch import load_file

    from adapterhub.models.adapters import WEIGHTS_FILE

    model = get_peft_model(
        score_model_over(causal_lm),
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.modules,
            use_rslora=lora.use_rslora,
            use_dora=lora.use_dora,
            bias="none",
            task_type=TaskType.SEQ_CLS,
            modules_to_save=["score"],
        ),
    )
    if parent_dir is not None:
        weights = load_file(str(Path(parent_dir) / WEIGHTS_FILE))
        load_lora_weights(model, weights, "default", where=f"parent {str(parent_dir)!r}")
    return model


@dataclass
class RewardScorer:
    """Scores (prompt, completion) pairs with a reward version loaded into a shared model.

    Callable as a TRL GRPO reward function: ``scorer(prompts=..., completions=...)``.
    """

    model: Any  # peft.PeftModel holding the reward adapter under ``adapter_name``
    adapter_name: str
    head: Any  # torch.Tensor [1, hidden], float32
    tokenizer: Any
    version_ref: str
    max_length: int = 1024
    batch_size: int = 16

    @property
    def __name__(self) -> str:  # TRL logs reward functions by name
        return f"reward_model[{self.version_ref}]"

    def __call__(
        self,
        prompts: Sequence[str | Sequence[Mapping[str, str]]],
        completions: Sequence[str | Sequence[Mapping[str, str]]],
        **_: Any,
    ) -> list[float]:
        return self.score(prompts, completions)

    def render(
        self,
        prompt: str | Sequence[Mapping[str, str]],
        completion: str | Sequence[Mapping[str, str]],
    ) -> list[int]:
        """Token ids of one pair, rendered as the reward model saw its training pairs."""
        messages = as_messages(prompt, "user") + as_messages(completion, "assistant")
        return chat_token_ids(self.tokenizer, messages)[-self.max_length :]

    def score(
        self,
        prompts: Sequence[str | Sequence[Mapping[str, str]]],
        completions: Sequence[str | Sequence[Mapping[str, str]]],
    ) -> list[float]:
        """One scalar reward per (prompt, completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            scores.extend(self.score_ids(rows[start : start + self.batch_size]))
        return scores

    def score_ids(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Scores of already-rendered token id rows."""
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
        device = self.head.device
        input_ids, attention = input_ids.to(device), attention.to(device)
        with torch.no_grad(), active_adapter(self.model, self.adapter_name):
            hidden = backbone_of(self.model)(
                input_ids=input_ids, attention_mask=attention
            ).last_hidden_state
        last = attention.sum(dim=1) - 1  # [B]
        pooled = hidden[torch.arange(len(rows), device=device), last].float()  # [B, hidden]
        return (pooled @ self.head.T).squeeze(-1).tolist()


def load_reward_scorer(
    registry: Registry,
    ref: str,
    model: Any,
    tokenizer: Any,
    *,
    base_fingerprint: str,
    template_hash: str,
    adapter_name: str = "reward",
    max_length: int = 1024,
) -> RewardScorer:
    """Load reward version ``ref`` into ``model`` (a PeftModel over the base) as a frozen adapter.

    Args:
        registry: where ``ref`` lives.
        ref: a reward-model version (``name``, ``name@3``, ``name:prod``).
        model: the PeftModel already holding the base; the reward LoRA is added under
            ``adapter_name`` and never trained.
        tokenizer: the base's tokenizer (with its chat template).
        base_fingerprint: the loaded base's fingerprint, checked against the version's.
        template_hash: the loaded base's chat-template hash, checked against the version's.

    Raises:
        ConfigError: ``ref`` is not a reward-model version.
        IncompatibleAdapterError: trained on another base or template, or no score head saved.
        AdapterNotFoundError: ``ref`` does not resolve.
    """
    import torch

    version = registry.resolve(ref)
    if version.method != REWARD_METHOD:
        raise ConfigError(
            f"reward_model: {version.ref!r} was trained with method {version.method!r}, not "
            f"{REWARD_METHOD!r}; train a reward model first (e.g. `adapterhub train "
            "recipes/reward-concise.yaml`) and name its version here"
        )
    ensure_compatible(version, base_fingerprint, template_hash)
    adapter = registry.load_adapter(version)
    heads = {k: v for k, v in adapter.extra_tensors.items() if k.endswith(SCORE_HEAD_SUFFIX)}
    if len(heads) != 1:
        raise IncompatibleAdapterError(
            f"{version.ref} holds {len(heads)} score heads ({sorted(adapter.extra_tensors)!r}); a reward "
            f"version needs exactly one '*{SCORE_HEAD_SUFFIX}' tensor. Retrain it with the reward method"
        )
    (head,) = heads.values()
    hidden = backbone_of(model).config.hidden_size
    if tuple(head.shape) != (1, hidden):
        raise IncompatibleAdapterError(
            f"{version.ref}'s score head has shape {tuple(head.shape)}; this base needs (1, {hidden})"
        )
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if adapter_name in model.peft_config:
        raise ConfigError(
            f"adapter name {adapter_name!r} is already in use on this model; pick another"
        )
    add_saved_lora(model, adapter, adapter_name, where=version.ref)
    for param, flag in flags:
        param.requires_grad_(flag)
    for name, param in model.named_parameters():
        if f".{adapter_name}." in name:
            param.requires_grad_(False)
    return RewardScorer(
        model=model,
        adapter_name=adapter_name,
        head=head.detach().to(torch.float32),
        tokenizer=tokenizer,
        version_ref=version.ref,
        max_length=max_length,
    )
