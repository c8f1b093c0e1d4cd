"""Evaluations on the registry screen over the fake backend: shown in the details, run with ``e``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fake_backend import make_evaluation
from textual.widgets import Input, ProgressBar, Static
from tui_testing import notices, settle

from adapterhub.errors import ConfigError
from adapterhub_tui.backend import Capability
from adapterhub_tui.evaluation import default_tasks, eval_command, read_form
from adapterhub_tui.screens.dialogs import EvaluateDialog
from adapterhub_tui.screens.registry import RegistryScreen, evaluation_lines, gate_lines


@pytest.fixture
def evals_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with two task folders under recipes/evals/ (and one without a task)."""
    folder = tmp_path / "cwd"
    for name in ("capitals", "sums"):
        (folder / "recipes" / "evals" / name).mkdir(parents=True)
        (folder / "recipes" / "evals" / name / f"{name}.yaml").write_text(f"task: adapterhub_{name}\n")
    (folder / "recipes" / "evals" / "notes").mkdir()
    monkeypatch.chdir(folder)
    return folder


def detail_evals(app) -> str:  # type: ignore[no-untyped-def]
    widget = app.screen.query_one("#detail-evals", Static)
    return str(widget.render()) if widget.display else ""


async def test_details_show_newest_evaluations_and_gates(fake_app, fake) -> None:
    fake.recorded["pirate@2"].insert(0, make_evaluation(  # an older run of the same metric: hidden
        "pirate@2", "adapterhub_capitals", "acc", 0.1, samples=12, created_at=0.0))
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.screen.selected_ref == "pirate@2"
        text = detail_evals(app)
        assert text.splitlines() == [
            "evaluations",
            "adapterhub_capitals  n=12",
            "  acc       0.5833 ± 0.149",
            "  acc_norm  0.5    ± 0.151",
            "harness  lm-eval 0.4.13",
            "gates of prod",
            "  adapterhub_capitals:acc>=parent",
        ]
        await pilot.press("slash", *"json", "enter")
        await settle(pilot)
        assert detail_evals(app) == "evaluations  none yet (e runs one)"


async def test_a_backend_that_cannot_read_evaluations_shows_none(fake_app, fake) -> None:
    fake.capabilities = frozenset({Capability.TAG})
    fake.fail["evaluations"] = AssertionError("must not be asked")
    fake.fail["gates"] = AssertionError("must not be asked")
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert "pirate@2" in str(app.screen.query_one("#detail-summary", Static).render())
        assert detail_evals(app) == ""
        assert notices(app) == []


async def test_evaluate_through_the_dialog_with_live_progress(fake_app, fake, evals_cwd: Path) -> None:
    fake.hold_evaluation = threading.Event()
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"json", "enter", "e")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, EvaluateDialog)
        tasks = dialog.query_one("#eval-tasks", Input)
        assert tasks.value == "recipes/evals/capitals, recipes/evals/sums"  # not notes/: no task YAML
        assert str(dialog.query_one(".command", Static).render()) == (
            "adapterhub eval json-answers@1 --task recipes/evals/capitals --task recipes/evals/sums")
        # A path that does not exist and a zero limit: both problems shown, enter refused.
        tasks.value = "recipes/evals/capitals, recipes/evals/nope"
        dialog.query_one("#eval-limit", Input).value = "0"
        await pilot.pause()
        problems = str(dialog.query_one(".problem", Static).render())
        assert "'recipes/evals/nope'" in problems and "greater than or equal to 1" in problems
        await pilot.press("enter")
        assert app.screen is dialog
        tasks.value = "recipes/evals/capitals"
        dialog.query_one("#eval-limit", Input).value = "2"
        await pilot.pause()
        assert str(dialog.query_one(".command", Static).render()).endswith(
            "--task recipes/evals/capitals --limit 2")
        await pilot.press("enter")
        await pilot.pause(0.2)

        screen = app.screen
        assert isinstance(screen, RegistryScreen)
        assert screen.query_one("#eval-run").display  # held after its first step
        assert "evaluating json-answers@1" in str(screen.query_one("#eval-status", Static).render())
        await pilot.press("e")  # one evaluation at a time
        await pilot.pause()
        assert any("an evaluation of json-answers@1 is running" in n for n in notices(app))
        assert isinstance(app.screen, RegistryScreen)
        fake.hold_evaluation.set()
        await settle(pilot)

        assert fake.evaluated == [("json-answers@1", ("recipes/evals/capitals",), 2)]
        assert not screen.query_one("#eval-run").display
        bar = screen.query_one("#eval-progress", ProgressBar)
        assert (bar.progress, bar.total) == (4, 4)
        kinds = [e.kind for e in screen.eval_events]
        assert kinds[0] == "start" and kinds.count("step") == 4 and kinds[-1] == "done"
        assert any("adapterhub_capitals:acc 0.25" in n for n in notices(app))
        assert detail_evals(app).splitlines()[1:3] == ["adapterhub_capitals  n=2", "  acc  0.25   ± 0.2"]


async def test_evaluation_errors_are_notifications(fake_app, fake, evals_cwd: Path) -> None:
    fake.fail["evaluate"] = ConfigError("lm-eval does not know task(s) ['nope']")
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await pilot.pause()
        app.screen.query_one("#eval-tasks", Input).value = "nope"
        await pilot.press("enter")
        await settle(pilot)
        assert any("lm-eval does not know task(s) ['nope']" in n for n in notices(app))
        assert not app.screen.query_one("#eval-run").display
        assert app.is_running
        await pilot.press("e", "escape")  # cancelled: nothing runs
        await settle(pilot)
        assert isinstance(app.screen, RegistryScreen) and fake.evaluated == []


def test_form_command_and_default_tasks(tmp_path: Path, evals_cwd: Path) -> None:
    form = read_form(" recipes/evals/capitals , arc_easy,", "")
    assert form.tasks == ("recipes/evals/capitals", "arc_easy") and form.limit is None
    assert read_form("arc_easy", "3").limit == 3
    with pytest.raises(ConfigError) as info:
        read_form("no/such/folder", "x")
    assert len(info.value.problems) == 2 and "'no/such/folder'" in info.value.problems[0]
    with pytest.raises(ConfigError, match="name at least one task"):
        read_form(" , ", "")
    assert default_tasks() == ["recipes/evals/capitals", "recipes/evals/sums"]
    bundled = default_tasks(tmp_path / "elsewhere")  # no recipes/evals here: the bundled ones
    assert bundled and all(Path(t).is_absolute() and Path(t).is_dir() for t in bundled)
    assert eval_command("pirate@1", ["recipes/evals/capitals", "my task"], 2, server="http://h:1") == (
        "adapterhub eval pirate@1 --task recipes/evals/capitals --task 'my task' --limit 2 "
        "--server http://h:1")


def test_evaluation_and_gate_lines() -> None:
    mixed = [make_evaluation("a@1", "t", "acc", 0.5, samples=3, harness=""),
             make_evaluation("a@1", "t", "exact_match,strict-match", 1.0, samples=4, harness="")]
    assert evaluation_lines(mixed) == ["evaluations", "t", "  acc                       0.5  n=3",
                                       "  exact_match,strict-match  1  n=4"]
    assert gate_lines({"prod": ["t:acc>=parent", "forgetting<=1.2"], "beta": ["t:acc>0.5"]}) == [
        "gates of beta", "  t:acc>0.5", "gates of prod", "  t:acc>=parent", "  forgetting<=1.2"]
