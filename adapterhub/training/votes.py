"""Votes on compared answers, kept as a preference dataset that DPO trains on as is.

A vote "column N is best" on one prompt (the TUI's compare, or ``POST /v1/preferences``) becomes
one pair per other column: (prompt, the chosen answer, that column's answer). Pairs are appended
to one JSONL file in the hub home, ``<home>/preferences/compare.jsonl``, in TRL's
*conversational* preference format::

    {"prompt": [{"role": "user", "content": "..."}],
     "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "chosen_ref": "pirate@2", "rejected_ref": null, "voter": "alice", "created_at": 1730000000.0}

The conversational form (not plain strings) is chosen because the answers were generated through
the base's chat template, so training renders the pair through the same template. The three
extra keys say who won; TRL drops columns it does not use, and they let the training screen pick
the most preferred adapter as the DPO run's parent.

Each append is one ``write`` of a whole line to a file opened for appending, then ``fsync``: a
crash leaves at most one torn last line, which reading skips.

Counting (the compare screen shows the total after every vote) never rereads the whole file: a
:class:`_Tally` remembers how far it has read and parses only the bytes appended since, by this
process or any other (a server and a TUI can share one home). A file that shrank or was replaced
(another inode) is counted again from the start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError

PREFERENCES_FILE = Path("preferences") / "compare.jsonl"
THUMBS_FILE = "thumbs.jsonl"
"""Beside the pairs: single answers marked good or bad, in TRL's unpaired preference format
(``prompt``, ``completion``, ``label``), the data a KTO recipe trains on."""


@dataclass(frozen=True)
class Answer:
    """One column's finished answer: which adapter (None = the base) and its text."""

    ref: str | None
    text: str


@dataclass(frozen=True)
class PreferencePair:
    """One stored pair: for ``prompt``, ``chosen`` was preferred over ``rejected``."""

    prompt: str
    chosen: Answer
    rejected: Answer
    created_at: float
    voter: str | None = None  # who voted (a server key's name); None in the TUI in-process

    def to_record(self) -> dict[str, Any]:
        """The JSONL record (TRL conversational preference format plus who won, and who voted)."""
        return {
            "prompt": [{"role": "user", "content": self.prompt}],
            "chosen": [{"role": "assistant", "content": self.chosen.text}],
            "rejected": [{"role": "assistant", "content": self.rejected.text}],
            "chosen_ref": self.chosen.ref,
            "rejected_ref": self.rejected.ref,
            "voter": self.voter,
            "created_at": self.created_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PreferencePair:
        """Read one record back.

        Raises:
            KeyError, IndexError, TypeError: the record is not in this format.
        """
        return cls(
            prompt=str(record["prompt"][0]["content"]),
            chosen=Answer(record.get("chosen_ref"), str(record["chosen"][0]["content"])),
            rejected=Answer(record.get("rejected_ref"), str(record["rejected"][0]["content"])),
            created_at=float(record.get("created_at", 0.0)),
            voter=record.get("voter"),
        )


class PreferenceStore:
    """Append-only preference pairs in one JSONL file.

    Args:
        path: the JSONL file; its folder is created on the first vote.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pairs = _Tally(self.path, _is_pair)
        self._thumbs = _Tally(self.thumbs_path, _is_thumb)

    @classmethod
    def in_home(cls, home: Path) -> PreferenceStore:
        """The store compare uses for hub home ``home``."""
        return cls(Path(home) / PREFERENCES_FILE)

    def vote(
        self, prompt: str, best: Answer, others: Sequence[Answer], *, voter: str | None = None
    ) -> list[PreferencePair]:
        """Record that ``best`` beat each of ``others`` on ``prompt`` (by ``voter``, when known).

        Returns:
            The pairs written, one per other answer.

        Raises:
            ConfigError: the prompt or an answer is empty, or there is nothing to compare with.
        """
        check_vote(prompt, best, others)
        now = time.time()
        pairs = [PreferencePair(prompt, best, other, now, voter) for other in others]
        self._append(self.path, "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in pairs))
        return pairs

    @property
    def thumbs_path(self) -> Path:
        """The file of single answers marked good or bad (KTO's data), beside the pairs."""
        return self.path.with_name(THUMBS_FILE)

    def thumb(self, prompt: str, answer: Answer, label: bool, *, voter: str | None = None) -> dict[str, Any]:
        """Record ``answer`` to ``prompt`` as desirable (``label`` true) or not; returns the record.

        Raises:
            ConfigError: the prompt or the answer is empty.
        """
        check_thumb(prompt, answer)
        record = {"prompt": [{"role": "user", "content": prompt}],
                  "completion": [{"role": "assistant", "content": answer.text}],
                  "label": bool(label), "ref": answer.ref, "voter": voter, "created_at": time.time()}
        self._append(self.thumbs_path, json.dumps(record, ensure_ascii=False) + "\n")
        return record

    def _append(self, path: Path, lines: str) -> None:
        """One ``write`` of whole lines, then ``fsync`` (a crash leaves at most a torn last line,
        which the next append ends with a newline first, so the new lines stay whole)."""
        data = lines.encode("utf-8")
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end:
                    f.seek(end - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def pairs(self) -> list[PreferencePair]:
        """Every stored pair, oldest first; lines that do not parse (a torn tail) are skipped."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return parse_pairs(text)

    def preferred_adapter(self) -> str | None:
        """The adapter ref chosen most often; see :func:`preferred_adapter`."""
        return preferred_adapter(self.pairs())

    def count(self) -> int | None:
        """How many pairs are stored (as many as :meth:`pairs` returns); reads only what was
        appended since the last count."""
        with self._lock:
            return self._pairs.count()

    def thumbs_count(self) -> int | None:
        """How many thumbs (KTO rows) are stored; reads only what was appended since the last count."""
        with self._lock:
            return self._thumbs.count()

    @property
    def recipe_folder(self) -> Path:
        """Where the DPO recipe over these pairs is written (beside them)."""
        return self.path.parent


def check_vote(prompt: str, best: Answer, others: Sequence[Answer]) -> None:
    """Refuse a vote that cannot become pairs.

    Raises:
        ConfigError: the prompt or an answer is empty, or there is nothing to compare with.
    """
    problems = []
    if not prompt.strip():
        problems.append("prompt is empty; run a prompt before voting")
    if not others:
        problems.append("a vote needs at least two columns; add an adapter ref to compare")
    empty = [_label(a.ref) for a in (best, *others) if not a.text.strip()]
    if empty:
        problems.append(
            f"answers of {empty!r} are empty; wait until every column has finished"
        )
    if problems:
        raise ConfigError(problems, source="vote")


def check_thumb(prompt: str, answer: Answer) -> None:
    """Refuse a thumb that cannot become a KTO row.

    Raises:
        ConfigError: the prompt or the answer is empty.
    """
    problems = [f"{what} is empty" for what, text in (("prompt", prompt), ("answer", answer.text))
                if not text.strip()]
    if problems:
        raise ConfigError(problems, source="thumb")


def parse_pairs(text: str) -> list[PreferencePair]:
    """The pairs of a preference JSONL text; a line that does not parse (a torn tail) is skipped."""
    pairs = []
    for line in text.split("\n"):  # not splitlines(): U+2028 and the like are inside records
        if not line.strip():
            continue
        try:
            pairs.append(PreferencePair.from_record(json.loads(line)))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return pairs


def preferred_adapter(pairs: Sequence[PreferencePair]) -> str | None:
    """The adapter ref chosen most often (ties: the most recent winner); None for no votes.

    The base (ref None) never counts: a DPO parent has to be an adapter.
    """
    refs = [p.chosen.ref for p in pairs if p.chosen.ref is not None]
    if not refs:
        return None
    wins = Counter(refs)
    best = max(wins.values())
    return [ref for ref in refs if wins[ref] == best][-1]


class _Tally:
    """The number of well-formed records in an append-only JSONL file, kept up to date by reading
    only the bytes past the last complete line it counted.

    Correct while other processes append (each append is whole lines, see the module docstring);
    a file that shrank or was replaced is counted from the start. A last line without its newline
    (a torn tail, or a write in flight) counts if it parses but is read again next time.
    """

    def __init__(self, path: Path, is_record: Callable[[Any], bool]) -> None:
        self.path = path
        self._is_record = is_record
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file counted
        self._offset = 0  # bytes up to the end of the last complete line counted
        self._total = 0  # records in those bytes

    def count(self) -> int:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:
                    self._file, self._offset, self._total = (stat.st_dev, stat.st_ino), 0, 0
                f.seek(self._offset)
                new = f.read()
        except FileNotFoundError:
            self._file, self._offset, self._total = None, 0, 0
            return 0
        *lines, tail = new.split(b"\n")
        self._total += sum(self._parses(line) for line in lines)
        self._offset += len(new) - len(tail)
        return self._total + self._parses(tail)

    def _parses(self, line: bytes) -> bool:
        return self.parses(self._is_record, line)

    @staticmethod
    def parses(is_record: Callable[[Any], bool], line: bytes) -> bool:
        """Whether one line is a whole record of the kind ``is_record`` accepts."""
        if not line.strip():
            return False
        try:
            return is_record(json.loads(line))
        except (ValueError, KeyError, IndexError, TypeError):  # a torn line (UnicodeDecodeError is a ValueError)
            return False


def _is_pair(record: Any) -> bool:
    PreferencePair.from_record(record)  # raises for anything pairs() would skip
    return True


def count_thumbs(text: str) -> int:
    """The KTO rows of a thumbs JSONL text, counted as the store counts them (a torn line is not one)."""
    return sum(_Tally.parses(_is_thumb, line) for line in text.encode("utf-8").split(b"\n"))


def _is_thumb(record: Any) -> bool:
    return bool(record["prompt"][0]["content"]) and "content" in record["completion"][0] and "label" in record


def _label(ref: str | None) -> str:
    return ref if ref is not None else "base"
