"""SimPO: simple preference optimisation with a length-normalised reward and no reference model.

Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv:2405.14734). TRL has no SimPO trainer of its own: SimPO is its CPO trainer
(``trl.experimental.cpo.CPOTrainer``) with ``loss_type="simpo"`` and ``cpo_alpha=0`` (no
behaviour-cloning term), which gives the paper's loss
``-log σ(β/|y_w| log π(y_w|x) - β/|y_l| log π(y_l|x) - γ)``. Both switches are fixed here, not
recipe fields, so a "simpo" recipe is always SimPO.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.preference import prepare_preference, render_pair
from adapterhub.training.recipe import RecipeBase, RecipeSection


class SimPOConfig(RecipeSection):
    """The ``simpo:`` section of a recipe."""

    beta: float = Field(default=2.0, gt=0, le=20)
    """Scale of the length-normalised reward (the paper uses 2.0-2.5)."""
    gamma: float = Field(default=1.0, ge=0, le=20)
    """Target reward margin between chosen and rejected (the paper's γ; γ/β ≈ 0.5 works well)."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Assumed share of flipped preference labels."""
    max_completion_length: int | None = Field(default=None, ge=8, le=131072)
    """Truncate answers to this many tokens (default: only training.max_length applies)."""


class SimPORecipe(RecipeBase):
    """A recipe with ``method: simpo``."""

    method: Literal["simpo"]  # type: ignore[assignment]
    """Simple preference optimisation."""
    simpo: SimPOConfig = Field(default_factory=SimPOConfig)
    """SimPO settings."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's experimental CPOTrainer set to SimPO (the only place these TRL objects are built)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    recipe = ctx.recipe
    assert isinstance(recipe, SimPORecipe) and ctx.prepared is not None
    config = CPOConfig(
        **ctx.args,
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=recipe.simpo.beta,
        simpo_gamma=recipe.simpo.gamma,
        label_smoothing=recipe.simpo.label_smoothing,
        max_length=recipe.training.max_length,
        max_completion_length=recipe.simpo.max_completion_length,
        remove_unused_columns=False,
        dataset_num_proc=None,
    )
    return CPOTrainer(
        args=config,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="simpo",
    recipe=SimPORecipe,
    formats=("preference",),
    build_trainer=build_trainer,
    prepare=prepare_preference,
    render_example=render_pair,
    description="SimPO (TRL's CPO trainer with the SimPO loss): length-normalised, no reference",
)
