"""The TUI against a real ``adapterhub serve`` process on 127.0.0.1 (the HTTP backend).

The server is started through the CLI in a subprocess, exactly as a user would; the TUI talks to
it with the official ``openai`` client and the admin API, never importing the server package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.widgets import DataTable, Input, Static
from tui_testing import notices, settle

from adapterhub.training.votes import PreferenceStore
from adapterhub_tui import make_app
from adapterhub_tui.remote import HttpBackend
from adapterhub_tui.screens.compare import CompareScreen
from adapterhub_tui.screens.dialogs import EvaluateDialog
from adapterhub_tui.screens.training import TrainingScreen
from adapterhub_tui.widgets.answer import AnswerColumn
from adapterhub_tui.widgets.curves import Curves

CAPITALS = Path(__file__).resolve().parents[2] / "recipes" / "evals" / "capitals"
ADMIN_KEY = "tui-admin-key-0123456789abcdef"
INFERENCE_KEY = "tui-inference-key-0123456789ab"



@pytest.fixture
def served(home: Path, tiny_base_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A real server over a home with the tiny base and two adapters; yields its URL."""
    from tinymodels import make_lora_folder

    from adapterhub import Hub

    hub = Hub(home)
    hub.init(str(tiny_base_dir), precision="fp32")
    hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "a", seed=1), "pirate")
    hub.import_adapter(make_lora_folder(tiny_base_dir, tmp_path / "b", seed=2), "json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ADAPTERHUB_ADMIN_KEYS": ADMIN_KEY, "ADAPTERHUB_API_KEYS": INFERENCE_KEY}
    env.pop("ADAPTERHUB_HOME", None)
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "adapterhub.cli", "serve", "--home", str(home), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def test_tui_drives_a_real_server(served: str, home: Path, tmp_path: Path) -> None:
    from adapterhub import Hub
    from adapterhub.registry import Evaluation

    Hub(home).registry.record_evaluations([  # as `adapterhub eval` on the server's home records them
        Evaluation("pirate", 1, "adapterhub_capitals", "acc", 0.75, stderr=0.25, samples=4,
                   harness="lm-eval 0.4.13", setup={"limit": 4}),
    ])
    local = tmp_path / "local-home"
    app = make_app(HttpBackend(served, home=local, api_key=ADMIN_KEY), recipe_dirs=[])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert app.sub_title == served
        table = app.screen.query_one(DataTable)
        assert sorted(table.get_row_at(i)[0] for i in range(table.row_count)) == ["json@1", "pirate@1"]
        # Alias through the admin API, seen in the server's registry.
        await pilot.press("slash", *"pirate", "enter", "a", *"prod", "enter")
        await settle(pilot)
        assert Hub(home).resolve("pirate:prod").ref == "pirate@1"
        summary = str(app.screen.query_one("#detail-summary", Static).render())
        assert "pirate@1  (prod)" in summary and "lineage  pirate@1" in summary
        # Recorded evaluations come through GET /admin/versions/{ref}.
        evals = str(app.screen.query_one("#detail-evals", Static).render())
        assert evals.splitlines() == ["evaluations", "adapterhub_capitals  n=4", "  acc  0.75   ± 0.25",
                                      "harness  lm-eval 0.4.13"]  # and no gates: no route reads them
        # Running one is a job on the server: lm-eval there, recorded in its registry.
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, EvaluateDialog)
        app.screen.query_one("#eval-tasks", Input).value = str(CAPITALS)
        app.screen.query_one("#eval-limit", Input).value = "2"
        await pilot.press("enter")
        await settle(pilot)
        recorded = Hub(home).registry.evaluations("pirate@1", latest=True)
        assert sorted((e.subject, e.samples) for e in recorded) == [
            ("adapterhub_capitals:acc", 2), ("adapterhub_capitals:acc_norm", 2)]
        acc = next(e for e in recorded if e.metric == "acc")
        assert any(f"adapterhub_capitals:acc {acc.value:.4g}" in n for n in notices(app)), notices(app)

        # Compare streams over SSE with the same sampling, resolved versions from the header.
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        screen.query_one("#refs", Input).value = "base, pirate:prod, json"
        screen.query_one("#max-tokens", Input).value = "8"
        screen.query_one("#prompt", Input).value = "Hello there"
        await pilot.press("f5")
        await settle(pilot)
        columns = list(screen.query(AnswerColumn))
        assert [(c.state, c.tokens, c.finish_reason) for c in columns] == [("done", 8, "length")] * 3
        assert [c.resolved for c in columns] == [None, "pirate@1", "json@1"]
        assert columns[1].text.strip() == Hub(home).generate("pirate@1", "Hello there", max_tokens=8)
        await pilot.press("2")  # the random base only answers whitespace: refused, not stored
        await pilot.pause()
        assert any("answers of ['base'] are empty" in n for n in notices(app))
        screen.query_one("#refs", Input).value = "pirate:prod, json"
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("1")
        await pilot.pause()
        pairs = PreferenceStore.in_home(home).pairs()  # votes land in the server's home
        assert [(p.chosen.ref, p.rejected.ref) for p in pairs] == [("pirate@1", "json@1")]

        # Errors come back as the library's own: a 404 names the missing adapter.
        screen.query_one("#refs", Input).value = "ghost"
        await pilot.press("f5")
        await settle(pilot)
        assert any("ghost" in n and "does not exist" in n for n in notices(app))
        assert app.is_running


async def start_sums(app: Any, pilot: Any, **fields: str) -> TrainingScreen:
    """Open the training screen, choose the ``sums`` recipe, set form ``fields`` and start it."""
    await settle(pilot)
    await pilot.press("f2")
    await pilot.pause()
    training = app.screen
    assert isinstance(training, TrainingScreen)
    training.choose_recipe(next(r for r in training.recipes if r.title == "sums"))
    for selector, value in fields.items():
        training.query_one(selector, Input).value = value
    await pilot.pause()
    await pilot.press("f5")
    return training


async def test_train_compare_vote_and_train_the_dpo_child_over_http(
    served: str, home: Path, tmp_path: Path, sft_recipe: Path
) -> None:
    """The loop with every step on the server: an SFT job with live curves, compare, votes, the
    DPO offer over the votes as a job, the DPO child registered in the server's registry."""
    from adapterhub import Hub

    local = tmp_path / "local-home"
    app = make_app(HttpBackend(served, home=local, api_key=ADMIN_KEY), recipe_dirs=[sft_recipe])
    async with app.run_test(size=(120, 40)) as pilot:
        training = await start_sums(app, pilot, **{"#field-parent": "pirate@1"})
        await settle(pilot)
        kinds = [e.kind for e in training.events]
        assert kinds.count("step") == 3 and kinds[-1] == "done", kinds
        assert len(training.query_one("#loss-curve", Curves).series["loss"]) == 3
        sums = Hub(home).resolve("sums")
        assert (sums.method, sums.parent) == ("sft", "pirate@1")
        assert any(f"registered {sums.ref}" in n for n in notices(app)), notices(app)

        await pilot.press("f3")
        await pilot.pause()
        compare = app.screen
        compare.query_one("#refs", Input).value = "sums, json"
        compare.query_one("#max-tokens", Input).value = "8"
        for prompt in ("Hello there", "What is two plus two?"):
            compare.query_one("#prompt", Input).value = prompt
            await pilot.press("f5")
            await settle(pilot)
            await pilot.press("2")  # json is better, twice
            await pilot.pause()
        voted = PreferenceStore.in_home(home).pairs()  # on the server, with the versions that answered
        assert [(p.chosen.ref, p.rejected.ref, p.voter) for p in voted] == [("json@1", "sums@1", "env-admin-0")] * 2
        await pilot.press("ctrl+y")
        await settle(pilot)
        offer = app.screen
        assert isinstance(offer, TrainingScreen) and offer.raw_form()["parent"] == "json@1"
        await pilot.press("f5")
        await settle(pilot)
        assert [e.kind for e in offer.events][-1] == "done", offer.events[-3:]
        child = Hub(home).resolve("json-dpo")
        assert (child.method, child.parent) == ("dpo", "json@1")
        assert any(k.startswith("train/rewards/") for k in child.metrics)


async def test_thumbs_over_http_land_in_the_servers_kto_data(served: str, home: Path, tmp_path: Path) -> None:
    """Thumbs from the TUI go through ``POST /v1/preferences`` into the server's thumbs file, with
    the versions that answered and the key that voted; an inference key may thumb too."""
    from adapterhub.training.datasets import load_training_data
    from adapterhub.training.recipe import DatasetConfig

    app = make_app(HttpBackend(served, home=tmp_path / "local", api_key=INFERENCE_KEY), recipe_dirs=[])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        screen.query_one("#refs", Input).value = "pirate, json"
        screen.query_one("#max-tokens", Input).value = "8"
        screen.query_one("#prompt", Input).value = "Hello there"
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("right", "plus", "right", "minus")
        await pilot.pause()
        columns = list(screen.query(AnswerColumn))
        assert [c.thumb for c in columns] == [True, False], notices(app)
        assert any("column 2 (json@1) marked bad: stored for KTO, 2 thumbs in all" in n for n in notices(app))
        await pilot.press("minus")
        await pilot.pause()
        assert any("already marked bad" in n for n in notices(app))
    store = PreferenceStore.in_home(home)  # the server's home, not the TUI's
    rows = [json.loads(line) for line in store.thumbs_path.read_text().splitlines()]
    assert [(r["ref"], r["label"], r["voter"]) for r in rows] == [("pirate@1", True, "env-inference-0"),
                                                                   ("json@1", False, "env-inference-0")]
    assert [r["completion"][0]["content"] for r in rows] == [columns[0].text, columns[1].text]
    assert not (tmp_path / "local" / "preferences" / "thumbs.jsonl").exists()
    data = load_training_data(DatasetConfig(path=str(store.thumbs_path), eval_fraction=0), root=tmp_path,
                              formats=("unpaired_preference",), method="kto")
    assert data.format == "unpaired_preference" and len(data.train) == 2


async def test_inference_key_lists_but_cannot_tag(served: str, tmp_path: Path) -> None:
    app = make_app(HttpBackend(served, home=tmp_path, api_key=INFERENCE_KEY), recipe_dirs=[])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert app.sub_title == f"{served} (inference key)"
        table = app.screen.query_one(DataTable)
        assert sorted(table.get_row_at(i)[0] for i in range(table.row_count)) == ["json@1", "pirate@1"]
        assert not app.screen.query_one("#detail-evals", Static).display  # /admin is refused
        await pilot.press("a")
        await pilot.pause()
        assert any("tagging is not available" in n for n in notices(app))


async def test_unreachable_server_is_a_notification(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    app = make_app(HttpBackend(f"http://127.0.0.1:{port}", home=tmp_path), recipe_dirs=[])
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert any("cannot reach the adapterhub server" in n for n in notices(app))
        assert app.is_running


async def test_cancelling_a_training_over_http_registers_nothing(served: str, home: Path, tmp_path: Path,
                                                                  sft_recipe: Path) -> None:
    from adapterhub import Hub

    app = make_app(HttpBackend(served, home=tmp_path / "local-home", api_key=ADMIN_KEY), recipe_dirs=[sft_recipe])
    async with app.run_test(size=(120, 40)) as pilot:
        training = await start_sums(app, pilot, **{"#field-steps": "500"})
        deadline = time.monotonic() + 120
        while not any(e.kind == "step" for e in training.events):  # live events from the job's stream
            assert time.monotonic() < deadline, training.events
            await pilot.pause(0.05)
        await pilot.press("ctrl+t")
        await settle(pilot)
        assert training.events[-1].kind == "cancelled" and not training.running
        assert any("cancelled" in n for n in notices(app)), notices(app)
    assert [v.ref for v in Hub(home).list()] == ["json@1", "pirate@1"]  # nothing registered
