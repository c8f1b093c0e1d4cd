"""The compare screen: one prompt, the base and up to four adapters, answers side by side.

Every column gets the same prompt and the same sampling settings and streams through its own
worker, so a fast column never waits for a slow one (the in-process engine batches them into one
forward pass anyway). Each column shows its token count, tokens/s and time to first token.

Voting closes the loop: key ``N`` says "column N is best" and stores one preference pair per
other column (with two columns that is the pairwise "left/right is better"). The pairs go to the
hub home's preference dataset, which the training screen offers to DPO (``ctrl+y``) with the most
preferred adapter as parent. Prompts can come from a file (one per line, or JSONL with a
``prompt`` key); after a vote the next prompt runs by itself.

One answer can also be judged alone: select its column (left/right, or click it) and press ``+``
(good) or ``-`` (bad). That stores a thumb, one row of KTO's unpaired data (prompt, completion,
label, the version that answered), in the same store the server's ``/v1/preferences`` writes
(through it, for the HTTP backend); a KTO recipe trains on that file. Each answer takes one thumb.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Static

from adapterhub.core.refs import AdapterRef
from adapterhub.engine.types import SamplingParams
from adapterhub.errors import ConfigError
from adapterhub.training.votes import Answer
from adapterhub_tui.screens.dialogs import AskDialog
from adapterhub_tui.widgets.answer import AnswerColumn

if TYPE_CHECKING:
    from adapterhub_tui.app import AdapterHubApp

MAX_ADAPTERS = 4
BASE = "base"


def parse_refs(text: str) -> list[str | None]:
    """``"base, pirate@2 json"`` -> ``[None, "pirate@2", "json"]``.

    Raises:
        ConfigError: a ref is malformed, repeated, or there are more than four adapters.
    """
    refs: list[str | None] = []
    problems = []
    for word in (w for w in re.split(r"[,\s]+", text) if w):
        if word.lower() == BASE:
            ref = None
        else:
            try:
                ref = str(AdapterRef.parse(word))
            except ConfigError as e:
                problems.append(str(e))
                continue
        if ref in refs:
            problems.append(f"{word!r} is listed twice; each column needs its own ref")
        refs.append(ref)
    adapters = [r for r in refs if r is not None]
    if len(adapters) > MAX_ADAPTERS:
        problems.append(
            f"{len(adapters)} adapters given ({', '.join(adapters)}); compare takes the base "
            f"and up to {MAX_ADAPTERS} adapters"
        )
    if not refs and not problems:
        problems.append("no columns: write `base` and/or adapter refs, e.g. `base, pirate@2`")
    if problems:
        raise ConfigError(problems, source="refs")
    return refs


def parse_sampling(max_tokens: str, temperature: str, seed: str) -> SamplingParams:
    """The shared sampling settings from the three inputs.

    Raises:
        ConfigError: a value is not a number or is out of range.
    """
    problems = []

    def number(name: str, text: str, kind: type) -> float | int | None:
        if not text.strip():
            return None
        try:
            return kind(text)  # type: ignore[no-any-return]
        except ValueError:
            problems.append(f"{name}={text!r} is not {'a whole number' if kind is int else 'a number'}")
            return None

    values = {
        "max_tokens": number("max_tokens", max_tokens, int),
        "temperature": number("temperature", temperature, float),
        "seed": number("seed", seed, int),
    }
    if problems:
        raise ConfigError(problems, source="sampling")
    return SamplingParams(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL with a ``prompt`` key, or one prompt per non-empty line.

    Raises:
        ConfigError: the file is missing or has no prompts.
    """
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"prompts file {str(path)!r} cannot be read: {e.strerror or e}") from e
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if str(path).endswith(".jsonl"):
            try:
                record = json.loads(line)
                prompts.append(str(record["prompt"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"{str(path)!r} line {n} is not JSON with a 'prompt' key ({e}); "
                    "write one {\"prompt\": \"...\"} per line or use a .txt file"
                ) from e
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ConfigError(f"prompts file {str(path)!r} has no prompts")
    return prompts


class Columns(Horizontal, can_focus=True):
    """The answer columns; focusable, so the vote keys reach the screen instead of an input."""


class CompareScreen(Screen[None]):
    """Stream answers side by side and vote for the best."""

    BINDINGS = [
        Binding("f5,ctrl+r", "run", "Run"),
        Binding("1", "vote(1)", "Vote 1", show=False),
        Binding("2", "vote(2)", "Vote 2", show=False),
        Binding("3", "vote(3)", "Vote 3", show=False),
        Binding("4", "vote(4)", "Vote 4", show=False),
        Binding("5", "vote(5)", "Vote 5", show=False),
        Binding("ctrl+o", "open_prompts", "Prompts"),
        Binding("right_square_bracket", "next_prompt", "Next prompt", show=False),
        Binding("left_square_bracket", "previous_prompt", "Previous prompt", show=False),
        Binding("ctrl+y", "dpo_on_votes", "DPO votes"),
        Binding("escape", "focus_columns", "Vote keys", show=False),
        Binding("left", "select_column(-1)", "Previous answer", show=False),
        Binding("right", "select_column(1)", "Next answer", show=False),
        Binding("plus,equals_sign", "thumb(True)", "Good answer", show=False),
        Binding("minus", "thumb(False)", "Bad answer", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []
        self.prompt_index = 0
        self.last_prompt = ""
        self.voted = False

    @property
    def hub(self) -> AdapterHubApp:
        return cast("AdapterHubApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="prompt — enter runs all columns", id="prompt", compact=True)
        with Horizontal(id="compare-settings"):
            yield Label("refs ")
            yield Input(BASE, id="refs", compact=True,
                        placeholder="base, name@2, name:prod")
            yield Label(" max ")
            yield Input("64", id="max-tokens", compact=True, type="integer")
            yield Label(" temp ")
            yield Input("0", id="temperature", compact=True, type="number")
            yield Label(" seed ")
            yield Input("0", id="seed", compact=True, type="integer")
        yield Static("", id="compare-status", markup=False)
        yield Columns(id="columns")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()
        self._status()

    # ------------------------------------------------------------------ columns

    @property
    def columns(self) -> list[AnswerColumn]:
        return list(self.query(AnswerColumn))

    def add_column(self, ref: str | None) -> None:
        """Add ``ref`` to the refs (no-op if present); refused past four adapters."""
        refs_input = self.query_one("#refs", Input)
        try:
            refs = parse_refs(refs_input.value)
        except ConfigError:
            refs = []
        if ref in refs:
            return
        if ref is not None and sum(r is not None for r in refs) >= MAX_ADAPTERS:
            self.notify(f"compare holds the base and {MAX_ADAPTERS} adapters; remove one from refs",
                        severity="warning")
            return
        refs.append(ref)
        refs_input.value = ", ".join(r or BASE for r in refs)
        self.query_one("#prompt", Input).focus()

    async def _build_columns(self, refs: list[str | None]) -> None:
        current = [c.ref for c in self.columns]
        if current == refs:
            return
        container = self.query_one("#columns", Columns)
        await container.remove_children()
        base_name = (await self.hub.info()).base_name
        await container.mount_all(
            AnswerColumn(i, ref, ref or f"base ({base_name})", clock=self.hub.clock)
            for i, ref in enumerate(refs, 1)
        )

    # ------------------------------------------------------------------ run

    @on(Input.Submitted, "#prompt")
    def _prompt_submitted(self) -> None:
        self.action_run()

    @on(Input.Submitted, "#refs, #max-tokens, #temperature, #seed")
    def _settings_submitted(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        self.run_prompt()

    @work(exclusive=True, group="compare-run")
    async def run_prompt(self) -> None:
        """Start every column on the prompt in the prompt input."""
        prompt = self.query_one("#prompt", Input).value.strip()
        if not prompt:
            self.notify("type a prompt first (or load a file with ctrl+o)", severity="warning")
            return
        try:
            refs = parse_refs(self.query_one("#refs", Input).value)
            sampling = parse_sampling(
                self.query_one("#max-tokens", Input).value,
                self.query_one("#temperature", Input).value,
                self.query_one("#seed", Input).value,
            )
        except ConfigError as e:
            self.hub.report(e, "reading the compare settings")
            return
        self.workers.cancel_group(self, "compare-stream")
        await self._build_columns(refs)
        self.last_prompt, self.voted = prompt, False
        messages = [{"role": "user", "content": prompt}]
        for column in self.columns:
            column.reset()
            self.run_worker(self._stream(column, messages, sampling), group="compare-stream")
        self.query_one("#columns").focus()
        self._status()

    async def _stream(
        self, column: AnswerColumn, messages: list[dict[str, str]], sampling: SamplingParams
    ) -> None:
        label = column.ref or "the base"
        try:
            async for chunk in self.hub.backend.stream(column.ref, messages, sampling):
                column.add(chunk)
        except Exception as e:
            column.fail(str(e))
            self.hub.report(e, f"generating with {label}")
            return
        if column.state != "done":  # a stream that ended without a final chunk
            column.state = "done"
        self._status()

    # ------------------------------------------------------------------ voting

    def action_vote(self, index: int) -> None:
        columns = self.columns
        if not 1 <= index <= len(columns):
            self.notify(f"there is no column {index}", severity="warning")
            return
        if self.voted:
            self.notify("already voted on these answers; run again to vote again", severity="warning")
            return
        if not all(c.done for c in columns):
            self.notify("wait until every column has finished", severity="warning")
            return
        best = columns[index - 1]
        others = [c for c in columns if c is not best]
        try:
            pairs = self.hub.preferences.vote(
                self.last_prompt,
                Answer(best.resolved or best.ref, best.text),
                [Answer(c.resolved or c.ref, c.text) for c in others],
            )
        except Exception as e:
            self.hub.report(e, "storing the vote")
            return
        self.voted = True
        best.mark_winner()
        total = self.hub.preferences.count()
        self.notify(f"column {index} best: stored {len(pairs)} pair(s), {total if total is not None else '?'} in all "
                    "(ctrl+y: DPO on votes)")
        self._status()
        if self.prompts and self.prompt_index + 1 < len(self.prompts):
            self._show_prompt(self.prompt_index + 1)
            self.run_prompt()

    # ------------------------------------------------------------------ thumbs

    @property
    def selected_column(self) -> AnswerColumn | None:
        """The column holding the focus (itself or a widget inside it), if any."""
        node = self.focused
        while node is not None and not isinstance(node, AnswerColumn):
            node = node.parent  # type: ignore[assignment]
        return node

    def action_select_column(self, step: int) -> None:
        columns = self.columns
        if not columns:
            return
        current = self.selected_column
        index = columns.index(current) + step if current is not None else (0 if step > 0 else len(columns) - 1)
        columns[max(0, min(len(columns) - 1, index))].focus()

    def action_thumb(self, label: bool) -> None:
        """Store the selected column's answer as good (``label``) or bad: one KTO row."""
        column = self.selected_column
        if column is None:
            self.notify("select an answer first: left/right (or click it), then + good or - bad", severity="warning")
            return
        self.store_thumb(column, label)

    def store_thumb(self, column: AnswerColumn, label: bool) -> None:
        """Store ``column``'s answer as good (``label``) or bad; refused (a notice) while it runs or
        once it is marked."""
        if not column.done:
            self.notify(f"column {column.index} has not finished; wait for its answer", severity="warning")
            return
        if column.thumb is not None:
            self.notify(f"column {column.index} is already marked {'good' if column.thumb else 'bad'}; "
                        "run again to judge new answers", severity="warning")
            return
        try:
            record = self.hub.preferences.thumb(self.last_prompt, Answer(column.resolved or column.ref, column.text), label)
        except Exception as e:
            self.hub.report(e, "storing the thumb")
            return
        column.mark_thumb(label)
        total = self.hub.preferences.thumbs_count()
        self.notify(f"column {column.index} ({record.get('ref') or 'base'}) marked {'good' if label else 'bad'}: "
                    f"stored for KTO, {total if total is not None else '?'} thumbs in all")
        self._status()

    def action_focus_columns(self) -> None:
        self.query_one("#columns").focus()

    async def action_dpo_on_votes(self) -> None:
        await self.hub.open_training(dpo_on_votes=True)

    # ------------------------------------------------------------------ prompts file

    @work(group="compare-dialog")
    async def action_open_prompts(self) -> None:
        path = await self.app.push_screen_wait(
            AskDialog("Prompts file (.txt: one per line; .jsonl: {\"prompt\": ...})",
                      placeholder="prompts.txt")
        )
        if path is None:
            return
        try:
            self.prompts = read_prompts(Path(path))
        except ConfigError as e:
            self.hub.report(e, "loading prompts")
            return
        self._show_prompt(0)
        self.notify(f"{len(self.prompts)} prompts loaded; enter runs, ] and [ move")

    def _show_prompt(self, index: int) -> None:
        self.prompt_index = index
        self.query_one("#prompt", Input).value = self.prompts[index]
        self._status()

    def action_next_prompt(self) -> None:
        if self.prompts and self.prompt_index + 1 < len(self.prompts):
            self._show_prompt(self.prompt_index + 1)

    def action_previous_prompt(self) -> None:
        if self.prompts and self.prompt_index > 0:
            self._show_prompt(self.prompt_index - 1)

    def _status(self) -> None:
        parts = []
        if self.prompts:
            parts.append(f"prompt {self.prompt_index + 1}/{len(self.prompts)}")
        columns = self.columns
        if columns and all(c.done for c in columns) and not self.voted:
            parts.append(f"vote: 1-{len(columns)} = that column is best, or ←/→ then +/- = one answer good/bad")
        elif self.voted:
            parts.append("voted")
        total = self.hub.preferences.count()
        parts.append(f"{total if total is not None else '?'} pairs stored")
        thumbs = self.hub.preferences.thumbs_count()
        if thumbs:  # shown once there are any
            parts.append(f"{thumbs} thumbs")
        self.query_one("#compare-status", Static).update("  ·  ".join(parts))

    def palette_commands(self) -> Iterable[SystemCommand]:
        """This screen's actions for the command palette."""
        yield SystemCommand("Run compare", "Send the prompt to every column (f5)", self.action_run)
        yield SystemCommand("Load prompts file", "Prompts from a .txt or .jsonl file (ctrl+o)",
                            self.action_open_prompts)
        yield SystemCommand("Next prompt", "Show the next prompt of the file (])",
                            self.action_next_prompt)
        yield SystemCommand("Previous prompt", "Show the previous prompt of the file ([)",
                            self.action_previous_prompt)
        for column in self.columns:
            yield SystemCommand(
                f"Vote column {column.index} best",
                f"{column.ref or 'base'} is best; store pairs against the others ({column.index})",
                lambda i=column.index: self.action_vote(i),  # type: ignore[misc]
            )
            for label, word in ((True, "good"), (False, "bad")):
                yield SystemCommand(
                    f"Mark column {column.index} {word}",
                    f"Store {column.ref or 'base'}'s answer as {word}: one KTO row ({'+' if label else '-'})",
                    lambda c=column, g=label: self.store_thumb(c, g),  # type: ignore[misc]
                )
