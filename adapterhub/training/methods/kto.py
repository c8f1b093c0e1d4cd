"""KTO: Kahneman-Tversky optimisation from unpaired thumbs up and down, with the parent as reference.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv:2402.01306), through TRL's ``KTOTrainer``. Each example is one answer to a prompt with a
label: true (desirable) or false (undesirable); no pair is needed, so a single thumb from the TUI
or an API client is training data. As for DPO, the trainable adapter starts from the parent and
TRL compares against a frozen copy of it (``ref``): the reference is the parent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.preference import prepare_unpaired, render_unpaired
from adapterhub.training.recipe import RecipeBase, RecipeSection


class KTOConfig(RecipeSection):
    """The ``kto:`` section of a recipe."""

    beta: float = Field(default=0.1, gt=0, le=10)
    """Strength of the pull to the reference (the parent): higher stays closer to it."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's loss; apo_zero_unpaired: APO-zero on unpaired data."""
    desirable_weight: float = Field(default=1.0, gt=0, le=100)
    """Weight of the desirable answers' losses (raise it when they are the fewer)."""
    undesirable_weight: float = Field(default=1.0, gt=0, le=100)
    """Weight of the undesirable answers' losses (the paper keeps weight x count within 1-4/3 of
    the other side's)."""


class KTORecipe(RecipeBase):
    """A recipe with ``method: kto``."""

    method: Literal["kto"]  # type: ignore[assignment]
    """Kahneman-Tversky optimisation."""
    kto: KTOConfig = Field(default_factory=KTOConfig)
    """KTO settings."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's KTOTrainer (the only place TRL's KTO objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, KTORecipe) and ctx.prepared is not None
    if ctx.parent is None:
        ctx.say("kto: no parent given, so the reference policy is the bare base; name an SFT version "
                "as parent: for the usual SFT -> KTO chain")
    config = trl.KTOConfig(
        **ctx.args,
        beta=recipe.kto.beta,
        loss_type=recipe.kto.loss_type,
        desirable_weight=recipe.kto.desirable_weight,
        undesirable_weight=recipe.kto.undesirable_weight,
        max_length=recipe.training.max_length,
        dataset_num_proc=None,
    )
    return trl.KTOTrainer(ref_model=None, args=config, **ctx.trainer_inputs())


METHOD = Method(
    name="kto",
    recipe=KTORecipe,
    formats=("unpaired_preference",),
    build_trainer=build_trainer,
    prepare=prepare_unpaired,
    render_example=render_unpaired,
    description="Kahneman-Tversky optimisation from single answers marked desirable or not; the parent is the reference",
)
