"""PPO (classic RLHF, stage 3): a policy adapter optimised against a registered reward model.

The loop and its references are in :mod:`adapterhub.training.ppo.trainer`, the math in
:mod:`adapterhub.training.ppo.losses`. This module is the method's seam: the recipe section,
prompt tokenisation, and wiring the four roles into the runner's ``PeftModel``:

* **policy** ``default``: the runner's trainable adapter (the SFT parent's weights with ``parent:``);
* **reference** ``reference``: the parent loaded once more, frozen (the bare base without a parent);
* **reward** ``reward``: the reward-model version named by ``ppo.reward_model``, frozen, with its
  score head;
* **value** ``value`` + a linear head: initialised from the reward model (LoRA and head), trained.

Steps: ``training.max_steps`` counts PPO iterations (one rollout of ``training.batch_size``
prompts, then ``ppo.ppo_epochs`` passes over ``ppo.num_minibatches`` minibatches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from adapterhub.errors import ConfigError
from adapterhub.training.methods.interface import Method, MethodContext, PrepareContext
from adapterhub.training.recipe import RecipeBase, RecipeSection
from adapterhub.training.templates import as_messages, chat_token_ids, check_content

if TYPE_CHECKING:
    import datasets

    from adapterhub.training.datasets import PreparedData
    from adapterhub.training.reward_model import RewardScorer

REFERENCE = "reference"


class PPOConfig(RecipeSection):
    """The ``ppo:`` section of a recipe."""

    reward_model: str = Field(min_length=1, max_length=200)
    """The reward-model version to optimise (``name``, ``name@3``, ``name:prod``), trained with
    ``method: reward`` on this base."""
    kl_coef: float = Field(default=0.05, ge=0, le=10)
    """β of the per-token KL penalty to the reference (the parent)."""
    gamma: float = Field(default=1.0, gt=0, le=1)
    """Discount over response tokens."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """GAE's λ. Use 1.0 for short runs whose value model starts as the reward model: that model
    scores only whole answers, and with λ < 1 its mid-answer values bias the policy against
    ending its answers."""
    clip_range: float = Field(default=0.2, gt=0, lt=1)
    """ε of the clipped policy objective."""
    clip_range_value: float = Field(default=0.2, gt=0, le=100)
    """How far a value prediction may move from the rollout's before its loss is clipped."""
    vf_coef: float = Field(default=0.1, ge=0, le=100)
    """Weight of the value loss."""
    ppo_epochs: int = Field(default=2, ge=1, le=16)
    """Passes over each rollout."""
    num_minibatches: int = Field(default=1, ge=1, le=256)
    """Minibatches per pass (each is one optimizer step)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (scale only, mean kept) before GAE."""
    max_new_tokens: int = Field(default=48, ge=1, le=4096)
    """Longest sampled response."""
    temperature: float = Field(default=0.7, gt=0, le=5)
    """Sampling temperature of rollouts (log-probs use the same temperature)."""
    missing_eos_penalty: float | None = Field(default=1.0, ge=0, le=100)
    """Subtracted from the score of a response that never ends its turn; unset turns it off."""


class PPORecipe(RecipeBase):
    """A recipe with ``method: ppo``."""

    method: Literal["ppo"]  # type: ignore[assignment]
    """Proximal policy optimisation against a reward model."""
    ppo: PPOConfig
    """PPO settings (``reward_model`` is required)."""


def prepare(ctx: PrepareContext) -> PreparedData:
    """Render every prompt with the base's template and generation prompt: ``prompt_ids`` beside
    the ``prompt`` messages.

    Raises:
        ConfigError: a prompt holds special tokens, or leaves no room for a response within
            ``training.max_length``.
    """
    import datasets

    recipe = ctx.recipe
    assert isinstance(recipe, PPORecipe)
    room = recipe.training.max_length - recipe.ppo.max_new_tokens

    def tokenize(part: datasets.Dataset, label: str) -> datasets.Dataset:
        rows = []
        for index, row in enumerate(part):
            messages = as_messages(row["prompt"], "user")
            where = f"{label} prompt {index + 1}"
            check_content(ctx.tokenizer, messages, where=where)
            ids = chat_token_ids(ctx.tokenizer, messages, add_generation_prompt=True)
            if len(ids) > room:
                raise ConfigError(
                    f"dataset {where}: {len(ids)} prompt tokens leave no room for "
                    f"ppo.max_new_tokens={recipe.ppo.max_new_tokens} within training.max_length="
                    f"{recipe.training.max_length}; raise training.max_length or shorten the prompt"
                )
            rows.append({"prompt": messages, "prompt_ids": ids})
        return datasets.Dataset.from_list(rows)

    return ctx.data.map_splits(tokenize)


def add_value_adapter(model: Any, registry: Any, scorer: RewardScorer) -> Any:
    """Add the trainable ``value`` adapter and head, both copied from the reward model.

    Returns:
        The value head, ``Linear(hidden, 1)`` in float32.
    """
    import torch

    from adapterhub.training.ppo.trainer import VALUE
    from adapterhub.training.reward_model import add_saved_lora

    reward_ref = scorer.version_ref
    adapter = registry.load_adapter(reward_ref)
    add_saved_lora(model, adapter, VALUE, where=f"value model from {reward_ref}")
    value_head = torch.nn.Linear(scorer.head.shape[1], 1, bias=False, dtype=torch.float32)
    with torch.no_grad():
        value_head.weight.copy_(scorer.head)
    return value_head


def build_trainer(ctx: MethodContext) -> Any:
    """Our PPOTrainer with the four roles on ``ctx.model``."""
    from transformers import TrainingArguments

    from adapterhub.training.ppo.trainer import PPOSettings, PPOTrainer
    from adapterhub.training.reward_model import load_reward_scorer

    recipe = ctx.recipe
    assert isinstance(recipe, PPORecipe) and ctx.prepared is not None
    p = recipe.ppo
    model = ctx.model
    scorer = load_reward_scorer(
        ctx.registry,
        p.reward_model,
        model,
        ctx.tokenizer,
        base_fingerprint=ctx.base.info.fingerprint,
        template_hash=ctx.base.info.template_hash,
        max_length=recipe.training.max_length,
    )
    reference = None
    if ctx.parent_dir is not None:
        model.load_adapter(str(ctx.parent_dir), adapter_name=REFERENCE, is_trainable=False)
        reference = REFERENCE
    else:
        ctx.say(
            "ppo: no parent given, so the KL reference is the bare base; name an SFT version as "
            "parent: for the usual SFT -> reward -> PPO chain"
        )
    value_head = add_value_adapter(model, ctx.registry, scorer)
    model.set_adapter("default")
    args = TrainingArguments(
        **{
            **ctx.args,
            "gradient_accumulation_steps": 1,  # PPO's own minibatches replace accumulation
            "include_num_input_tokens_seen": "no",  # the rollout counts its tokens itself
        },
        remove_unused_columns=False,
    )
    settings = PPOSettings(
        kl_coef=p.kl_coef,
        gamma=p.gamma,
        lam=p.lam,
        clip_range=p.clip_range,
        clip_range_value=p.clip_range_value,
        vf_coef=p.vf_coef,
        ppo_epochs=p.ppo_epochs,
        num_minibatches=p.num_minibatches,
        whiten_rewards=p.whiten_rewards,
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        missing_eos_penalty=p.missing_eos_penalty,
    )
    return PPOTrainer(
        value_head=value_head,
        scorer=scorer,
        reference_adapter=reference,
        settings=settings,
        eos_token_ids=ctx.base.eos_token_ids,
        args=args,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="ppo",
    recipe=PPORecipe,
    formats=("prompt_only",),
    build_trainer=build_trainer,
    prepare=prepare,
    single_process="its rollouts differ in length per process, so the ranks' minibatch updates would not line up",
    description="PPO against a reward-model version; KL to the parent; policy, value, reward, "
    "reference all adapters on the one base",
)
