"""The TUI over the real in-process backend on the tiny model: registry, training, compare, eval.

Nothing is faked here: a real hub home with the tiny base, real imported adapters, the real
training runner (a few SFT steps), the real engine streaming the compare columns and
lm-evaluation-harness over it scoring a bundled task.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar, Static
from tui_testing import notices, settle

from adapterhub.training.votes import PreferenceStore
from adapterhub_tui import make_app
from adapterhub_tui.local import InProcessBackend
from adapterhub_tui.screens.compare import CompareScreen
from adapterhub_tui.screens.dialogs import EvaluateDialog
from adapterhub_tui.screens.registry import RegistryScreen
from adapterhub_tui.screens.training import TrainingScreen
from adapterhub_tui.widgets.answer import AnswerColumn
from adapterhub_tui.widgets.curves import Curves

CAPITALS = Path(__file__).resolve().parents[2] / "recipes" / "evals" / "capitals"


@pytest.fixture
def hub(home: Path, tiny_base_dir: Path, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return _tiny_hub(home, tiny_base_dir, tmp_path)


def _tiny_hub(home: Path, tiny_base_dir: Path, tmp_path: Path, **options: str):  # type: ignore[no-untyped-def]
    """A home on the tiny base with ``pirate@1`` (alias ``prod``) and ``json@1``."""
    from tinymodels import make_lora_folder

    from adapterhub import Hub

    hub = Hub(home, **options)
    hub.init(str(tiny_base_dir), precision="fp32")
    hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "a", seed=1), "pirate")
    hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "b", seed=2), "json")
    hub.tag("pirate@1", "prod")
    return hub


@pytest.fixture
def app(hub, sft_recipe: Path):  # type: ignore[no-untyped-def]
    return make_app(InProcessBackend(hub), recipe_dirs=[sft_recipe])


async def test_registry_over_the_real_registry(app, hub) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RegistryScreen)
        table = app.screen.query_one(DataTable)
        assert sorted(table.get_row_at(i)[0] for i in range(table.row_count)) == ["json@1", "pirate@1"]
        await pilot.press("slash", *"prod", "enter")
        await settle(pilot)
        assert table.row_count == 1
        summary = str(app.screen.query_one("#detail-summary", Static).render())
        assert "pirate@1  (prod)" in summary and "method   imported" in summary
        await pilot.press("a", *"candidate", "enter")
        await settle(pilot)
        assert hub.resolve("pirate:candidate").ref == "pirate@1"
        await pilot.press("slash", "ctrl+u", *"json", "enter", "d", "y")
        await settle(pilot)
        assert [v.ref for v in hub.list()] == ["pirate@1"]


async def test_train_a_recipe_and_see_the_new_version(app, hub, sft_recipe: Path) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        screen.choose_recipe(next(r for r in screen.recipes if r.title == "sums"))
        screen.query_one("#field-parent", Input).value = "pirate:prod"
        await pilot.pause()
        command = str(screen.query_one("#command", Static).render())
        assert command.endswith("sums.yaml --set parent=pirate@1") or "--set parent=" in command
        await pilot.press("f5")
        await settle(pilot)
        kinds = [e.kind for e in screen.events]
        assert kinds.count("step") == 3 and kinds[-1] == "done", kinds
        assert screen.query_one("#loss-curve", Curves).series["loss"]
        version = hub.resolve("sums")
        assert version.parent == "pirate@1" and version.method == "sft"
        assert any(f"registered {version.ref}" in n for n in notices(app))
        await pilot.press("f1")
        await settle(pilot)
        assert app.screen.selected_ref == version.ref
        summary = str(app.screen.query_one("#detail-summary", Static).render())
        assert "lineage  sums@1 ← pirate@1" in summary
        # The stored step log drives the detail curves.
        assert len(app.screen.query_one("#detail-curves", Curves).series["loss"]) == 3


async def test_recipe_problems_come_from_the_library(app, hub) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        screen = app.screen
        screen.choose_recipe(next(r for r in screen.recipes if r.title == "sums"))
        screen.query_one("#field-parent", Input).value = "ghost"
        await pilot.pause()
        await pilot.press("f5")
        await settle(pilot)
        assert "'ghost' does not exist" in str(screen.query_one("#problems", Static).render())
        assert not screen.events and [v.ref for v in hub.list("sums")] == []


async def test_compare_streams_through_the_engine_and_vote_is_stored(app, hub) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        screen.query_one("#refs", Input).value = "base, pirate:prod, json"
        screen.query_one("#max-tokens", Input).value = "8"
        screen.query_one("#prompt", Input).focus()
        await pilot.press(*"Hello there", "enter")
        await settle(pilot)
        columns = list(screen.query(AnswerColumn))
        assert [(c.state, c.finish_reason, c.tokens) for c in columns] == [("done", "length", 8)] * 3
        assert [c.resolved for c in columns] == [None, "pirate@1", "json@1"]
        # Greedy decoding through the engine equals the library's reference path (own base copy).
        from adapterhub import Hub

        reference = Hub(hub.home)
        assert columns[1].text.strip() == reference.generate("pirate@1", "Hello there", max_tokens=8)
        assert columns[1].text.strip() and columns[1].text != columns[2].text
        # The random tiny base answers only whitespace: a vote is refused, saying why.
        await pilot.press("3")
        await pilot.pause()
        assert any("answers of ['base'] are empty" in n for n in notices(app))
        store = PreferenceStore.in_home(hub.home)
        assert store.pairs() == []
        # Pairwise between the two adapters: right is better.
        screen.query_one("#refs", Input).value = "pirate:prod, json"
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("2")
        await pilot.pause()
        pairs = store.pairs()
        assert [(p.chosen.ref, p.rejected.ref, p.prompt) for p in pairs] == [
            ("json@1", "pirate@1", "Hello there")]
        assert pairs[0].chosen.text == columns[2].text and pairs[0].rejected.text == columns[1].text


async def test_unknown_adapter_is_a_notification(app) -> None:  # type: ignore[no-untyped-def]
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#refs", Input).value = "base, pirat"
        screen.query_one("#prompt", Input).focus()
        await pilot.press(*"hi", "enter")
        await settle(pilot)
        assert any("'pirat' does not exist" in n and "pirate" in n for n in notices(app))
        assert screen.query(AnswerColumn)[0].state == "done"
        assert app.is_running


async def test_the_loop_closes_compare_vote_dpo(app, hub) -> None:  # type: ignore[no-untyped-def]
    """Compare two adapters, vote, take the DPO offer, train: a DPO child of the winner."""
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#refs", Input).value = "pirate:prod, json"
        screen.query_one("#max-tokens", Input).value = "8"
        for prompt in ("Hello there", "What is two plus two?"):
            screen.query_one("#prompt", Input).value = prompt
            await pilot.press("f5")
            await settle(pilot)
            await pilot.press("2")  # json is better, twice
            await pilot.pause()
        await pilot.press("ctrl+y")
        await settle(pilot)
        training = app.screen
        assert isinstance(training, TrainingScreen)
        assert training.raw_form()["parent"] == "json@1" and training.raw_form()["name"] == "json-dpo"
        await pilot.press("f5")
        await settle(pilot)
        assert [e.kind for e in training.events][-1] == "done", training.events[-3:]
        version = hub.resolve("json-dpo")
        assert (version.method, version.parent) == ("dpo", "json@1")
        assert any(k.startswith("train/rewards/") for k in version.metrics)


async def test_thumbs_in_compare_are_the_kto_data_a_kto_run_trains_on(app, hub) -> None:  # type: ignore[no-untyped-def]
    """Mark single answers good or bad through the real engine's columns; the rows land in the
    hub home's thumbs file, and a KTO recipe over that file trains a child of the parent."""
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#refs", Input).value = "pirate:prod, json"
        screen.query_one("#max-tokens", Input).value = "8"
        for prompt in ("Hello there", "What is two plus two?"):
            screen.query_one("#prompt", Input).value = prompt
            await pilot.press("f5")
            await settle(pilot)
            await pilot.press("right", "minus", "right", "plus")  # pirate bad, json good
            await pilot.pause()
        assert any("column 2 (json@1) marked good: stored for KTO, 4 thumbs in all" in n for n in notices(app))
        columns = list(screen.query(AnswerColumn))
    store = PreferenceStore.in_home(hub.home)
    rows = [json.loads(line) for line in store.thumbs_path.read_text().splitlines()]
    assert [(r["ref"], r["label"], r["prompt"][0]["content"]) for r in rows] == [
        ("pirate@1", False, "Hello there"), ("json@1", True, "Hello there"),
        ("pirate@1", False, "What is two plus two?"), ("json@1", True, "What is two plus two?")]
    assert rows[-1]["completion"][0]["content"] == columns[1].text
    version = hub.train({"method": "kto", "name": "json-kto", "parent": "json@1", "forgetting_check": False,
                         "dataset": {"path": str(store.thumbs_path), "eval_fraction": 0},
                         "training": {"precision": "fp32", "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3}})
    assert (version.method, version.parent, version.metrics["train_steps"]) == ("kto", "json@1", 2)


async def test_evaluate_from_the_registry_and_see_the_numbers(  # type: ignore[no-untyped-def]
    home: Path, tiny_base_dir: Path, tmp_path: Path, sft_recipe: Path
) -> None:
    """``e`` runs lm-eval over the engine on a bundled task; the details show what was recorded."""
    hub = _tiny_hub(home, tiny_base_dir, tmp_path, compute_dtype="float32")
    app = make_app(InProcessBackend(hub), recipe_dirs=[sft_recipe])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("slash", *"prod", "enter")
        await settle(pilot)
        assert screen.selected_ref == "pirate@1"
        assert "evaluations  none yet" in str(screen.query_one("#detail-evals", Static).render())
        await pilot.press("e")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, EvaluateDialog)
        dialog.query_one("#eval-tasks", Input).value = str(CAPITALS)
        dialog.query_one("#eval-limit", Input).value = "2"
        await pilot.pause()
        await pilot.press("enter")
        await settle(pilot)

        assert app.screen is screen and not screen.query_one("#eval-run").display
        recorded = hub.registry.evaluations("pirate@1", latest=True)
        assert [(e.subject, e.samples) for e in recorded] == [
            ("adapterhub_capitals:acc", 2), ("adapterhub_capitals:acc_norm", 2)]
        assert all(e.setup["limit"] == 2 and e.setup["compute_dtype"] == "float32" for e in recorded)
        steps = [e for e in screen.eval_events if e.kind == "step"]
        assert screen.eval_events[0].kind == "start" and screen.eval_events[-1].kind == "done"
        assert steps and steps[-1].step == steps[-1].total_steps == 8  # 2 questions x 4 choices
        assert screen.query_one("#eval-progress", ProgressBar).progress == 8
        text = str(screen.query_one("#detail-evals", Static).render())
        assert "adapterhub_capitals  n=2" in text
        for e in recorded:
            shown = f"{e.value:.4g}"
            assert f"  {e.metric:<8}  {shown:<6} ± {e.stderr:.3g}" in text
        acc = recorded[0]
        assert any(f"adapterhub_capitals:acc {acc.value:.4g}" in n for n in notices(app))

        # A gate on an alias shows under the numbers it reads.
        hub.tag("pirate@1", "gated", gates=["adapterhub_capitals:acc>=0"])
        await pilot.press("r")
        await settle(pilot)
        assert "gates of gated\n  adapterhub_capitals:acc>=0" in str(
            screen.query_one("#detail-evals", Static).render())
