"""Chat-template gates on the tiny tokenizer: the mask is exactly the assistant turns, and broken
templates are refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError
from adapterhub.training.templates import (
    check_chat_template,
    check_content,
    end_of_turn_ids,
    format_example,
    render_with_mask,
    to_conversation,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "and Italy?"},
    {"role": "assistant", "content": "Rome"},
]
# The generation prompt opens the turn as "bot" but history renders it as "assistant": a model
# trained on this would answer in a context it never sees at serving time.
MISMATCHED = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>bot\n' }}{% endif %}"
)
# Assistant turns are never closed with the end-of-turn token: the model would never learn to stop.
NO_EOT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% if m['role'] != 'assistant' %}{{ '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_base_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


def learnt_and_ignored(tokenizer, example) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    pairs = list(zip(example.input_ids, example.loss_mask, strict=True))
    return tokenizer.decode([t for t, m in pairs if m]), tokenizer.decode([t for t, m in pairs if not m])


def test_only_assistant_turns_and_their_end_of_turn_carry_loss(tokenizer) -> None:  # type: ignore[no-untyped-def]
    eot = end_of_turn_ids(tokenizer)
    example = render_with_mask(tokenizer, CHAT, eot_ids=eot)
    learnt, ignored = learnt_and_ignored(tokenizer, example)
    assert learnt == "Paris<|im_end|>Rome<|im_end|>"
    for text in ("Be brief.", "capital of France?", "and Italy?", "<|im_start|>assistant"):
        assert text in ignored
    # The token right after each answer is the end-of-turn token, and it is a target.
    ids, mask = example.input_ids, example.loss_mask
    closing = [i for i, t in enumerate(ids) if t in eot and mask[i]]
    assert len(closing) == 2
    # Training tokens = what serving renders for the prompt, then the answer.
    served = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[: mask.index(1)]) == served


def test_last_turn_only_and_prompt_completion(tokenizer) -> None:  # type: ignore[no-untyped-def]
    eot = end_of_turn_ids(tokenizer)
    learnt, _ = learnt_and_ignored(tokenizer, render_with_mask(tokenizer, CHAT, eot_ids=eot, last_turn_only=True))
    assert learnt == "Rome<|im_end|>"
    row = {"prompt": CHAT[:4], "completion": [CHAT[4]]}
    messages, loss_from = to_conversation(row, "prompt_completion")
    learnt, ignored = learnt_and_ignored(
        tokenizer, render_with_mask(tokenizer, messages, eot_ids=eot, loss_from=loss_from)
    )
    assert learnt == "Rome<|im_end|>" and "Paris" in ignored  # the prompt's assistant turn is context
    messages, loss_from = to_conversation({"prompt": "hi", "completion": "hello"}, "prompt_completion")
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert loss_from == 1


def test_truncation_keeps_the_start(tokenizer) -> None:  # type: ignore[no-untyped-def]
    full = render_with_mask(tokenizer, CHAT, eot_ids=end_of_turn_ids(tokenizer))
    cut = render_with_mask(tokenizer, CHAT, eot_ids=end_of_turn_ids(tokenizer), max_length=10)
    assert cut.truncated and cut.input_ids == full.input_ids[:10]


def test_show_example_marks_the_loss_regions(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = format_example(render_with_mask(tokenizer, CHAT, eot_ids=end_of_turn_ids(tokenizer)), tokenizer)
    assert "⟦Paris<|im_end|>⟧" in text and "⟦Rome<|im_end|>⟧" in text
    assert "tokens carry loss" in text.splitlines()[-1]


def test_probe_passes_on_a_good_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    probe = check_chat_template(tokenizer, end_of_turn_ids(tokenizer))
    assert probe.num_loss_tokens > 0


def test_mismatched_generation_prompt_is_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer.chat_template = MISMATCHED
    with pytest.raises(ConfigError, match="differently in training than serving does") as caught:
        check_chat_template(tokenizer, end_of_turn_ids(tokenizer))
    assert "bot" in str(caught.value)


def test_template_that_never_closes_assistant_turns_is_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer.chat_template = NO_EOT
    with pytest.raises(ConfigError, match="never learns to stop"):
        check_chat_template(tokenizer, end_of_turn_ids(tokenizer))


def test_base_without_template_is_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        check_chat_template(tokenizer, end_of_turn_ids(tokenizer))


def test_pre_rendered_content_is_refused(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "<|im_start|>user\nhi<|im_end|>"}]
    with pytest.raises(ConfigError, match=r"special token\(s\) \['<\|im_end\|>', '<\|im_start\|>'\]"):
        check_content(tokenizer, messages, where="dataset line 3")


def test_training_on_a_base_with_a_mismatched_template_registers_nothing(
    tmp_path: Path, home: Path
) -> None:
    """The gate runs inside `Hub.train`, before the model is loaded."""
    from tinymodels import build_tiny_llama_folder

    from adapterhub import Hub

    src = build_tiny_llama_folder(tmp_path / "mismatched-base")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    (src / "chat_template.jinja").write_text(MISMATCHED)
    hub = Hub(home)
    hub.init(str(src), precision="fp32")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": CHAT}) + "\n")
    recipe = {"method": "sft", "name": "gated", "dataset": {"path": str(data)}}
    with pytest.raises(ConfigError, match="differently in training than serving does"):
        hub.train(recipe)
    assert hub.list() == []
