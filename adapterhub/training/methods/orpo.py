"""ORPO: odds-ratio preference optimisation, SFT and preference in one loss, no reference model.

Hong, Lee, Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv:2403.07691), through TRL's ``trl.experimental.orpo.ORPOTrainer`` (TRL moved it to
``experimental``; the pin ``trl==1.16.0`` keeps this import stable). The loss is the chosen
answer's NLL plus ``beta`` times the log-sigmoid of the log odds ratio of chosen over rejected, so
it can start from the bare base or from a parent; either way nothing else is held in memory.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.preference import prepare_preference, render_pair
from adapterhub.training.recipe import RecipeBase, RecipeSection


class ORPOConfig(RecipeSection):
    """The ``orpo:`` section of a recipe."""

    beta: float = Field(default=0.1, gt=0, le=10)
    """λ of the paper: weight of the odds-ratio term against the chosen answer's NLL."""
    max_completion_length: int | None = Field(default=None, ge=8, le=131072)
    """Truncate answers to this many tokens (default: only training.max_length applies)."""


class ORPORecipe(RecipeBase):
    """A recipe with ``method: orpo``."""

    method: Literal["orpo"]  # type: ignore[assignment]
    """Odds-ratio preference optimisation."""
    orpo: ORPOConfig = Field(default_factory=ORPOConfig)
    """ORPO settings."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's experimental ORPOTrainer (the only place TRL's ORPO objects are built)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
    from trl.experimental.orpo import ORPOTrainer

    recipe = ctx.recipe
    assert isinstance(recipe, ORPORecipe) and ctx.prepared is not None
    config = TRLORPOConfig(
        **ctx.args,
        beta=recipe.orpo.beta,
        max_length=recipe.training.max_length,
        max_completion_length=recipe.orpo.max_completion_length,
        remove_unused_columns=False,
        dataset_num_proc=None,
    )
    return ORPOTrainer(
        args=config,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="orpo",
    recipe=ORPORecipe,
    formats=("preference",),
    build_trainer=build_trainer,
    prepare=prepare_preference,
    render_example=render_pair,
    description="odds-ratio preference optimisation (SFT + preference in one loss, no reference)",
)
