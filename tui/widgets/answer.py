"""One column of the compare screen: an adapter's answer as it streams, with its speed.

The column owns its counters: tokens are counted from the chunks as they arrive (``token_ids``
when the backend sends them, else one per non-empty chunk) and replaced by the exact ``usage``
in the final chunk; tokens/s runs from the first token, so a slow start (an adapter loading into
a slot) shows as time-to-first-token instead of dragging the rate down.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from adapterhub.engine.types import GenerationChunk


class AnswerColumn(Vertical, can_focus=True):
    """An answer column: header (index and ref), live stats and the streamed text.

    Focusable (click it, or move with left/right on the compare screen), so ``+`` / ``-`` there
    mark this one answer good or bad; the mark shows in the border.

    Args:
        index: 1-based column number; its vote key.
        ref: the adapter ref (None = the base).
        label: what the header shows for the ref (the base's name for None).
        clock: monotonic seconds (tests pass a fixed one so snapshots do not move).
    """

    DEFAULT_CSS = """
    AnswerColumn { width: 1fr; height: 1fr; border: round $secondary; padding: 0 1; }
    AnswerColumn.-winner { border: double $success; }
    AnswerColumn.-error { border: round $error; }
    AnswerColumn:focus { border: round $accent; }
    AnswerColumn.-winner:focus { border: double $accent; }
    AnswerColumn > .answer-stats { color: $text-muted; height: auto; }
    AnswerColumn > VerticalScroll { height: 1fr; }
    """

    state: reactive[str] = reactive("idle")

    def __init__(
        self, index: int, ref: str | None, label: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(id=f"answer-{index}")
        self.clock = clock
        self.index = index
        self.ref = ref
        self.border_title = f"{index} {label}"
        self.text = ""
        self.tokens = 0
        self.started = 0.0
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self.resolved: str | None = None
        self.thumb: bool | None = None  # this answer marked good (True) or bad (False); None: not marked

    def compose(self) -> ComposeResult:
        yield Static("", classes="answer-stats", markup=False)
        # not focusable: a click on the text selects the column, and the screen's left/right
        # move between answers instead of scrolling this view (the mouse wheel still scrolls it)
        with VerticalScroll(can_focus=False):
            yield Static("", classes="answer-text", markup=False)

    def reset(self) -> None:
        """Clear the answer before a new prompt runs."""
        self.text, self.tokens, self.resolved = "", 0, None
        self.started, self.first_token_at, self.finished_at = self.clock(), None, None
        self.finish_reason = None
        self.thumb = None
        self.remove_class("-winner", "-error")
        self.state = "waiting"
        self._show()

    def add(self, chunk: GenerationChunk) -> None:
        """Append one streamed chunk."""
        if chunk.text or chunk.token_ids:
            if self.first_token_at is None:
                self.first_token_at = self.clock()
            self.text += chunk.text
            self.tokens += len(chunk.token_ids) or (1 if chunk.text else 0)
            self.state = "streaming"
        if chunk.adapter_version:
            self.resolved = chunk.adapter_version
        if chunk.finish_reason is not None:
            if chunk.usage is not None:
                self.tokens = chunk.usage.completion_tokens
            self.finish_reason = chunk.finish_reason
            self.finished_at = self.clock()
            self.state = "done"
        self._show()

    def fail(self, message: str) -> None:
        """Show that this column's request failed."""
        self.finished_at = self.clock()
        self.state = "error"
        self.add_class("-error")
        self.query_one(".answer-stats", Static).update(f"error: {message}")

    def mark_winner(self) -> None:
        self.add_class("-winner")

    def mark_thumb(self, label: bool) -> None:
        """Show that this answer was stored as good (``label`` true) or bad."""
        self.thumb = label
        self._show()

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed since the first token (None until two moments exist)."""
        if self.first_token_at is None:
            return None
        end = self.finished_at or self.clock()
        elapsed = end - self.first_token_at
        return (self.tokens - 1) / elapsed if elapsed > 0 and self.tokens > 1 else None

    def stats_line(self) -> str:
        """``42 tok  17.3 tok/s  ttft 0.21s  [stop]`` as far as known."""
        parts = [f"{self.tokens} tok"]
        rate = self.tokens_per_s
        if rate is not None:
            parts.append(f"{rate:.1f} tok/s")
        if self.first_token_at is not None:
            parts.append(f"ttft {self.first_token_at - self.started:.2f}s")
        if self.finish_reason:
            parts.append(f"[{self.finish_reason}]")
        elif self.state == "waiting":
            parts.append("…")
        return "  ".join(parts)

    def _show(self) -> None:
        if not self.is_mounted:
            return
        self.query_one(".answer-stats", Static).update(self.stats_line())
        self.query_one(".answer-text", Static).update(self.text)
        marks = [self.resolved if self.resolved and self.ref is not None else "",
                 {True: "+ good", False: "- bad", None: ""}[self.thumb]]
        self.border_subtitle = "  ".join(m for m in marks if m)
