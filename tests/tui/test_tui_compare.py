"""The compare screen over the fake backend: streamed columns, votes stored as pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, Static
from tui_testing import notices, settle

from adapterhub.errors import AdapterNotFoundError, ConfigError
from adapterhub.training.votes import Answer, PreferenceStore
from adapterhub_tui.screens.compare import CompareScreen, parse_refs, parse_sampling, read_prompts
from adapterhub_tui.screens.training import TrainingScreen
from adapterhub_tui.widgets.answer import AnswerColumn


async def run_compare(app, pilot, refs: str, prompt: str) -> CompareScreen:  # type: ignore[no-untyped-def]
    await pilot.press("f3")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, CompareScreen)
    screen.query_one("#refs", Input).value = refs
    screen.query_one("#prompt", Input).focus()
    await pilot.press(*prompt, "enter")
    await settle(pilot)
    await pilot.pause()
    return screen


async def test_answers_stream_side_by_side_with_counts(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_compare(app, pilot, "base, pirate:prod, json-answers", "Capital?")
        columns = screen.query(AnswerColumn)
        assert [c.ref for c in columns] == [None, "pirate:prod", "json-answers"]
        assert [c.resolved for c in columns] == [None, "pirate@2", "json-answers@1"]
        assert columns[1].text == fake.answers["pirate@2"]
        assert columns[1].tokens == len(fake.answers["pirate@2"].split())
        stats = str(columns[1].query_one(".answer-stats", Static).render())
        assert stats.startswith(f"{columns[1].tokens} tok") and "tok/s" in stats and "[stop]" in stats
        assert columns[0].border_title == "1 base (tiny-base)"
        # The same sampling for every column.
        assert len({s for _, s in fake.streamed}) == 1 and len(fake.streamed) == 3
        assert "vote: 1-3" in str(screen.query_one("#compare-status", Static).render())


async def test_vote_stores_pairs_in_trl_format(fake_app, fake) -> None:
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_compare(app, pilot, "base pirate@2 json-answers", "Capital?")
        assert app.focused is screen.query_one("#columns")  # digits vote, not type
        await pilot.press("2")
        await pilot.pause()
        lines = (fake.home / "preferences" / "compare.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == 2
        assert records[0]["prompt"] == [{"role": "user", "content": "Capital?"}]
        assert records[0]["chosen"] == [{"role": "assistant", "content": fake.answers["pirate@2"]}]
        assert [r["rejected"][0]["content"] for r in records] == [
            fake.answers[None], fake.answers["json-answers@1"]]
        assert [(r["chosen_ref"], r["rejected_ref"]) for r in records] == [
            ("pirate@2", None), ("pirate@2", "json-answers@1")]
        assert screen.query(AnswerColumn)[1].has_class("-winner")
        await pilot.press("1")  # one vote per run
        await pilot.pause()
        assert len((fake.home / "preferences" / "compare.jsonl").read_text().splitlines()) == 2
        assert any("already voted" in n for n in notices(app))
        await pilot.press("4")
        await pilot.pause()
        assert any("no column 4" in n for n in notices(app))
        # The loop closes: DPO on the votes, parent = the winner.
        await pilot.press("ctrl+y")
        await pilot.pause()
        assert isinstance(app.screen, TrainingScreen)
        assert app.screen.raw_form()["parent"] == "pirate@2"


async def test_prompts_from_a_file_advance_after_each_vote(fake_app, fake, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "first?"}\n\n{"prompt": "second?"}\n')
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("f3", "ctrl+o")
        await pilot.pause()
        await pilot.press(*str(prompts), "enter")
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#prompt", Input).value == "first?"
        screen.query_one("#refs", Input).value = "base, pirate@2"
        await pilot.press("f5")
        await settle(pilot)
        await pilot.press("1")  # pairwise: left is better, then the next prompt runs
        await settle(pilot)
        assert screen.query_one("#prompt", Input).value == "second?"
        assert screen.last_prompt == "second?" and not screen.voted
        await pilot.press("2")
        await pilot.pause()
        pairs = PreferenceStore.in_home(fake.home).pairs()
        assert [(p.prompt, p.chosen.ref) for p in pairs] == [("first?", None), ("second?", "pirate@2")]


async def test_a_failing_column_is_a_notification(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_compare(app, pilot, "base, ghost", "hello")
        ghost = screen.query(AnswerColumn)[1]
        assert ghost.state == "error" and "does not exist" in str(
            ghost.query_one(".answer-stats", Static).render())
        assert any("'ghost' does not exist" in n for n in notices(app))
        await pilot.press("1")  # cannot vote while a column failed
        await pilot.pause()
        assert any("wait until every column" in n for n in notices(app))
        # Bad settings are named, nothing runs.
        screen.query_one("#refs", Input).value = "a b c d e"
        await pilot.press("f5")
        await settle(pilot)
        assert any("up to 4 adapters" in n for n in notices(app))
        assert app.is_running


def test_parsers() -> None:
    assert parse_refs("base, pirate@2  json:prod") == [None, "pirate@2", "json:prod"]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_refs("base base")
    with pytest.raises(ConfigError, match="no columns"):
        parse_refs(" , ")
    assert parse_sampling("32", "0.7", "").max_tokens == 32
    with pytest.raises(ConfigError, match="max_tokens='many' is not a whole number"):
        parse_sampling("many", "0", "0")
    with pytest.raises(ConfigError, match="temperature=-1.0 must be >= 0"):
        parse_sampling("8", "-1", "0")


def test_read_prompts(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match="line 1 is not JSON with a 'prompt' key"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_prompts(tmp_path / "missing.txt")


def test_preference_store_rules(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "p.jsonl")
    with pytest.raises(ConfigError, match="answers of \\['base'\\] are empty"):
        store.vote("q", Answer("a@1", "yes"), [Answer(None, "  ")])
    with pytest.raises(ConfigError, match="at least two columns"):
        store.vote("q", Answer("a@1", "yes"), [])
    assert store.preferred_adapter() is None
    store.vote("q", Answer("a@1", "A"), [Answer("b@1", "B")])
    store.vote("q", Answer("b@1", "B"), [Answer("a@1", "A")])
    with store.path.open("a") as f:
        f.write('{"prompt": [{"role": "us')  # a torn last line is skipped
    assert len(store.pairs()) == 2
    assert store.preferred_adapter() == "b@1"  # tie: the latest winner


def test_fake_raises_library_errors() -> None:
    from fake_backend import FakeBackend

    with pytest.raises(AdapterNotFoundError):
        FakeBackend(Path("/nonexistent")).resolve("ghost")


async def test_a_clicked_answer_is_selected_and_the_arrows_still_move(fake_app) -> None:
    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_compare(app, pilot, "base, pirate@2, json-answers", "Capital?")
        columns = list(screen.query(AnswerColumn))
        assert await pilot.click("#answer-1 .answer-text")  # the text, not the column's border
        await pilot.pause()
        assert screen.selected_column is columns[0] and app.focused is columns[0]
        await pilot.press("right")  # not swallowed by a scroll view inside the column
        await pilot.pause()
        assert screen.selected_column is columns[1]


async def test_thumbs_mark_single_answers_as_kto_rows(fake_app, fake, tmp_path: Path) -> None:
    from adapterhub.training.datasets import load_training_data
    from adapterhub.training.recipe import DatasetConfig

    app = fake_app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_compare(app, pilot, "base, pirate@2, json-answers", "Capital?")
        await pilot.press("plus")  # nothing selected yet: said how
        await pilot.pause()
        assert any("select an answer first" in n for n in notices(app))
        await pilot.press("right", "right", "plus")  # column 2 is good
        await pilot.pause()
        columns = list(screen.query(AnswerColumn))
        assert screen.selected_column is columns[1] and columns[1].thumb is True
        assert "+ good" in str(columns[1].border_subtitle)
        assert any("column 2 (pirate@2) marked good: stored for KTO, 1 thumbs in all" in n for n in notices(app))
        await pilot.press("minus")  # one thumb per answer
        await pilot.pause()
        assert any("already marked good" in n for n in notices(app))
        await pilot.press("right", "minus", "left", "left", "minus")  # column 3 bad, then the base bad
        await pilot.pause()
        assert [c.thumb for c in columns] == [False, True, False]
        assert "3 thumbs" in str(screen.query_one("#compare-status", Static).render())
        await pilot.press("2")  # a pair vote on the same answers still works
        await pilot.pause()
        assert screen.voted

    store = PreferenceStore.in_home(fake.home)
    rows = [json.loads(line) for line in store.thumbs_path.read_text().splitlines()]
    assert [(r["ref"], r["label"]) for r in rows] == [("pirate@2", True), ("json-answers@1", False), (None, False)]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Capital?"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": fake.answers["pirate@2"]}]
    assert store.thumbs_count() == 3
    data = load_training_data(DatasetConfig(path=str(store.thumbs_path), eval_fraction=0), root=tmp_path,
                              formats=("unpaired_preference",), method="kto")
    assert data.format == "unpaired_preference" and len(data.train) == 3
