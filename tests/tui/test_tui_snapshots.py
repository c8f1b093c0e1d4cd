"""Snapshots of the three main screens at 80x24 over the fake backend (pytest-textual-snapshot).

The SVGs live in ``__snapshots__/test_tui_snapshots/``; they are the text screenshots the issue
note points at. Update them after a deliberate UI change with
``pytest tests/tui/test_tui_snapshots.py --snapshot-update`` and look at them before committing.
Everything that could move is pinned: times (fixed version timestamps, TZ=UTC), speeds (a
ticking fake clock), paths (the recipes sit under the working directory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from tui_testing import settle

SIZE = (80, 24)


@pytest.fixture(autouse=True)
def _pinned(monkeypatch: pytest.MonkeyPatch, recipe_dir: Path) -> Any:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(recipe_dir.parent)  # the command shows recipes/<name>.yaml
    yield
    monkeypatch.undo()
    time.tzset()


def test_registry_screen(snap_compare, fake_app) -> None:  # type: ignore[no-untyped-def]
    async def ready(pilot: Pilot[Any]) -> None:
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=ready)


def test_training_screen_after_a_run(snap_compare, fake_app, fake) -> None:  # type: ignore[no-untyped-def]
    fake.train_steps = 12

    async def train(pilot: Pilot[Any]) -> None:
        await pilot.press("f2")
        await pilot.pause()
        screen = pilot.app.screen
        screen.choose_recipe(next(r for r in screen.recipes if r.title == "tiny-dpo"))
        await pilot.pause()
        await pilot.press("f5")
        await settle(pilot)
        await pilot.pause(0.5)  # the curves repaint at 4 fps

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=train)


def test_compare_screen_after_a_vote(snap_compare, fake_app) -> None:  # type: ignore[no-untyped-def]
    async def compare_and_vote(pilot: Pilot[Any]) -> None:
        await pilot.press("f3")
        await pilot.pause()
        screen = pilot.app.screen
        screen.query_one("#refs").value = "base, pirate:prod, json-answers"
        screen.query_one("#prompt").value = "What is the capital of France?"
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("2")
        await pilot.pause()

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=compare_and_vote)
