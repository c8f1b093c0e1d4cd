"""RLOO: REINFORCE with a leave-one-out baseline, over the same reward functions as GRPO.

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs" (arXiv:2402.14740), through TRL's ``RLOOTrainer``. Like GRPO it samples
``num_generations`` completions per prompt and needs no value model; a completion's baseline is
the mean reward of the *other* completions of its prompt. Prompts, rewards, batch sizes (counted
in prompts) and the KL reference (the parent) work exactly as in :mod:`.grpo`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.grpo import (
    SampledRewardsConfig,
    prepare,
    reward_functions,
    sampling_arguments,
)
from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.recipe import RecipeBase


class RLOOConfig(SampledRewardsConfig):
    """The ``rloo:`` section of a recipe."""

    beta: float = Field(default=0.05, ge=0, le=10)
    """KL penalty to the reference (the parent, or the base without one); 0 turns it off."""
    normalize_advantages: bool = False
    """Scale each generation batch's advantages to mean 0 and standard deviation 1."""


class RLOORecipe(RecipeBase):
    """A recipe with ``method: rloo``."""

    method: Literal["rloo"]  # type: ignore[assignment]
    """REINFORCE leave-one-out."""
    rloo: RLOOConfig
    """RLOO settings (``rewards`` is required)."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's RLOOTrainer with the recipe's reward functions (the only place TRL's RLOO objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, RLOORecipe) and ctx.prepared is not None
    functions, weights = reward_functions(ctx)
    config = trl.RLOOConfig(**sampling_arguments(ctx, weights), normalize_advantages=recipe.rloo.normalize_advantages)
    return trl.RLOOTrainer(reward_funcs=functions, args=config, **ctx.trainer_inputs())


METHOD = Method(
    name="rloo",
    recipe=RLOORecipe,
    formats=("prompt_only",),
    build_trainer=build_trainer,
    prepare=prepare,
    description="REINFORCE with a leave-one-out baseline over recipe reward functions (no value model)",
)
