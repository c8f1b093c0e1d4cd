"""Preference pairs for DPO, ORPO, SimPO and the reward model: one preparation for all four; and
unpaired preferences (one answer with a thumb up or down) for KTO, prepared the same way.

TRL's preference trainers tokenize ``prompt``/``chosen``/``rejected`` themselves, applying the chat
template only to *conversational* rows; a plain-string row would be tokenized as raw text and the
adapter trained on a rendering that serving never produces. So every row is made conversational
here (a string prompt becomes one user turn, a string answer one assistant turn, as everywhere in
adapterhub), message contents are checked for pre-rendered special tokens, and each pair is run
through the chat-template gate once (prompt + chosen, loss on the answer) so a template that would
mis-render the answer fails before the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapterhub.errors import ConfigError
from adapterhub.training.templates import (
    RenderedExample,
    as_messages,
    check_content,
    render_with_mask,
)

if TYPE_CHECKING:
    import datasets

    from adapterhub.training.datasets import PreparedData
    from adapterhub.training.methods.interface import PrepareContext

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion")


def conversational_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A pair with string columns turned into chat messages (prompt: user, answers: assistant)."""
    return {
        column: as_messages(row[column], "user" if column == "prompt" else "assistant")
        for column in PREFERENCE_COLUMNS
    }


def render_pair(
    ctx: PrepareContext, row: Mapping[str, Any], *, where: str = "example"
) -> RenderedExample:
    """Prompt + chosen answer rendered with the base's template; the answer carries the mask."""
    return _render_answer(ctx, conversational_row(row), PREFERENCE_COLUMNS, "chosen", where)


def _render_answer(
    ctx: PrepareContext, messages: Mapping[str, Any], columns: tuple[str, ...], answer: str, where: str
) -> RenderedExample:
    """``columns`` checked for pre-rendered special tokens, then prompt + ``answer`` rendered with
    the base's template, the answer carrying the loss mask (the chat-template gate)."""
    for column in columns:
        check_content(ctx.tokenizer, messages[column], where=f"{where} ({column})")
    return render_with_mask(
        ctx.tokenizer,
        messages["prompt"] + messages[answer],
        eot_ids=ctx.eot_token_ids,
        loss_from=len(messages["prompt"]),
        max_length=ctx.recipe.training.max_length,
        where=where,
    )


def prepare_preference(ctx: PrepareContext) -> PreparedData:
    """Gate every pair and make every row conversational.

    Raises:
        ConfigError: a pair holds special tokens or the template fails a gate (names the pair).
    """
    return _gated(ctx, conversational_row, PREFERENCE_COLUMNS, "chosen", "pair")


def _gated(
    ctx: PrepareContext, to_messages: Any, columns: tuple[str, ...], answer: str, noun: str
) -> PreparedData:
    """Every row made conversational once, then gated (:func:`_render_answer`) as it will train."""
    import datasets

    def convert(part: datasets.Dataset, label: str) -> datasets.Dataset:
        rows = []
        for index, row in enumerate(part):
            messages = to_messages(row)
            _render_answer(ctx, messages, columns, answer, f"{label} {noun} {index + 1}")
            rows.append(messages)
        return datasets.Dataset.from_list(rows)

    return ctx.data.map_splits(convert)


def conversational_unpaired(row: Mapping[str, Any]) -> dict[str, Any]:
    """An unpaired row with its text columns as chat messages, and its label."""
    return {"prompt": as_messages(row["prompt"], "user"), "completion": as_messages(row["completion"], "assistant"),
            "label": bool(row["label"])}


def render_unpaired(
    ctx: PrepareContext, row: Mapping[str, Any], *, where: str = "example"
) -> RenderedExample:
    """Prompt + the judged answer rendered with the base's template; the answer carries the mask."""
    return _render_answer(ctx, conversational_unpaired(row), UNPAIRED_COLUMNS, "completion", where)


def prepare_unpaired(ctx: PrepareContext) -> PreparedData:
    """Gate every judged answer and make every row conversational; KTO needs both labels.

    Raises:
        ConfigError: a row holds special tokens, the template fails a gate, or the training set
            has only desirable or only undesirable answers.
    """
    labels = {bool(row["label"]) for row in ctx.data.train}
    if len(labels) < 2:
        kind = "desirable (label true)" if True in labels else "undesirable (label false)"
        raise ConfigError(f"dataset: every training example is {kind}; KTO learns from both kinds, "
                          "add answers with the other label")
    return _gated(ctx, conversational_unpaired, UNPAIRED_COLUMNS, "completion", "example")
