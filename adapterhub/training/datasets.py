"""Training data: load it, check its format for the method, fingerprint it, hold out an eval split.

Formats are TRL's, named by the columns they need:

==================  ==================================  ==============================
format              columns                             used by
==================  ==================================  ==============================
``messages``        ``messages`` (a conversation)       sft
``prompt_completion`` ``prompt``, ``completion``         sft
``preference``      ``prompt``, ``chosen``, ``rejected``  dpo, orpo, simpo, reward
``prompt_only``     ``prompt``                          grpo, ppo
==================  ==================================  ==============================

Prompt-only rows keep their other plain fields (numbers, strings), which GRPO passes to its reward
functions by column name (e.g. ``answer`` for an exact-answer check).

``prompt``/``completion``/``chosen``/``rejected`` are either plain strings or lists of chat
messages (``{"role": ..., "content": ...}``). Plain strings are treated as one user turn (prompt)
and one assistant turn (completion), so training always goes through the base's chat template,
exactly as serving does.

Design choices:

* **Check every row before training**, not at step 500: a bad row is reported with its line
  number, and all bad rows (up to a few) are reported at once.
* **Fingerprint by content**: sha256 over the canonical JSON of the training and eval rows, so
  the same data gives the same fingerprint wherever it came from, and any edit changes it.
* **Deterministic eval split** seeded by the recipe's seed, taken before ``max_examples``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from adapterhub.errors import ConfigError
from adapterhub.training.recipe import DatasetConfig

if TYPE_CHECKING:
    import datasets

DatasetFormat = Literal["messages", "prompt_completion", "preference", "unpaired_preference", "prompt_only"]
FORMATS: tuple[str, ...] = get_args(DatasetFormat)
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),  # label: true for a thumb up (KTO)
    "prompt_only": ("prompt",),
}
ROLES = ("system", "user", "assistant", "tool")
MIN_EXAMPLES_FOR_EVAL_SPLIT = 10
_MAX_REPORTED = 8


@dataclass(frozen=True)
class TrainingData:
    """A recipe's data, checked and split.

    ``train`` and ``eval`` are `datasets.Dataset` s in TRL's format (untokenized); ``eval`` is None
    when the recipe turns evaluation off or there are too few examples to hold some out.
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    format: DatasetFormat
    fingerprint: str
    source: str

    @property
    def summary(self) -> dict[str, Any]:
        """What the version records about its data."""
        return {
            "source": self.source,
            "format": self.format,
            "fingerprint": self.fingerprint,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval) if self.eval is not None else 0,
        }

    def map_splits(
        self, convert: Callable[[datasets.Dataset, str], datasets.Dataset]
    ) -> PreparedData:
        """``convert`` applied to the train set and the eval set (when there is one), each with its
        label (``"train"``, ``"eval"``) for messages."""
        return PreparedData(
            train=convert(self.train, "train"),
            eval=convert(self.eval, "eval") if self.eval is not None else None,
        )


@dataclass(frozen=True)
class PreparedData:
    """A method's train and eval sets after its ``prepare`` (tokenized, or made conversational)."""

    train: datasets.Dataset
    eval: datasets.Dataset | None


def detect_format(columns: Iterable[str]) -> DatasetFormat | None:
    """The TRL format a set of columns is in, or None when it is none of them."""
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired_preference"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "prompt" in cols and not cols & {"chosen", "rejected", "completion"}:
        return "prompt_only"
    return None


def describe_formats(formats: Sequence[str]) -> str:
    """``'messages' (columns: messages) or 'prompt_completion' (columns: prompt, completion)``."""
    return " or ".join(f"{f!r} (columns: {', '.join(FORMAT_COLUMNS[f])})" for f in formats)


def load_training_data(
    config: DatasetConfig,
    *,
    root: Path,
    formats: Sequence[DatasetFormat],
    method: str,
    seed: int = 0,
) -> TrainingData:
    """Load, check, split and fingerprint a recipe's dataset.

    Args:
        config: the recipe's ``dataset`` section.
        root: folder that relative paths are resolved against (the recipe's folder).
        formats: formats the method accepts, preferred first.
        method: the method's name, for messages.
        seed: seeds the eval split.

    Raises:
        ConfigError: missing file, unreadable rows, wrong format for the method, malformed rows.
    """
    import datasets

    if config.path is not None:
        rows = read_jsonl(resolve_data_path(config.path, root), field="dataset.path")
        source = f"file:{config.path}"
        eval_rows = (
            read_jsonl(resolve_data_path(config.eval_path, root), field="dataset.eval_path")
            if config.eval_path
            else None
        )
    else:
        name = config.name or ""  # DatasetConfig's validator makes name set when path is not
        rows = _load_named(name, config.config, config.split, field="dataset.name")
        source = f"datasets:{name}" + (f"/{config.config}" if config.config else "")
        source += f"[{config.split}]"
        eval_rows = None
        if config.eval_split:
            eval_rows = _load_named(name, config.config, config.eval_split, field="dataset.eval_split")
        elif config.eval_path:
            eval_rows = read_jsonl(resolve_data_path(config.eval_path, root), field="dataset.eval_path")

    fmt = check_rows(rows, formats=formats, method=method, field="dataset")
    if eval_rows is not None:
        eval_fmt = check_rows(eval_rows, formats=formats, method=method, field="dataset.eval")
        if eval_fmt != fmt:
            raise ConfigError(
                f"dataset.eval is in format {eval_fmt!r} but the training data is {fmt!r}; "
                "give both in the same format"
            )
    rows = [_keep_columns(r, fmt) for r in rows]
    if eval_rows is None and config.eval_fraction > 0 and len(rows) >= MIN_EXAMPLES_FOR_EVAL_SPLIT:
        rows, eval_rows = split_rows(rows, config.eval_fraction, seed)
    eval_rows = [_keep_columns(r, fmt) for r in eval_rows] if eval_rows else None
    if config.max_examples is not None:
        rows = rows[: config.max_examples]

    digest = hashlib.sha256()
    digest.update(fmt.encode())
    for part, part_rows in (("train", rows), ("eval", eval_rows or [])):
        digest.update(part.encode())
        for row in part_rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return TrainingData(
        train=datasets.Dataset.from_list(rows),
        eval=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        format=fmt,
        fingerprint=digest.hexdigest(),
        source=source,
    )


def resolve_data_path(path: str, root: Path) -> Path:
    """A dataset path from a recipe, resolved against the recipe's folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (root / candidate)



def read_jsonl(path: Path, *, field: str = "dataset.path") -> list[dict[str, Any]]:
    """Rows of a JSONL file; blank lines are skipped.

    Raises:
        ConfigError: the file is missing, a line is not a JSON object (every bad line is listed).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{field}: file {str(path)!r} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{field}: file {str(path)!r} cannot be read as UTF-8 text ({e})") from e
    rows, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{field}: {Path(path).name} line {number} is not valid JSON ({e.msg}): {line[:60]!r}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{field}: {Path(path).name} line {number} is {row!r:.60}, not a JSON object")
            continue
        rows.append(row)
    if problems:
        raise ConfigError(_capped(problems))
    if not rows:
        raise ConfigError(f"{field}: file {str(path)!r} has no examples; add one JSON object per line")
    return rows


def _load_named(name: str, config: str | None, split: str, *, field: str) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, HF errors)
        raise ConfigError(
            f"{field}: cannot load `datasets` name {name!r} split {split!r} ({type(e).__name__}: {e}); "
            "check the name and split, or give a JSONL file as dataset.path"
        ) from e
    return [dict(row) for row in loaded]


def check_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    formats: Sequence[DatasetFormat],
    method: str,
    field: str = "dataset",
) -> DatasetFormat:
    """Check that every row is in one format the method accepts and well formed; return it.

    Raises:
        ConfigError: the format is wrong for the method (naming the expected columns), or rows are
            malformed (each listed with its line number, up to a few).
    """
    if not rows:
        raise ConfigError(f"{field}: no examples; add at least one")
    columns = set(rows[0])
    fmt = detect_format(columns)
    if fmt is None or fmt not in formats:
        found = f"format {fmt!r}" if fmt else "no known format"
        raise ConfigError(
            f"{field}: method {method!r} needs {describe_formats(formats)}, but the first example has "
            f"columns {sorted(columns)!r} ({found}); rewrite the data in one of those formats"
        )
    problems: list[str] = []
    for index, row in enumerate(rows):
        problems.extend(f"{field} line {index + 1}: {p}" for p in _row_problems(row, fmt))
        if len(problems) > _MAX_REPORTED:
            break
    if problems:
        raise ConfigError(_capped(problems))
    return fmt


def _row_problems(row: Mapping[str, Any], fmt: DatasetFormat) -> list[str]:
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in row]
    if missing:
        return [f"missing column(s) {missing!r} (format {fmt!r} needs {list(FORMAT_COLUMNS[fmt])!r})"]
    if fmt == "messages":
        problems = _message_problems(row["messages"], "messages")
        if not problems and not any(m["role"] == "assistant" for m in row["messages"]):
            problems.append("'messages' has no assistant turn, so nothing would be learnt; add one")
        return problems
    text = [c for c in FORMAT_COLUMNS[fmt] if c != "label"]
    problems = []
    for column in text:
        problems.extend(_turn_problems(row[column], column))
    if fmt == "unpaired_preference" and not isinstance(row["label"], bool):
        problems.append(f"'label' is {row['label']!r:.40}; write true (a desirable answer) or false (undesirable)")
    if fmt != "prompt_only":
        kinds = {isinstance(row[c], str) for c in text}
        if len(kinds) > 1:
            problems.append(f"columns {text!r} mix plain strings and message lists; use one kind")
    return problems


def _turn_problems(value: Any, column: str) -> list[str]:
    if isinstance(value, str):
        return [] if value.strip() else [f"{column!r} is empty"]
    return _message_problems(value, column)


def _message_problems(value: Any, column: str) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"{column!r} must be a non-empty list of {{'role', 'content'}} messages, got {value!r:.60}"]
    problems = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            problems.append(f"{column}[{i}] is {message!r:.40}, not a {{'role', 'content'}} object")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"{column}[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"{column}[{i}].content is {content!r:.40}; give the text as a string")
    return problems


def _keep_columns(row: Mapping[str, Any], fmt: DatasetFormat) -> dict[str, Any]:
    """Only the format's columns, with messages reduced to role and content (Arrow needs one schema)."""
    out: dict[str, Any] = {}
    for column in FORMAT_COLUMNS[fmt]:
        value = row[column]
        if isinstance(value, list):
            value = [{"role": m["role"], "content": m["content"]} for m in value]
        out[column] = value
    if fmt == "prompt_only":  # plain extra fields (an expected answer) reach GRPO's reward functions
        out.update({k: v for k, v in row.items() if k not in out and isinstance(v, str | int | float | bool)})
    return out


def split_rows(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministically hold out ``fraction`` of ``rows`` (at least one) for evaluation."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= _MAX_REPORTED:
        return problems
    return [*problems[:_MAX_REPORTED], f"… and more; fix these {_MAX_REPORTED} and run again"]
