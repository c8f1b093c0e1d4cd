"""Chat-template gates: render training data exactly as serving will, and prove the loss mask right.

The seed's most common SFT failure is a template mismatch: the model is trained on text rendered
one way and served with another, or never sees the end-of-turn token as a target and so never
learns to stop. Both train with a healthy-looking loss and fail only at inference. So before a
run spends any compute, every conversation is rendered with the **base's own** chat template and
checked:

* **Inference context = training context.** For each assistant turn, the tokens of the prompt as
  serving renders it (``add_generation_prompt=True``) must be a prefix of the training tokens, and
  each turn's rendering must be a prefix of the whole conversation's.
* **End of turn is a target.** The end-of-turn token (the tokenizer's eos and the generation
  config's eos ids) must close each assistant turn *inside* the loss mask.
* **Only assistant tokens carry loss.** The mask covers assistant turns only (only the completion
  for prompt/completion data); system, user and template tokens are never targets.
* **Data is not pre-rendered.** Message contents may not contain the tokenizer's special tokens
  (a sign the data was rendered with some template already).

Design choice: masks are computed at the token level by tokenizing prefixes (the same
tokenization serving does), not with ``{% generation %}`` markers, so any base's template works
without a patched training template, and a template that breaks the prefix property is refused
with both renderings shown rather than silently re-aligned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError

Message = Mapping[str, str]
_PROBE = (
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
)


@dataclass(frozen=True)
class RenderedExample:
    """One example as the trainer sees it: token ids and which of them carry loss."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]  # 1 where the token is a training target
    truncated: bool = False

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def labels(self) -> list[int]:
        """``input_ids`` with non-target positions set to -100 (the ignore index)."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.loss_mask, strict=True)]


def end_of_turn_ids(tokenizer: Any, base_path: Path | None = None) -> tuple[int, ...]:
    """Token ids that end an assistant turn: the tokenizer's eos and the generation config's eos ids."""
    ids = {tokenizer.eos_token_id}
    if base_path is not None and (Path(base_path) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        configured = GenerationConfig.from_pretrained(base_path).eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
    return tuple(sorted(i for i in ids if i is not None))


def as_messages(value: str | Sequence[Message], role: str) -> list[dict[str, str]]:
    """A prompt or answer as chat messages: a plain string becomes one turn of ``role``; a list
    keeps each message's role and content only."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def chat_token_ids(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False
) -> list[int]:
    """``messages`` tokenized by the base's chat template (``apply_chat_template``)."""
    ids = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding since v5


def to_conversation(row: Mapping[str, Any], fmt: str) -> tuple[list[dict[str, str]], int]:
    """A dataset row as chat messages, plus the index of the first message that may carry loss.

    Plain-string prompts become one user turn and completions one assistant turn.
    """
    if fmt == "messages":
        return [dict(m) for m in row["messages"]], 0
    prompt_msgs = as_messages(row["prompt"], "user")
    if fmt == "prompt_only":
        return prompt_msgs, len(prompt_msgs)
    completion = row["completion"] if fmt == "prompt_completion" else row["chosen"]
    return prompt_msgs + as_messages(completion, "assistant"), len(prompt_msgs)


def _render(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
        )
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    # Like apply_chat_template(tokenize=True): the template writes its own special tokens.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_with_mask(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    eot_ids: Iterable[int],
    loss_from: int = 0,
    last_turn_only: bool = False,
    max_length: int | None = None,
    where: str = "example",
) -> RenderedExample:
    """Render a conversation with the base's template and mark the assistant tokens that carry loss.

    Args:
        messages: the conversation.
        eot_ids: end-of-turn token ids (see :func:`end_of_turn_ids`).
        loss_from: assistant turns before this message index carry no loss (the prompt of
            prompt/completion data).
        last_turn_only: only the last assistant turn carries loss.
        max_length: keep at most this many tokens (from the start).
        where: names the example in error messages (``dataset line 12``).

    Raises:
        ConfigError: a gate failed; the message shows what the template rendered and how to fix it.
    """
    eot = set(eot_ids)
    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    full = _encode(tokenizer, full_text)
    mask = [0] * len(full)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= loss_from]
    if last_turn_only:
        turns = turns[-1:]
    if not turns:
        raise ConfigError(f"{where}: no assistant turn carries loss; add an assistant reply to train on")
    for i in turns:
        prompt_text = _render(tokenizer, messages[:i], add_generation_prompt=True)
        turn_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        prompt_ids, turn_ids = _encode(tokenizer, prompt_text), _encode(tokenizer, turn_text)
        if turn_ids[: len(prompt_ids)] != prompt_ids:
            raise ConfigError(
                f"{where}: the base's chat template renders assistant turn {i} differently in training "
                f"than serving does. Serving prompt ends {prompt_text[-60:]!r}; training text has "
                f"{turn_text[len(prompt_text) - 60 : len(prompt_text) + 20]!r}. A model trained so "
                "answers in the wrong context; use a base whose template renders the generation "
                "prompt as the start of the assistant turn (re-run `adapterhub init` with it)"
            )
        if full[: len(turn_ids)] != turn_ids:
            raise ConfigError(
                f"{where}: the base's chat template is not prefix-preserving: the conversation up to "
                f"turn {i} renders as {turn_text[-60:]!r}, but inside the whole conversation as "
                f"{full_text[len(turn_text) - 60 : len(turn_text)]!r}. Use a base whose template "
                "renders earlier turns the same whatever follows"
            )
        span = range(len(prompt_ids), len(turn_ids))
        closing = [p for p in span if full[p] in eot]
        if not closing:
            names = [tokenizer.convert_ids_to_tokens(t) for t in sorted(eot)]
            raise ConfigError(
                f"{where}: the base's chat template does not close assistant turn {i} with an "
                f"end-of-turn token {names!r} (turn renders as {turn_text[len(prompt_text):][-60:]!r}); "
                "a model trained on it never learns to stop. Use a base whose template ends each "
                "assistant turn with its eos token"
            )
        for p in range(span.start, closing[-1] + 1):
            mask[p] = 1
    truncated = max_length is not None and len(full) > max_length
    if truncated:
        full, mask = full[:max_length], mask[:max_length]
    return RenderedExample(input_ids=tuple(full), loss_mask=tuple(mask), truncated=truncated)


def check_content(tokenizer: Any, messages: Sequence[Message], *, where: str) -> None:
    """Refuse message contents that contain the tokenizer's special tokens (pre-rendered data).

    Raises:
        ConfigError: names the token and the message.
    """
    specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
    specials = {s for s in specials if len(s) > 1}
    for index, message in enumerate(messages):
        found = sorted(s for s in specials if s in message["content"])
        if found:
            raise ConfigError(
                f"{where}: message {index} ({message['role']}) contains the special token(s) {found!r}, "
                "so the data looks already rendered with a chat template. Give plain message text; "
                "adapterhub renders it with the base's own template"
            )


def check_chat_template(tokenizer: Any, eot_ids: Iterable[int]) -> RenderedExample:
    """Gate the base's chat template on a probe conversation before touching the data.

    Returns:
        The probe rendered with its mask (handy in tests).

    Raises:
        ConfigError: the base has no chat template, or a gate failed.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the base's tokenizer has no chat template, so conversations cannot be rendered as serving "
            "renders them; use a chat (instruct) base, e.g. `adapterhub init` with the default base"
        )
    eot_ids = tuple(eot_ids)
    if not eot_ids:
        raise ConfigError("the base defines no eos token, so no end-of-turn can be trained; set eos_token")
    probe = render_with_mask(tokenizer, list(_PROBE), eot_ids=eot_ids, where="probe conversation")
    learnt = tokenizer.decode([t for t, m in zip(probe.input_ids, probe.loss_mask, strict=True) if m])
    ignored = tokenizer.decode([t for t, m in zip(probe.input_ids, probe.loss_mask, strict=True) if not m])
    problems = [
        f"assistant text {m['content']!r} is not in the loss mask"
        for m in _PROBE
        if m["role"] == "assistant" and m["content"] not in learnt
    ] + [
        f"user text {m['content']!r} carries loss"
        for m in _PROBE
        if m["role"] == "user" and m["content"] not in ignored
    ]
    if problems:
        raise ConfigError([f"chat-template gate: {p}" for p in problems])
    return probe


def example_segments(example: RenderedExample, tokenizer: Any) -> list[tuple[str, bool]]:
    """The example's text in runs of (text, carries_loss), for display."""
    segments: list[tuple[str, bool]] = []
    run: list[int] = []
    current = bool(example.loss_mask[0]) if example.loss_mask else False
    for token, m in zip(example.input_ids, example.loss_mask, strict=True):
        if bool(m) != current and run:
            segments.append((tokenizer.decode(run), current))
            run = []
        current = bool(m)
        run.append(token)
    if run:
        segments.append((tokenizer.decode(run), current))
    return segments


def format_example(example: RenderedExample, tokenizer: Any) -> str:
    """Plain-text view of an example: loss-carrying text between ⟦ and ⟧, plus counts."""
    body = "".join(f"⟦{text}⟧" if loss else text for text, loss in example_segments(example, tokenizer))
    note = " (truncated to max_length)" if example.truncated else ""
    return (
        f"{body}\n-- {example.num_loss_tokens} of {len(example.input_ids)} tokens carry loss "
        f"(marked ⟦ ⟧){note}"
    )
