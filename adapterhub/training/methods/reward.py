"""Reward model: a LoRA adapter plus a scalar score head on the same base, from preference pairs.

The Bradley-Terry reward model of Ziegler et al. 2019 and Ouyang et al. 2022 (loss
``-log σ(r(x, y_chosen) - r(x, y_rejected))``), through TRL's ``RewardTrainer``. The runner sees
``task_type="SEQ_CLS"`` and builds the model with
:func:`adapterhub.training.reward_model.attach_score_lora`: ``AutoModelForSequenceClassification``
over the *same* frozen trunk (no second copy of the base), a fresh LoRA, and the score head kept
trainable through PEFT's ``modules_to_save``, so ``save_pretrained`` writes the head into the
version's ``adapter_model.safetensors`` beside the LoRA (it shows up in
``LoraAdapter.extra_tensors``). :func:`adapterhub.training.reward_model.load_reward_scorer` turns
such a version into a scorer for GRPO and PPO.

Metrics: ``accuracy`` (share of pairs ranked right) and ``margin`` (mean chosen-minus-rejected
score), on the training batches and the eval split.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.preference import prepare_preference, render_pair
from adapterhub.training.recipe import RecipeBase, RecipeSection


class RewardConfig(RecipeSection):
    """The ``reward:`` section of a recipe."""

    center_rewards_coefficient: float | None = Field(default=0.01, ge=0, le=10)
    """Weight of a penalty on the mean squared score, which keeps scores centred on 0
    (Eisenstein et al. 2023); unset turns it off."""


class RewardRecipe(RecipeBase):
    """A recipe with ``method: reward``."""

    method: Literal["reward"]  # type: ignore[assignment]
    """A reward model (LoRA + score head)."""
    reward: RewardConfig = Field(default_factory=RewardConfig)
    """Reward-model settings."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's RewardTrainer (the only place TRL's reward-model objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, RewardRecipe) and ctx.prepared is not None
    config = trl.RewardConfig(
        **ctx.args,
        max_length=recipe.training.max_length,
        center_rewards_coefficient=recipe.reward.center_rewards_coefficient,
        dataset_num_proc=None,
    )
    return trl.RewardTrainer(
        args=config,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="reward",
    recipe=RewardRecipe,
    formats=("preference",),
    build_trainer=build_trainer,
    prepare=prepare_preference,
    render_example=render_pair,
    task_type="SEQ_CLS",
    description="reward model: LoRA + scalar score head trained on preference pairs",
)
