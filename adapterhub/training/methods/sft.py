"""SFT: supervised fine-tuning on conversations or prompt/completion pairs.

Data is tokenized here, not by TRL: every example goes through the chat-template gates of
:mod:`adapterhub.training.templates`, which render it with the base's template and produce the
loss mask (assistant tokens and their end-of-turn only). TRL's ``SFTTrainer`` then receives
ready ``input_ids``/``labels`` and adds batching (padding-free by default), its fused LM-head loss
and the training loop. TRL objects are built in :func:`build_trainer` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from adapterhub.errors import ConfigError
from adapterhub.training.methods.interface import Method, MethodContext, PrepareContext
from adapterhub.training.recipe import RecipeBase, RecipeSection
from adapterhub.training.templates import (
    RenderedExample,
    check_content,
    render_with_mask,
    to_conversation,
)

if TYPE_CHECKING:
    import datasets

    from adapterhub.training.datasets import PreparedData


class SFTConfig(RecipeSection):
    """The ``sft:`` section of a recipe."""

    last_turn_only: bool = False
    """In multi-turn conversations, only the last assistant turn carries loss (default: all)."""
    loss_type: Literal["nll", "dft"] = "nll"
    """nll: cross-entropy; dft: Dynamic Fine-Tuning (each token's loss weighted by its probability)."""
    neftune_noise_alpha: float | None = Field(default=None, gt=0, le=100)
    """Add NEFTune noise of this scale to the embeddings during training (off when unset)."""


class SFTRecipe(RecipeBase):
    """A recipe with ``method: sft``."""

    method: Literal["sft"]  # type: ignore[assignment]
    """Supervised fine-tuning."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """SFT settings."""


def render_example(ctx: PrepareContext, row: Mapping[str, Any], where: str = "example") -> RenderedExample:
    """One dataset row rendered with the base's template and its loss mask (all gates applied)."""
    recipe = ctx.recipe
    assert isinstance(recipe, SFTRecipe)  # the runner pairs each method with its own recipe class
    messages, loss_from = to_conversation(row, ctx.data.format)
    check_content(ctx.tokenizer, messages, where=where)
    return render_with_mask(
        ctx.tokenizer,
        messages,
        eot_ids=ctx.eot_token_ids,
        loss_from=loss_from,
        last_turn_only=recipe.sft.last_turn_only,
        max_length=recipe.training.max_length,
        where=where,
    )


def prepare(ctx: PrepareContext) -> PreparedData:
    """Tokenize and gate every example into ``input_ids`` and ``labels``; drop those left without
    loss tokens by truncation.

    Raises:
        ConfigError: a gate failed (the message names the example), or truncation left nothing.
    """
    import datasets

    def tokenize(part: datasets.Dataset, label: str) -> datasets.Dataset:
        rows = []
        for index, row in enumerate(part):
            example = render_example(ctx, row, where=f"{label} example {index + 1}")
            if example.num_loss_tokens == 0:
                continue
            rows.append({"input_ids": list(example.input_ids), "labels": example.labels})
        if not rows:
            raise ConfigError(
                f"dataset: every {label} example lost all its assistant tokens to truncation at "
                f"training.max_length={ctx.recipe.training.max_length}; raise training.max_length"
            )
        return datasets.Dataset.from_list(rows)

    return ctx.data.map_splits(tokenize)


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's SFTTrainer over the prepared data (the only place TRL's SFT objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, SFTRecipe) and ctx.prepared is not None
    args = dict(ctx.args)
    if recipe.training.packing:  # padding-free rows hold no pad tokens: every input token is real
        args["include_num_input_tokens_seen"] = "all"
    config = trl.SFTConfig(
        **args,
        # Examples arrive tokenized and truncated; padding-free batching needs max_length unset.
        max_length=None if recipe.training.packing else recipe.training.max_length,
        padding_free=recipe.training.packing,
        packing=False,
        loss_type=recipe.sft.loss_type,
        neftune_noise_alpha=recipe.sft.neftune_noise_alpha,
        completion_only_loss=False,  # labels already mask everything but assistant tokens
        dataset_num_proc=None,
    )
    return trl.SFTTrainer(
        args=config,
        **ctx.trainer_inputs(),
    )


METHOD = Method(
    name="sft",
    recipe=SFTRecipe,
    formats=("messages", "prompt_completion"),
    build_trainer=build_trainer,
    prepare=prepare,
    render_example=render_example,
    description="supervised fine-tuning on conversations or prompt/completion pairs",
)
