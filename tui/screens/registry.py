"""The registry screen (the one the app opens on): every version, filtered as you type.

Left, a table of versions (ref, method, aliases, created, metrics, base); right, the highlighted
version's details: its lineage (the parent chain), its metrics, its newest evaluations (task,
metric, value ± stderr, documents scored) and the gates of its aliases, the curves of its stored
step log and its recipe. Actions act on the highlighted row: alias, delete (after a confirmation),
evaluate, push, pull, open in compare, train from it.

Loading details goes through one exclusive worker, so scrolling fast through the table cancels
the loads of rows already left behind instead of queueing them.

Evaluate (``e``) asks for the tasks and a document limit, then runs ``Backend.evaluate`` in a
worker of its own, one evaluation at a time, with a progress bar under the table; the user may keep
browsing meanwhile. As on the training screen, progress arrives on the evaluation's thread and
only fills a buffer; :class:`~adapterhub_tui.messages.ProgressPending` has the screen drain it at
most once per frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

import yaml
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, ProgressBar, Static

from adapterhub.core.progress import ProgressEvent
from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.registry import Evaluation, Version
from adapterhub_tui.backend import Capability
from adapterhub_tui.evaluation import EvaluationForm, default_tasks
from adapterhub_tui.messages import ProgressInbox, ProgressPending
from adapterhub_tui.screens.dialogs import AskDialog, ConfirmDialog, EvaluateDialog
from adapterhub_tui.widgets.curves import Curves

if TYPE_CHECKING:
    from adapterhub_tui.app import AdapterHubApp

COLUMNS = ("ref", "method", "aliases", "created", "metrics", "base")


def short_metrics(metrics: dict[str, object], limit: int = 2) -> str:
    """``loss 0.412 ppl 9.81``: the first ``limit`` numeric metrics, loss-like ones first."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k not in ("r", "alpha")}
    keys = sorted(numeric, key=lambda k: (0 if "loss" in k else 1 if "ppl" in k or "perplex" in k else 2, k))
    return " ".join(f"{k} {numeric[k]:.3g}" for k in keys[:limit])


def evaluation_lines(evaluations: Sequence[Evaluation]) -> list[str]:
    """The details' evaluations: a heading per task (with the documents scored), a line per metric.

    ``acc       0.5833 ± 0.149``; a metric's document count is shown on its own line only when
    the metrics of one task were scored on different numbers of documents. Narrow enough for the
    details pane of an 80-column terminal.
    """
    if not evaluations:
        return ["evaluations  none yet (e runs one)"]
    lines = ["evaluations"]
    by_task: dict[str, list[Evaluation]] = {}
    for e in evaluations:
        by_task.setdefault(e.task, []).append(e)
    for task, rows in sorted(by_task.items()):
        counts = {e.samples for e in rows}
        shared = rows[0].samples if len(counts) == 1 else None
        lines.append(task + (f"  n={shared}" if shared else ""))
        width = max(len(e.metric) for e in rows)
        for e in sorted(rows, key=lambda e: e.metric):
            value = f"{e.value:.4g}"
            if e.stderr is not None:
                value = f"{value:<6} ± {e.stderr:.3g}"
            text = f"  {e.metric:<{width}}  {value}"
            if shared is None and e.samples:
                text += f"  n={e.samples}"
            lines.append(text)
    harnesses = sorted({e.harness for e in evaluations if e.harness})
    if harnesses:
        lines.append(f"harness  {', '.join(harnesses)}")
    return lines


def gate_lines(gates: Mapping[str, Sequence[str]]) -> list[str]:
    """``gates of prod`` over its rules (``  adapterhub_capitals:acc>=parent``), per gated alias."""
    lines = []
    for alias, rules in sorted(gates.items()):
        lines += [f"gates of {alias}", *(f"  {rule}" for rule in rules)]
    return lines


def row_text(version: Version) -> str:
    """Everything the filter matches against, lower-cased."""
    metrics = " ".join(str(k) for k in version.metrics)
    return " ".join(
        [version.ref, version.method, *version.aliases, version.parent or "", metrics]
    ).lower()


def matches(version: Version, query: str) -> bool:
    """True when every word of ``query`` occurs in the version's row text."""
    text = row_text(version)
    return all(word in text for word in query.lower().split())


class RegistryScreen(Screen[None]):
    """Browse and act on registered versions."""

    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("a", "alias", "Alias"),
        Binding("d,delete", "delete", "Delete"),
        Binding("c", "compare", "→Compare"),
        Binding("t", "train_from", "→Train"),
        Binding("e", "evaluate", "Eval"),
        Binding("p", "push", "Push", show=False),
        Binding("P", "pull", "Pull", show=False),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.versions: list[Version] = []
        self.shown: list[Version] = []
        self.evaluating: str | None = None  # the ref being evaluated, one at a time
        self.eval_events: list[ProgressEvent] = []  # the running (or last) evaluation's progress
        self._inbox = ProgressInbox(self)  # filled on the evaluation's thread
        self._ready = False

    @property
    def hub(self) -> AdapterHubApp:
        return cast("AdapterHubApp", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="/ filter: name, method, alias, metric…", id="filter", compact=True)
        with Horizontal(id="registry-body"):
            yield DataTable(id="versions", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="details"):
                yield Static("no version selected", id="detail-summary", markup=False)
                yield Static("", id="detail-evals", markup=False)
                yield Curves("step log: loss", id="detail-curves")
                yield Static("", id="detail-recipe", markup=False)
        with Horizontal(id="eval-run"):
            yield Static("", id="eval-status", markup=False)
            yield ProgressBar(id="eval-progress", show_eta=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.focus()
        self._ready = True
        self.reload()

    def on_screen_resume(self) -> None:
        if self._ready:
            select, self.hub.select_on_return = self.hub.select_on_return, None
            self.reload(select=select or self.selected_ref)

    # ------------------------------------------------------------------ data

    @property
    def selected(self) -> Version | None:
        table = self.query_one(DataTable)
        if not self.shown or table.cursor_row is None or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    @property
    def selected_ref(self) -> str | None:
        version = self.selected
        return version.ref if version else None

    @work(exclusive=True, group="registry-list")
    async def reload(self, select: str | None = None) -> None:
        """Reload the versions from the backend and redraw the table."""
        info = await self.hub.info()
        if info.label:
            self.sub_title = info.label
        try:
            versions = await self.hub.backend.list_versions()
        except Exception as e:
            self.hub.report(e, "listing versions")
            return
        self.versions = sorted(versions, key=lambda v: (-v.created_at, v.name, -v.number))
        self._fill(select)

    def _fill(self, select: str | None = None) -> None:
        table = self.query_one(DataTable)
        keep = select or self.selected_ref
        query = self.query_one("#filter", Input).value
        self.shown = [v for v in self.versions if matches(v, query)]
        table.clear()
        for v in self.shown:
            table.add_row(
                v.ref,
                v.method,
                ", ".join(v.aliases),
                datetime.fromtimestamp(v.created_at).strftime("%m-%d %H:%M"),
                short_metrics(dict(v.metrics)),
                v.base_fingerprint[:8],
                key=v.ref,
            )
        refs = [v.ref for v in self.shown]
        if keep in refs:
            table.move_cursor(row=refs.index(keep))
        self.border_title = f"{len(self.shown)}/{len(self.versions)} versions"
        if not self.shown:
            self._show_details(None, [], [])
        else:
            self.load_details(self.shown[table.cursor_row or 0].ref)

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._fill()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(DataTable).focus()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value:
            self.load_details(event.row_key.value)

    @work(exclusive=True, group="registry-details")
    async def load_details(self, ref: str) -> None:
        """Load ``ref``'s lineage, step log, evaluations and gates into the details pane."""
        backend = self.hub.backend
        info = await self.hub.info()
        try:
            chain = await backend.lineage(ref)
            events = await backend.step_log(ref) if info.can(Capability.STEP_LOG) else []
            evaluations = await backend.evaluations(ref) if info.can(Capability.EVALUATIONS) else None
            gates = await backend.gates(ref) if info.can(Capability.GATES) else {}
        except Exception as e:
            self.hub.report(e, f"loading {ref}")
            return
        self._show_details(chain[0] if chain else None, chain, events, evaluations, gates)

    def _show_details(
        self,
        version: Version | None,
        chain: list[Version],
        events: list[ProgressEvent],
        evaluations: Sequence[Evaluation] | None = None,
        gates: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Fill the details pane; ``evaluations`` None: the backend cannot read them (not shown)."""
        summary = self.query_one("#detail-summary", Static)
        evals = self.query_one("#detail-evals", Static)
        curves = self.query_one("#detail-curves", Curves)
        recipe = self.query_one("#detail-recipe", Static)
        curves.clear()
        if version is None:
            summary.update("no versions match" if self.versions else "no adapters yet: train one (f2)")
            evals.display = False
            recipe.update("")
            return
        lines = [
            version.ref + (f"  ({', '.join(version.aliases)})" if version.aliases else ""),
            f"method   {version.method}",
            f"created  {datetime.fromtimestamp(version.created_at):%Y-%m-%d %H:%M}",
            f"base     {version.base_fingerprint[:12]}",
            "lineage  " + " ← ".join(v.ref for v in chain),
        ]
        if version.dataset_fingerprint:
            lines.append(f"dataset  {version.dataset_fingerprint[:12]}")
        if version.source:
            lines.append("source   " + ", ".join(f"{k}={v}" for k, v in version.source.items()))
        for key, value in sorted(version.metrics.items()):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"{key:<16} {shown}")
        summary.update("\n".join(lines))
        evaluated = [*(evaluation_lines(evaluations) if evaluations is not None else []),
                     *gate_lines(gates or {})]
        evals.update("\n".join(evaluated))
        evals.display = bool(evaluated)
        curves.add_events(events)
        curves.display = bool(events)
        recipe.update(
            "recipe\n" + yaml.safe_dump(dict(version.recipe), sort_keys=False).rstrip()
            if version.recipe
            else ""
        )

    # ------------------------------------------------------------------ actions

    def _need(self, capability: Capability, what: str) -> bool:
        info = self.hub.known_info
        if info is not None and info.can(capability):
            return True
        label = info.label if info else "this backend"
        self.notify(f"{what} is not available with {label}", severity="warning")
        return False

    def _need_selection(self) -> Version | None:
        version = self.selected
        if version is None:
            self.notify("select a version first", severity="warning")
        return version

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_reload(self) -> None:
        self.reload()

    @work(group="registry-action")
    async def action_alias(self) -> None:
        version = self._need_selection()
        if version is None or not self._need(Capability.TAG, "tagging"):
            return
        alias = await self.app.push_screen_wait(
            AskDialog(f"Alias for {version.ref} (moves {version.name}:ALIAS here)",
                      placeholder="prod", check=_alias_problem)
        )
        if alias is None:
            return
        try:
            tagged = await self.hub.backend.tag(version.ref, alias)
        except Exception as e:
            self.hub.report(e, f"tagging {version.ref}")
            return
        self.notify(f"{tagged.name}:{alias} → {tagged.ref}")
        self.reload(select=tagged.ref)

    @work(group="registry-action")
    async def action_delete(self) -> None:
        version = self._need_selection()
        if version is None or not self._need(Capability.DELETE, "deleting"):
            return
        sure = await self.app.push_screen_wait(
            ConfirmDialog(f"Delete {version.ref}? Its files go too; this cannot be undone.",
                          yes="Delete")
        )
        if not sure:
            return
        try:
            await self.hub.backend.delete(version.ref)
        except Exception as e:
            self.hub.report(e, f"deleting {version.ref}")
            return
        self.notify(f"deleted {version.ref}")
        self.reload()

    @work(group="registry-action")
    async def action_push(self) -> None:
        version = self._need_selection()
        if version is None or not self._need(Capability.PUSH, "push to the Hugging Face Hub"):
            return
        repo = await self.app.push_screen_wait(
            AskDialog(f"Push {version.ref} to repo", placeholder="user/name")
        )
        if repo is None:
            return
        self.notify(f"pushing {version.ref} to {repo}…")
        try:
            where = await self.hub.backend.push(version.ref, repo)
        except Exception as e:
            self.hub.report(e, f"pushing {version.ref}")
            return
        self.notify(f"pushed {version.ref} → {where}")

    @work(group="registry-action")
    async def action_pull(self) -> None:
        if not self._need(Capability.PULL, "pull from the Hugging Face Hub"):
            return
        repo = await self.app.push_screen_wait(
            AskDialog("Pull repo (id or id@revision)", placeholder="user/name@main")
        )
        if repo is None:
            return
        self.notify(f"pulling {repo}…")
        try:
            version = await self.hub.backend.pull(repo)
        except Exception as e:
            self.hub.report(e, f"pulling {repo}")
            return
        self.notify(f"pulled {repo} as {version.ref}")
        self.reload(select=version.ref)

    @work(group="registry-eval")
    async def action_evaluate(self) -> None:
        version = self._need_selection()
        if version is None or self._busy_evaluating():
            return
        form = await self.app.push_screen_wait(EvaluateDialog(version.ref, default_tasks()))
        if form is None or self._busy_evaluating():
            return
        await self._evaluate(version.ref, form)

    def _busy_evaluating(self) -> bool:
        if self.evaluating is None:
            return False
        self.notify(f"an evaluation of {self.evaluating} is running; wait for it to finish",
                    severity="warning")
        return True

    async def _evaluate(self, ref: str, form: EvaluationForm) -> None:
        """Run one evaluation with a live progress bar, then show its numbers."""
        self.evaluating = ref
        self.eval_events.clear()
        self._inbox.clear()
        self.query_one("#eval-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#eval-status", Static).update(f"evaluating {ref}…")
        self.query_one("#eval-run").display = True
        try:
            found = await self.hub.backend.evaluate(
                ref, form.tasks, limit=form.limit, progress=self._inbox
            )
        except Exception as e:
            self.hub.report(e, f"evaluating {ref}")
        else:
            self._drain()
            numbers = ", ".join(f"{e.subject} {e.value:.4g}" for e in found) or "no numbers measured"
            self.notify(numbers, title=f"evaluated {ref}", markup=False)
            if self.selected_ref == ref:
                self.load_details(ref)
        finally:
            self.evaluating = None
            self._inbox.clear()
            self.query_one("#eval-run").display = False

    def on_progress_pending(self, _message: ProgressPending) -> None:
        self._drain()

    def _drain(self) -> None:
        batch = self._inbox.take()
        if not batch or self.evaluating is None:  # nothing new, or a late event of a run that ended
            return
        self.eval_events.extend(batch)
        status = self.query_one("#eval-status", Static)
        step = next((e for e in reversed(batch) if e.kind == "step"), None)
        if step is not None:
            self.query_one("#eval-progress", ProgressBar).update(
                total=step.total_steps or None, progress=step.step
            )
            status.update(f"evaluating {self.evaluating}: {step.message} {step.step}/{step.total_steps}")
        elif batch[-1].message:
            status.update(batch[-1].message)

    async def action_compare(self) -> None:
        version = self._need_selection()
        if version is not None:
            await self.hub.open_compare([version.ref])

    async def action_train_from(self) -> None:
        version = self._need_selection()
        if version is not None:
            await self.hub.open_training(parent=version.ref)

    def palette_commands(self) -> Iterable[SystemCommand]:
        """This screen's actions for the command palette."""
        yield SystemCommand("Filter versions", "Focus the filter (/)", self.action_focus_filter)
        yield SystemCommand("Alias version", "Point NAME:ALIAS at the selected version (a)",
                            self.action_alias)
        yield SystemCommand("Delete version", "Delete the selected version (d)", self.action_delete)
        yield SystemCommand("Open in compare", "Add the selected version to compare (c)",
                            self.action_compare)
        yield SystemCommand("Train from version", "Train with the selected version as parent (t)",
                            self.action_train_from)
        yield SystemCommand("Evaluate version",
                            "Run lm-evaluation-harness on the selected version and record it (e)",
                            self.action_evaluate)
        yield SystemCommand("Push version", "Push the selected version to the Hub (p)",
                            self.action_push)
        yield SystemCommand("Pull adapter", "Pull an adapter repo from the Hub (P)",
                            self.action_pull)
        yield SystemCommand("Reload registry", "Read the registry again (r)", self.action_reload)


def _alias_problem(alias: str) -> str | None:
    try:
        validate_name(alias, field="alias")
        AdapterRef.parse(f"x:{alias}")
    except ValueError as e:
        return str(e)
    return None
