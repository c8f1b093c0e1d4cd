"""The preference store's counts: as many as it reads back, kept by reading only what was appended
(by this process or another), and right again after the file is replaced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapterhub.training.votes import Answer, PreferenceStore

A, B, C = Answer("a@1", "first answer"), Answer("b@1", "second answer"), Answer(None, "base answer")


def test_count_follows_appends_from_another_process(tmp_path: Path) -> None:
    store = PreferenceStore.in_home(tmp_path)
    assert store.count() == 0 and store.thumbs_count() == 0  # no file yet
    store.vote("p1", A, [B, C])
    assert store.count() == 2
    script = ("import sys; from adapterhub.training.votes import Answer, PreferenceStore as S; "
              "s = S.in_home(sys.argv[1]); s.vote('p2', Answer('b@1', 'x'), [Answer(None, 'y')]); "
              "s.thumb('p2', Answer('b@1', 'x'), True)")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert store.count() == 3 == len(store.pairs())
    assert store.thumbs_count() == 1
    store.thumb("p3", A, False)
    assert store.thumbs_count() == 2


def test_count_reads_only_the_appended_bytes(tmp_path: Path) -> None:
    store = PreferenceStore.in_home(tmp_path)
    store.vote("p1", A, [B])
    assert store.count() == 1
    # Garble the counted line in place (same size, same file): a count that rereads the whole
    # file would drop it; the tally only reads past it.
    size = store.path.stat().st_size
    with store.path.open("r+b") as f:
        f.write(b"#" * (size - 1))
    store.vote("p2", A, [B])
    assert store.count() == 2
    assert len(store.pairs()) == 1  # what is there now: the garbled line does not parse


def test_torn_tail_and_replaced_file(tmp_path: Path) -> None:
    store = PreferenceStore.in_home(tmp_path)
    store.vote("p1", A, [B, C])
    with store.path.open("a") as f:
        f.write('{"prompt": [{"role": "user", "con')  # a crash mid-write
    assert store.count() == 2 == len(store.pairs())
    other = tmp_path / "other.jsonl"
    PreferenceStore(other).vote("q", A, [B])
    other.replace(store.path)  # another file under the same name: counted afresh
    assert store.count() == 1 == len(store.pairs())
    store.path.unlink()
    assert store.count() == 0


def test_a_vote_after_a_torn_tail_is_kept_and_line_separators_stay_inside_records(tmp_path: Path) -> None:
    store = PreferenceStore.in_home(tmp_path)
    store.vote("p1", A, [B])
    store.thumb("t1", A, True)
    for path in (store.path, store.thumbs_path):
        with path.open("a") as f:
            f.write('{"prompt": [{"role": "user", "con')  # a crash mid-write
    store.vote("p2", Answer("a@1", "one\u2028two\u0085three"), [B])  # separators splitlines() splits on
    store.thumb("t2", A, False)
    assert store.count() == 2 == len(store.pairs())
    assert store.pairs()[-1].chosen.text == "one\u2028two\u0085three"
    assert store.thumbs_count() == 2
