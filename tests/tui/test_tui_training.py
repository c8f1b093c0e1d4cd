"""The training screen over the fake backend: form, inline validation, command, run, cancel."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.widgets import Button, Input, ProgressBar, RichLog, Select, Static
from tui_testing import notices, settle

from adapterhub.training.votes import Answer, PreferenceStore
from adapterhub_tui.backend import Capability
from adapterhub_tui.recipes import check_form, cli_command, load_recipe, overrides
from adapterhub_tui.screens.registry import RegistryScreen
from adapterhub_tui.screens.training import TrainingScreen, format_eta
from adapterhub_tui.widgets.curves import Curves, pick_metrics


def text(app, selector: str) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one(selector, Static).render())



async def open_training(app, pilot, recipe: str) -> TrainingScreen:  # type: ignore[no-untyped-def]
    await pilot.press("f2")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, TrainingScreen)
    screen.choose_recipe(next(r for r in screen.recipes if r.title == recipe))
    await pilot.pause()
    return screen


async def test_recipe_fills_the_form_and_the_command_follows_edits(fake_app, recipe_dir) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_training(app, pilot, "tiny-sft")
        options = [str(v) for _, v in screen.query_one("#recipe", Select)._options if v != Select.NULL]
        assert sorted(Path(o).name for o in options) == ["tiny-dpo.yaml", "tiny-sft.yaml"]
        assert screen.raw_form()["r"] == "8" and screen.raw_form()["method"] == "sft"
        assert text(app, "#command").endswith("tiny-sft.yaml")  # nothing changed yet
        screen.query_one("#field-r", Input).focus()
        await pilot.press("backspace", "1", "6")
        await pilot.pause()
        assert text(app, "#command").endswith("tiny-sft.yaml --set lora.r=16")
        # An invalid field: the problem shows under it, the command says so, Start is off.
        await pilot.press("backspace", "backspace", "0")
        await pilot.pause()
        assert "greater than or equal to 1" in text(app, "#problem-r")
        assert text(app, "#command") == "(fix the fields above)"
        assert screen.query_one("#start", Button).disabled
        screen.query_one("#field-parent", Input).value = "no/such"
        await pilot.pause()
        assert "not allowed" in text(app, "#problem-parent")
        await pilot.press("f5")  # refused with a notification, not a crash
        await pilot.pause()
        assert any("fix the fields" in n for n in notices(app))


async def test_a_run_shows_progress_and_the_new_version(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_training(app, pilot, "tiny-sft")
        screen.query_one("#field-name", Input).value = "fresh"
        await pilot.pause()
        await pilot.press("f5")
        await settle(pilot)
        assert fake.trained[0].overrides == {"name": "fresh"}
        kinds = [e.kind for e in screen.events]
        assert kinds[0] == "start" and kinds.count("step") == 6 and kinds[-1] == "done"
        bar = screen.query_one("#progress", ProgressBar)
        assert (bar.progress, bar.total) == (6, 6)
        assert text(app, "#run-stats").startswith("step 6/6  ETA 0:00  1,006 tok/s  loss")
        loss = screen.query_one("#loss-curve", Curves)
        assert [x for x, _ in loss.series["loss"]] == [1, 2, 3, 4, 5, 6]
        log = "\n".join(str(line.text) for line in screen.query_one("#log", RichLog).lines)
        assert "registered fresh@1" in log
        assert any("registered fresh@1" in n for n in notices(app))
        await pilot.press("f1")
        await settle(pilot)
        assert isinstance(app.screen, RegistryScreen)
        assert app.screen.selected_ref == "fresh@1"  # the new version, highlighted


async def test_method_metrics_are_plotted_for_dpo(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_training(app, pilot, "tiny-dpo")
        await pilot.press("f5")
        await settle(pilot)
        metrics = screen.query_one("#metric-curve", Curves)
        assert metrics.shown_series() == ["reward_margin", "kl"]
        assert screen.query_one("#loss-curve", Curves).shown_series() == ["loss", "eval loss"]


async def test_cancel_stops_the_run_and_registers_nothing(fake_app, fake) -> None:
    fake.hold_training = threading.Event()
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_training(app, pilot, "tiny-sft")
        before = len(fake.versions)
        await pilot.press("f5")
        while len(screen.events) < 3:
            await pilot.pause(0.02)
        assert screen.query_one("#field-r", Input).disabled  # the form is locked while it runs
        await pilot.press("f5")
        await pilot.pause()
        assert any("already going" in n for n in notices(app))
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert len(fake.versions) == before
        assert screen.events[-1].kind == "cancelled"
        assert any("cancelled" in n for n in notices(app))
        assert not screen.running and not screen.query_one("#field-r", Input).disabled


async def test_recipe_problems_from_the_backend_are_listed(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_training(app, pilot, "tiny-sft")
        screen.query_one("#field-parent", Input).value = "ghost@3"
        await pilot.pause()
        await pilot.press("f5")
        await settle(pilot)
        assert "ghost@3" in text(app, "#problems")
        assert not screen.events  # never started


async def test_training_refused_without_the_capability(fake_app, fake) -> None:
    fake.capabilities = frozenset({Capability.TAG})
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await open_training(app, pilot, "tiny-sft")
        await pilot.press("f5")
        await pilot.pause()
        assert any("training is not available with fake backend" in n for n in notices(app))
        assert not fake.trained


async def test_dpo_offer_uses_the_votes_and_the_preferred_adapter(fake_app, fake) -> None:
    store = PreferenceStore.in_home(fake.home)
    store.vote("q1", Answer("pirate@2", "arr"), [Answer(None, "plain")])
    store.vote("q2", Answer("pirate@2", "arr!"), [Answer("json-answers@1", "{}")])
    store.vote("q3", Answer("json-answers@1", "{}"), [Answer(None, "plain")])
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f2", "ctrl+y")
        await pilot.pause()
        screen = app.screen
        form = screen.raw_form()
        assert form["method"] == "dpo" and form["dataset"] == "compare.jsonl"
        assert form["parent"] == "pirate@2" and form["name"] == "pirate-dpo"
        assert form["lr"] == "5e-05" and form["steps"] == "4"  # the bundled DPO recipe's settings
        assert "DPO on 3 voted pairs; parent pirate@2 (chosen 2×)" in text(app, "#offer")
        written = store.path.parent / "dpo-on-votes.yaml"
        assert text(app, "#command") == f"adapterhub train {written}"  # the file says it all
        assert written.read_text().startswith(f"# adapterhub train {written}\n")
        await pilot.press("f5")
        await settle(pilot)
        request = fake.trained[0]
        assert request.recipe == written and not request.overrides
        assert fake.resolve("pirate-dpo@2").parent == "pirate@2"  # pirate-dpo@1 existed already


async def test_dpo_offer_without_votes_says_how_to_get_them(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("f2", "ctrl+y")
        await pilot.pause()
        assert any("no votes yet" in n for n in notices(app))


def test_metric_choice_prefers_margin_reward_kl() -> None:
    dpo = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"]
    assert pick_metrics(dpo, 3) == ["rewards/margins", "rewards/chosen", "rewards/accuracies"]
    grpo = ["reward_std", "reward", "kl", "completion_length"]
    assert pick_metrics(grpo, 3) == ["reward", "kl", "completion_length"]


def test_form_model_and_command(recipe_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(recipe_dir)
    recipe = load_recipe(recipe_dir / "tiny-sft.yaml")
    form, problems = check_form({"method": "sft", "name": "x", "parent": "", "dataset": "tiny-sft.jsonl",
                                 "r": "4", "alpha": "8", "lr": "1e-4", "steps": "10"}, root=recipe_dir)
    assert problems == {} and form is not None and form.parent is None
    sets = overrides(recipe, form)
    assert sets == {"name": "x", "lora.r": 4, "lora.alpha": 8.0,  # the dataset is the recipe's
                    "training.learning_rate": 1e-4, "training.max_steps": 10}
    form, _ = check_form({"method": "sft", "name": "tiny-sft", "dataset": " ", "r": "8",
                          "alpha": "16", "lr": "0.0002", "steps": "6"}, root=recipe_dir)
    assert form is not None and overrides(recipe, form) == {}  # empty dataset keeps the recipe's
    assert cli_command(recipe, {"name": "my run"}) == "adapterhub train tiny-sft.yaml --set 'name=my run'"
    _, problems = check_form({"method": "nope", "name": "", "dataset": "missing.jsonl", "r": "x",
                              "alpha": "-1", "lr": "2", "steps": "0"}, root=recipe_dir)
    assert set(problems) == {"method", "name", "dataset", "r", "alpha", "lr", "steps"}
    form, problems = check_form({"method": "sft", "name": "x", "r": "", "steps": ""}, root=recipe_dir)
    assert problems == {} and form is not None and overrides(recipe, form) == {"name": "x"}
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "?"


def test_every_bundled_recipe_fills_a_valid_form() -> None:
    """Each recipe under recipes/ opens in the training screen's form with no problem, and the
    form offers every method the library trains (a KTO recipe was a form error before)."""
    from adapterhub.training.methods import METHODS as LIBRARY_METHODS
    from adapterhub_tui.recipes import METHODS as FORM_METHODS
    from adapterhub_tui.recipes import find_recipes, form_values

    assert tuple(LIBRARY_METHODS) == FORM_METHODS
    bundled = Path(__file__).resolve().parents[2] / "recipes"
    recipes = find_recipes([bundled])
    assert {"concise-kto", "arithmetic-sft", "arithmetic-grpo"} <= {r.title for r in recipes}
    for recipe in recipes:
        form, problems = check_form(form_values(recipe), root=recipe.path.parent)
        assert problems == {} and form is not None, (recipe.title, problems)
        assert overrides(recipe, form) == {}, recipe.title
