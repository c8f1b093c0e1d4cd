"""Push and pull from the registry screen, in-process, against the test Hub (real client).

The ``hub`` fixture (tests/hubserver) sets ``HF_ENDPOINT``/``HF_TOKEN`` the way a user would, so
the TUI goes through ``adapterhub.Hub.push``/``pull`` with no extra settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable
from tui_testing import notices, settle

from adapterhub_tui import make_app
from adapterhub_tui.local import InProcessBackend


@pytest.fixture
def local(home: Path, tiny_base_dir: Path, lora_dir: Path):  # type: ignore[no-untyped-def]
    from adapterhub import Hub

    local = Hub(home)
    local.init(str(tiny_base_dir), precision="fp32")
    local.import_adapter(lora_dir, "pirate")
    return local


async def test_push_then_pull_from_the_registry_screen(hub, local) -> None:  # type: ignore[no-untyped-def]
    app = make_app(InProcessBackend(local), recipe_dirs=[])
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("p", *"alice/pirate-tui", "enter")
        await settle(pilot)
        pushed = [n for n in notices(app) if n.startswith("pushed pirate@1 → ")]
        assert pushed and "(v1, " in pushed[0], notices(app)
        await pilot.press("P", *"alice/pirate-tui@v1", "enter")
        await settle(pilot)
        pulled = [n for n in notices(app) if n.startswith("pulled alice/pirate-tui@v1 as ")]
        assert pulled, notices(app)
        ref = pulled[0].rsplit(" ", 1)[-1]
        version = local.resolve(ref)
        weights = "adapter_model.safetensors"  # byte-identical weights came back
        assert version.source["hub"] == "alice/pirate-tui" and version.source["commit"]
        assert version.files[weights] == local.resolve("pirate@1").files[weights]
        table = app.screen.query_one(DataTable)
        assert ref in [table.get_row_at(i)[0] for i in range(table.row_count)]
        # A repo that does not exist: the Hub's error as a notification.
        await pilot.press("P", *"alice/nothing-here", "enter")
        await settle(pilot)
        assert any("pulling alice/nothing-here" in n.title for n in app._notifications)
