"""The training screen: pick a recipe, edit its key fields, start, watch it learn, cancel.

Left, the form: a recipe (bundled, or any file with ``ctrl+o``), its key fields validated on
every keystroke (the problem shows under the field) and the exact ``adapterhub train`` command
the form equals. Right, the run: a progress bar, step/total, ETA and tokens/s, live curves of the
loss and of the method's metrics (reward margin, reward, KL …), and a log tail.

The run goes through ``Backend.train`` in an async worker, so the UI stays live and the user may
switch screens while it trains. Progress arrives on the training thread: the callback only
appends to a buffer and posts :class:`~adapterhub_tui.messages.ProgressPending`, which replaces
an undelivered one, so the screen redraws at most once per frame whatever the event rate.

``ctrl+y`` offers DPO over compare's votes: a recipe written next to the votes file (settings of
the first DPO recipe found, if any), its parent the adapter that won most often.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    RichLog,
    Select,
    Static,
)

from adapterhub.core.progress import CancelToken, ProgressEvent
from adapterhub.core.refs import AdapterRef
from adapterhub.errors import AdapterHubError, TrainingCancelled
from adapterhub.training.votes import preferred_adapter
from adapterhub_tui.backend import Capability, TrainRequest
from adapterhub_tui.messages import ProgressInbox, ProgressPending
from adapterhub_tui.recipes import (
    FORM_FIELDS,
    METHODS,
    VOTES_RECIPE,
    RecipeInfo,
    TrainingForm,
    check_form,
    cli_command,
    find_recipes,
    form_values,
    load_recipe,
    overrides,
    write_votes_recipe,
)
from adapterhub_tui.screens.dialogs import AskDialog
from adapterhub_tui.widgets.curves import Curves

if TYPE_CHECKING:
    from adapterhub_tui.app import AdapterHubApp

_LABELS = {
    "method": "method",
    "name": "name",
    "parent": "parent",
    "dataset": "dataset",
    "r": "LoRA r",
    "alpha": "alpha",
    "lr": "lr",
    "steps": "steps",
}
_PLACEHOLDERS = {"parent": "none (or name@N)", "dataset": "the recipe's", "r": "the recipe's",
                 "alpha": "the recipe's", "lr": "the recipe's", "steps": "the recipe's (epochs)"}


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` / ``4:05`` / ``?``."""
    if seconds is None or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def stats_line(event: ProgressEvent) -> str:
    """One line of run state: ``step 12/60  ETA 0:42  1234 tok/s  loss 1.234``."""
    parts = [f"step {event.step}/{event.total_steps or '?'}", f"ETA {format_eta(event.eta_s)}"]
    if event.tokens_per_s is not None:
        parts.append(f"{event.tokens_per_s:,.0f} tok/s")
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    return "  ".join(parts)


def log_line(event: ProgressEvent) -> str | None:
    """What the log tail shows for an event (None: nothing)."""
    if event.kind == "step":
        extra = " ".join(f"{k}={v:.3g}" for k, v in list(event.metrics.items())[:3])
        loss = f" loss={event.loss:.4f}" if event.loss is not None else ""
        return f"step {event.step}/{event.total_steps}{loss} {extra}".rstrip()
    if event.kind == "eval":
        metrics = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
        return f"eval @ {event.step}: " + (metrics or (f"loss={event.loss:.4f}" if event.loss else ""))
    if event.kind == "done":
        return f"done: {event.version_ref or ''} {event.message}".rstrip()
    return f"{event.kind}: {event.message}" if event.message or event.kind != "start" else "start"


class TrainingScreen(Screen[None]):
    """Configure, start, watch and cancel one training run."""

    BINDINGS = [
        Binding("f5,ctrl+s", "start", "Start"),
        Binding("ctrl+t", "cancel_run", "Cancel"),
        Binding("ctrl+o", "open_recipe", "Open"),
        Binding("ctrl+y", "dpo_on_votes", "DPO votes"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.recipes: list[RecipeInfo] = []
        self.recipe: RecipeInfo | None = None
        self.form: TrainingForm | None = None
        self.cancel_token: CancelToken | None = None
        self.events: list[ProgressEvent] = []  # every event of the current run
        self._inbox = ProgressInbox(self)  # filled on the training thread
        self._filling = False

    @property
    def hub(self) -> AdapterHubApp:
        return cast("AdapterHubApp", self.app)

    @property
    def running(self) -> bool:
        return self.cancel_token is not None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="training-body"):
            with VerticalScroll(id="form"):
                with Horizontal(classes="row"):
                    yield Label("recipe", classes="field-label")
                    yield Select[str]([], prompt="pick (ctrl+o: file)", id="recipe", compact=True)
                yield Static("", id="offer", classes="note", markup=False)
                for name in FORM_FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(_LABELS[name], classes="field-label")
                        if name == "method":
                            yield Select[str]([(m, m) for m in METHODS], id="field-method",
                                              allow_blank=True, compact=True)
                        else:
                            yield Input(id=f"field-{name}", compact=True,
                                        placeholder=_PLACEHOLDERS.get(name, ""))
                    yield Static("", id=f"problem-{name}", classes="problem", markup=False)
                yield Static("", id="problems", classes="problem", markup=False)
                yield Static("", id="command", markup=False)
                with Horizontal(id="train-buttons"):
                    yield Button("Start f5", variant="success", id="start", compact=True)
                    yield Button("Cancel ^t", variant="error", id="cancel", disabled=True,
                                 compact=True)
            with Vertical(id="run"):
                yield ProgressBar(id="progress", show_eta=False)
                yield Static("not started", id="run-stats", markup=False)
                yield Curves("loss", which="loss", id="loss-curve")
                yield Curves("method metrics", which="metrics", id="metric-curve")
                yield RichLog(id="log", max_lines=500, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self.recipes = find_recipes(self.hub.recipe_dirs)
        self._set_recipe_options()
        if not self.recipes:
            dirs = ", ".join(str(d) for d in self.hub.recipe_dirs) or "(none)"
            self.query_one("#log", RichLog).write(
                f"no recipes found in {dirs}; open a recipe file with ctrl+o"
            )
        self._validate()

    def on_unmount(self) -> None:
        # The run's thread outlives the worker task: stop it, or quitting waits for the run.
        if self.cancel_token is not None:
            self.cancel_token.cancel()

    def _set_recipe_options(self) -> None:
        select = self.query_one("#recipe", Select)
        select.set_options([(f"{r.title} ({r.method})", str(r.path)) for r in self.recipes])

    # ------------------------------------------------------------------ form

    def choose_recipe(self, recipe: RecipeInfo) -> None:
        """Make ``recipe`` the current one and fill the form from it."""
        if all(r.path != recipe.path for r in self.recipes):
            self.recipes.append(recipe)
            self._set_recipe_options()
        self.recipe = recipe
        self._filling = True
        try:
            select = self.query_one("#recipe", Select)
            if select.value != str(recipe.path):
                select.value = str(recipe.path)
            self.set_fields(form_values(recipe))
        finally:
            self._filling = False
        _show(self.query_one("#offer", Static), "")
        self._validate()

    def set_fields(self, values: dict[str, str]) -> None:
        """Put ``values`` (field -> text) into the form."""
        for name, text in values.items():
            if name == "method":
                select = self.query_one("#field-method", Select)
                select.value = text if text in METHODS else Select.NULL
            else:
                self.query_one(f"#field-{name}", Input).value = text
        self._validate()

    def raw_form(self) -> dict[str, str]:
        """The form's current text per field."""
        method = self.query_one("#field-method", Select).value
        raw = {"method": "" if method is Select.NULL else str(method)}
        for name in FORM_FIELDS:
            if name != "method":
                raw[name] = self.query_one(f"#field-{name}", Input).value
        return raw

    def _validate(self) -> None:
        form, problems = check_form(
            self.raw_form(), root=self.recipe.path.parent if self.recipe else None
        )
        for name in FORM_FIELDS:
            _show(self.query_one(f"#problem-{name}", Static), problems.get(name, ""))
        self.form = form
        command = self.query_one("#command", Static)
        if self.recipe is None:
            command.update("(pick a recipe)")
        elif form is None:
            command.update("(fix the fields above)")
        else:
            command.update(cli_command(self.recipe, overrides(self.recipe, form)))
        self.query_one("#start", Button).disabled = self.running or form is None or self.recipe is None

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        if not self._filling and (event.input.id or "").startswith("field-"):
            _show(self.query_one("#problems", Static), "")
            self._validate()

    @on(Select.Changed, "#field-method")
    def _method_changed(self) -> None:
        if not self._filling:
            self._validate()

    @on(Select.Changed, "#recipe")
    def _recipe_changed(self, event: Select.Changed) -> None:
        if self._filling or event.value is Select.NULL:
            return
        if self.recipe is not None and str(self.recipe.path) == event.value:
            return
        recipe = next((r for r in self.recipes if str(r.path) == event.value), None)
        if recipe is not None:
            self.choose_recipe(recipe)

    def set_parent(self, ref: str) -> None:
        """Start from ``ref``: picks a recipe first if none is chosen."""
        if self.recipe is None and self.recipes:
            self.choose_recipe(self.recipes[0])
        self.query_one("#field-parent", Input).value = ref
        self.query_one("#field-parent", Input).focus()

    # ------------------------------------------------------------------ DPO on votes

    def load_dpo_offer(self) -> None:
        """Fill the form with a DPO run over compare's votes, parent = the most preferred adapter.

        The run's recipe is written next to the votes (settings from the first DPO recipe found,
        if any), so the command shown is complete and can be rerun from a shell.
        """
        store = self.hub.preferences
        try:
            pairs = store.pairs()
        except AdapterHubError as e:  # over --server: the server cannot be read, or the key may not
            self.hub.report(e, "reading the votes")
            return
        if not pairs:
            self.notify("no votes yet: compare answers (f3) and vote with 1-5", severity="warning")
            return
        parent = preferred_adapter(pairs)
        name = f"{AdapterRef.parse(parent).name}-dpo" if parent else "votes-dpo"
        like = next((r for r in self.recipes if r.method == "dpo" and r.path.name != VOTES_RECIPE),
                    None)
        try:
            recipe = write_votes_recipe(store, name=name, parent=parent, like=like)
        except (OSError, AdapterHubError) as e:
            self.hub.report(e, "writing the DPO recipe")
            return
        self.recipes = [r for r in self.recipes if r.path != recipe.path]
        self.choose_recipe(recipe)
        wins = sum(1 for p in pairs if p.chosen.ref == parent) if parent else 0
        _show(
            self.query_one("#offer", Static),
            f"DPO on {len(pairs)} voted pairs"
            + (f"; parent {parent} (chosen {wins}×)" if parent else "; no adapter won yet"),
        )

    def action_dpo_on_votes(self) -> None:
        self.load_dpo_offer()

    # ------------------------------------------------------------------ run

    def action_start(self) -> None:
        if self.running:
            self.notify("a run is already going; cancel it with ctrl+t", severity="warning")
            return
        if self.recipe is None or self.form is None:
            self.notify("pick a recipe and fix the fields marked in red first", severity="warning")
            return
        info = self.hub.known_info
        if info is None or not info.can(Capability.TRAIN):
            label = info.label if info else "this backend"
            self.notify(f"training is not available with {label}; connect with an admin key "
                        "(--api-key) or run `adapterhub tui` in-process (without --server)", severity="error")
            return
        self.train(TrainRequest(self.recipe.path, overrides(self.recipe, self.form)))

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel_run()

    def action_cancel_run(self) -> None:
        if self.cancel_token is None:
            self.notify("no run to cancel", severity="warning")
            return
        self.cancel_token.cancel()
        self.query_one("#log", RichLog).write("cancelling after the current step…")

    @work(exclusive=True, group="training-run")
    async def train(self, request: TrainRequest) -> None:
        """Check, then run ``request`` to the end, showing its progress."""
        backend = self.hub.backend
        problems_view = self.query_one("#problems", Static)
        try:
            problems = await backend.check_training(request)
        except Exception as e:
            self.hub.report(e, "checking the recipe")
            return
        if problems:
            _show(problems_view, "\n".join(f"• {p}" for p in problems))
            self.notify(f"{len(problems)} problem(s) in the recipe; see the form", severity="error")
            return
        token = CancelToken()
        self._begin_run(token)
        try:
            version = await backend.train(request, progress=self._inbox, cancel=token)
        except TrainingCancelled as e:
            self._log(f"cancelled: {e}")
            self.notify("training cancelled; nothing was registered", severity="warning")
        except AdapterHubError as e:
            self._log(f"failed: {e}")
            self.hub.report(e, "training")
        except Exception as e:
            self._log(f"failed: {type(e).__name__}: {e}")
            self.hub.report(e, "training")
        else:
            self._drain()
            self._log(f"registered {version.ref}")
            self.notify(f"registered {version.ref}", title="training finished")
            self.hub.versions_changed(select=version.ref)
        finally:
            self._drain()
            self._end_run()

    def _begin_run(self, token: CancelToken) -> None:
        self.cancel_token = token
        self.events.clear()
        self._inbox.clear()
        for curves in self.query(Curves):
            curves.clear()
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#run-stats", Static).update("starting…")
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#start", Button).disabled = True
        for widget in self.query("#form Input, #form Select"):
            widget.disabled = True

    def _end_run(self) -> None:
        self.cancel_token = None
        self.query_one("#cancel", Button).disabled = True
        for widget in self.query("#form Input, #form Select"):
            widget.disabled = False
        self._validate()

    def on_progress_pending(self, _message: ProgressPending) -> None:
        self._drain()

    def _drain(self) -> None:
        batch = self._inbox.take()
        if not batch:
            return
        self.events.extend(batch)
        last_step = next((e for e in reversed(batch) if e.kind == "step"), None)
        if last_step is not None:
            self.query_one("#progress", ProgressBar).update(
                total=last_step.total_steps or None, progress=last_step.step
            )
            self.query_one("#run-stats", Static).update(stats_line(last_step))
        for curves in self.query(Curves):
            curves.add_events(batch)
        for event in batch:
            line = log_line(event)
            if line:
                self._log(line)

    def _log(self, line: str) -> None:
        self.query_one("#log", RichLog).write(line)

    # ------------------------------------------------------------------ recipe file

    @work(group="training-dialog")
    async def action_open_recipe(self) -> None:
        path = await self.app.push_screen_wait(
            AskDialog("Recipe file", placeholder="recipes/my-recipe.yaml", check=_file_problem)
        )
        if path is None:
            return
        try:
            self.choose_recipe(load_recipe(path))
        except AdapterHubError as e:
            self.hub.report(e, "opening the recipe")

    def palette_commands(self) -> Iterable[SystemCommand]:
        """This screen's actions for the command palette."""
        yield SystemCommand("Start training", "Start the run the form describes (f5)",
                            self.action_start)
        yield SystemCommand("Cancel training", "Stop the run after its current step (ctrl+t)",
                            self.action_cancel_run)
        yield SystemCommand("Open recipe file", "Load a recipe YAML from a path (ctrl+o)",
                            self.action_open_recipe)
        for recipe in self.recipes:
            yield SystemCommand(f"Recipe: {recipe.title}", f"{recipe.method} — {recipe.path}",
                                lambda r=recipe: self.choose_recipe(r))  # type: ignore[misc]


def _show(widget: Static, text: str) -> None:
    """Show ``text`` in a message line, hiding the line while it is empty."""
    widget.update(text)
    widget.display = bool(text)


def _file_problem(path: str) -> str | None:
    return None if Path(path).expanduser().is_file() else f"no file {path!r}"
