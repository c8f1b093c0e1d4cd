"""The registry screen over the fake backend: opens first, filters, shows details, acts."""

from __future__ import annotations

from textual.widgets import DataTable, Input, Static
from tui_testing import notices, settle

from adapterhub.errors import AdapterNotFoundError
from adapterhub_tui.backend import Capability
from adapterhub_tui.screens.compare import CompareScreen
from adapterhub_tui.screens.dialogs import AskDialog, ConfirmDialog
from adapterhub_tui.screens.registry import RegistryScreen, matches, short_metrics
from adapterhub_tui.screens.training import TrainingScreen
from adapterhub_tui.widgets.curves import Curves


def table_refs(app) -> list[str]:  # type: ignore[no-untyped-def]
    table = app.screen.query_one(DataTable)
    return [table.get_row_at(i)[0] for i in range(table.row_count)]



async def test_opens_on_registry_with_every_version(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RegistryScreen)
        assert sorted(table_refs(app)) == sorted(v.ref for v in fake.versions)
        assert app.sub_title == "fake backend"


async def test_filter_as_you_type_and_details(fake_app) -> None:
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("slash", *"dpo")
        await pilot.pause()
        assert table_refs(app) == ["pirate-dpo@1"]
        await settle(pilot)
        summary = str(app.screen.query_one("#detail-summary", Static).render())
        assert "pirate-dpo@1 ← pirate@2 ← pirate@1" in summary  # the lineage chain
        assert "reward_margin" in summary
        curves = app.screen.query_one("#detail-curves", Curves)
        assert curves.display and len(curves.series["loss"]) == 8  # the stored step log
        # Two words must both match; a word nothing has empties the table.
        await pilot.press("ctrl+u", *"pirate prod")
        await pilot.pause()
        assert table_refs(app) == ["pirate@2"]
        await pilot.press(*" nothing-like-this")
        await pilot.pause()
        assert table_refs(app) == []
        await settle(pilot)
        assert "no versions match" in str(app.screen.query_one("#detail-summary", Static).render())


async def test_alias_through_the_dialog(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("slash", *"json", "enter")  # enter puts focus back on the table
        await pilot.pause()
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, AskDialog)
        await pilot.press(*"bad/alias")
        await pilot.pause()
        assert "not allowed" in str(app.screen.query_one(".problem", Static).render())
        await pilot.press("enter")  # refused while invalid
        assert isinstance(app.screen, AskDialog)
        await pilot.press(*["backspace"] * 9, *"candidate", "enter")
        await settle(pilot)
        assert fake.resolve("json-answers:candidate").ref == "json-answers@1"
        assert any("json-answers:candidate → json-answers@1" in n for n in notices(app))


async def test_delete_asks_first_and_refuses_a_parent(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("slash", *"pirate@2", "enter", "d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")  # no: nothing happens
        await pilot.pause()
        assert "pirate@2" in [v.ref for v in fake.versions]
        await pilot.press("d", "y")  # yes, but pirate-dpo@1 names it as parent
        await settle(pilot)
        assert "pirate@2" in [v.ref for v in fake.versions]
        assert any("pirate-dpo@1" in n and "parent" in n for n in notices(app))
        # The leaf can go.
        await pilot.press("slash", "ctrl+u", *"pirate-dpo", "enter", "d", "y")
        await settle(pilot)
        assert "pirate-dpo@1" not in [v.ref for v in fake.versions]
        assert "pirate-dpo@1" not in table_refs(app)


async def test_open_in_compare_and_train_from(fake_app) -> None:
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("slash", *"json", "enter", "c")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen)
        assert app.screen.query_one("#refs", Input).value == "base, json-answers@1"
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, RegistryScreen)
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, TrainingScreen)
        assert app.screen.query_one("#field-parent", Input).value == "json-answers@1"


async def test_errors_are_notifications_not_crashes(fake_app, fake) -> None:
    fake.fail["list_versions"] = AdapterNotFoundError("the registry is gone; run `adapterhub init`")
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert any("the registry is gone" in n for n in notices(app))
        # Push is not a capability of the fake: a warning, not a call.
        del fake.fail["list_versions"]
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("p")
        await pilot.pause()
        assert any("push to the Hugging Face Hub is not available" in n for n in notices(app))
        assert app.is_running


async def test_unreachable_backend_still_opens(fake_app, fake) -> None:
    fake.fail["describe"] = ConnectionRefusedError("connection refused")
    app = fake_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        assert any("ConnectionRefusedError: connection refused" in n for n in notices(app))
        assert isinstance(app.screen, RegistryScreen)
        await pilot.press("a")  # no capabilities known: refused with a warning
        await pilot.pause()
        assert any("tagging is not available" in n for n in notices(app))


def test_filter_and_metrics_helpers() -> None:
    from fake_backend import make_version

    v = make_version("pirate", 2, aliases=("prod",), metrics={"loss": 0.5, "r": 8, "ppl": 9.0})
    assert matches(v, "PIR prod") and not matches(v, "pirate dpo")
    assert short_metrics(dict(v.metrics)) == "loss 0.5 ppl 9"
    assert Capability.PUSH.value == "push"


async def test_every_action_is_in_the_command_palette(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Registry", "Train", "Compare", "DPO on votes", "Alias version", "Delete version",
                "Open in compare", "Train from version", "Evaluate version", "Push version",
                "Pull adapter"} <= titles
        await pilot.press("ctrl+p", *"Delete version")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)  # the palette ran the same action
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("ctrl+p", *"Compare")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Run compare", "Load prompts file", "Next prompt"} <= titles
