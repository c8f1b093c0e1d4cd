"""Small modal dialogs: a yes/no confirmation, a one-line question, an evaluation's settings.

All are keyboard-first (``y``/``n``/``escape``; ``enter`` submits, ``escape`` cancels) and
return their answer through ``dismiss``, so a caller writes
``self.app.push_screen(ConfirmDialog(...), callback)`` or awaits ``push_screen_wait`` in a
worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from adapterhub.errors import ConfigError
from adapterhub_tui.evaluation import EvaluationForm, eval_command, read_form

DIALOG_CSS = """
ConfirmDialog, AskDialog, EvaluateDialog { align: center middle; }
ConfirmDialog > Vertical, AskDialog > Vertical, EvaluateDialog > Vertical {
    width: 64; max-width: 95%; height: auto; border: thick $primary; background: $surface;
    padding: 1 2;
}
ConfirmDialog Horizontal, AskDialog Horizontal, EvaluateDialog Horizontal {
    height: auto; align-horizontal: right;
}
ConfirmDialog Button, AskDialog Button, EvaluateDialog Button { margin-left: 1; }
AskDialog .problem, EvaluateDialog .problem { color: $error; height: auto; }
EvaluateDialog Label { color: $text-muted; margin-top: 1; }
EvaluateDialog .command { background: $boost; color: $accent; margin: 1 0 0 0; height: auto; }
"""


class ConfirmDialog(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True for yes."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, *, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, markup=False)
            with Horizontal():
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class AskDialog(ModalScreen[str | None]):
    """Ask for one line of text; dismisses with the text, or None when cancelled.

    Args:
        question: the label above the input.
        value: the input's starting text.
        check: returns a problem for a value (shown under the input, blocking submit) or None.
    """

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        question: str,
        *,
        value: str = "",
        placeholder: str = "",
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.question = question
        self.value = value
        self.placeholder = placeholder
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, markup=False)
            yield Input(self.value, placeholder=self.placeholder, id="answer")
            yield Static("", classes="problem")
            with Horizontal():
                yield Button("OK (enter)", variant="primary", id="ok")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#answer", Input).focus()

    def _problem(self, value: str) -> str | None:
        if not value.strip():
            return "type a value, or press escape to cancel"
        return self.check(value.strip()) if self.check else None

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one(".problem", Static).update(self._problem(event.value) or "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit(self.query_one("#answer", Input).value)
        else:
            self.dismiss(None)

    def _submit(self, value: str) -> None:
        problem = self._problem(value)
        if problem:
            self.query_one(".problem", Static).update(problem)
            return
        self.dismiss(value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class EvaluateDialog(ModalScreen[EvaluationForm | None]):
    """Ask which tasks to evaluate a version on, and how many documents of each.

    Shows the ``adapterhub eval`` command the answer equals; dismisses with the form, or None
    when cancelled.

    Args:
        ref: the version to evaluate (shown in the title and the command).
        tasks: the tasks field's starting text, joined with ", ".
    """

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, ref: str, tasks: Sequence[str], *, limit: int | None = None) -> None:
        super().__init__()
        self.ref = ref
        self.tasks = ", ".join(tasks)
        self.limit = limit

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Evaluate {self.ref} with lm-evaluation-harness", markup=False)
            yield Label("tasks: folders or lm-eval task names, comma-separated", markup=False)
            yield Input(self.tasks, placeholder="recipes/evals/capitals", id="eval-tasks")
            yield Label("limit: documents per task (blank: all)", markup=False)
            yield Input("" if self.limit is None else str(self.limit), placeholder="all",
                        id="eval-limit", type="integer")
            yield Static("", classes="command", markup=False)
            yield Static("", classes="problem", markup=False)
            with Horizontal():
                yield Button("Run (enter)", variant="primary", id="ok")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#eval-tasks", Input).focus()
        self._check()

    def _check(self) -> EvaluationForm | None:
        """Show the command for the fields as they are, or their problems; the form if valid."""
        tasks = self.query_one("#eval-tasks", Input).value
        limit = self.query_one("#eval-limit", Input).value
        command, problem = self.query_one(".command", Static), self.query_one(".problem", Static)
        try:
            form = read_form(tasks, limit)
        except ConfigError as e:
            command.update("")
            problem.update("\n".join(e.problems))
            return None
        problem.update("")
        command.update(eval_command(self.ref, form.tasks, form.limit))
        return form

    def on_input_changed(self, _event: Input.Changed) -> None:
        self._check()

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        form = self._check()
        if form is not None:
            self.dismiss(form)

    def action_cancel(self) -> None:
        self.dismiss(None)
