"""DPO: direct preference optimisation from an SFT parent, with that parent as the reference.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model" (arXiv:2305.18290), through TRL's ``DPOTrainer``.

**The reference is the parent, not the bare base.** A DPO run normally continues from an SFT
version (``parent:``). The runner loads the parent's LoRA as the trainable adapter ``default``;
TRL, given a ``PeftModel`` that already carries an adapter and no ``ref_model``, adds a frozen
copy of it named ``ref`` and computes reference log-probs with that adapter active. So the
reference is exactly the parent, at no extra memory (one more LoRA, not one more model). Starting
from the bare base instead would measure KL against a model the policy never was (the high
initial KL that TRL and LLaMA-Factory users trip over). Without a parent the fresh adapter starts
at zero (B = 0), so its frozen copy *is* the base and the reference is the base, as it should be.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adapterhub.training.methods.interface import Method, MethodContext
from adapterhub.training.preference import prepare_preference, render_pair
from adapterhub.training.recipe import RecipeBase, RecipeSection

DPOLossType = Literal[
    "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down"
]


class DPOConfig(RecipeSection):
    """The ``dpo:`` section of a recipe."""

    beta: float = Field(default=0.1, gt=0, le=10)
    """Strength of the pull to the reference (the parent): higher stays closer to it."""
    loss_type: DPOLossType = "sigmoid"
    """sigmoid: the DPO paper's loss; hinge (SLiC), ipo, robust, bco_pair, sppo_hard, nca_pair,
    apo_zero, apo_down: TRL's variants."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Assumed share of flipped preference labels (robust DPO, conservative DPO)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference's log-probs once over the data before training instead of at every
    step: the same numbers (the reference is frozen), one forward pass less per step."""


class DPORecipe(RecipeBase):
    """A recipe with ``method: dpo``."""

    method: Literal["dpo"]  # type: ignore[assignment]
    """Direct preference optimisation."""
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    """DPO settings."""


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's DPOTrainer (the only place TRL's DPO objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, DPORecipe) and ctx.prepared is not None
    if ctx.parent is None:
        ctx.say(
            "dpo: no parent given, so the reference policy is the bare base; name an SFT version "
            "as parent: for the usual SFT -> DPO chain"
        )
    config = trl.DPOConfig(
        **ctx.args,
        beta=recipe.dpo.beta,
        loss_type=[recipe.dpo.loss_type],
        label_smoothing=recipe.dpo.label_smoothing,
        precompute_ref_log_probs=recipe.dpo.precompute_ref_log_probs,
        max_length=recipe.training.max_length,
        truncation_mode="keep_start",
        padding_free=False,
        dataset_num_proc=None,
    )
    return trl.DPOTrainer(
        ref_model=None,  # the frozen copy of the starting adapter ("ref") is the reference
        args=config,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="dpo",
    recipe=DPORecipe,
    formats=("preference",),
    build_trainer=build_trainer,
    prepare=prepare_preference,
    render_example=render_pair,
    description="direct preference optimisation; the parent (an SFT version) is the frozen reference",
)
