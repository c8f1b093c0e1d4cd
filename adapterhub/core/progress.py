"""Progress of long work, from one source: a callback that receives :class:`ProgressEvent` s.

Training, evaluation and Hub transfers emit them; the CLI draws a bar and the TUI live curves.
A training run's events are also kept as JSONL (``step_log.jsonl``) in the version it registers;
the server does not stream progress, it serves that file (``/admin/versions/{ref}/step_log``)
once the run is over. Cancellation travels the other way, through a :class:`CancelToken` the
worker checks between steps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

STEP_LOG = "step_log.jsonl"
"""The file of a trained version that holds its run's progress events, one JSON object a line."""

EventKind = Literal["start", "step", "eval", "message", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class ProgressEvent:
    """One moment of a long run.

    ``metrics`` carries the method's own numbers (DPO reward margin, GRPO reward mean, PPO KL …)
    under stable names, so every consumer can plot them without knowing the method.
    """

    kind: EventKind
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    epoch: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""
    version_ref: str | None = None  # set on "done"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = dict(self.metrics)
        return {k: v for k, v in data.items() if v not in (None, "", {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressEvent:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def parse_step_log(text: str) -> list[ProgressEvent]:
    """The events of a :data:`STEP_LOG` text; a line that does not parse is skipped, so a log cut
    short by a crash still shows the run up to there."""
    events = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            if isinstance(data, dict):
                events.append(ProgressEvent.from_dict(data))
        except (ValueError, TypeError):
            continue
    return events


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(_event: ProgressEvent) -> None:
    """The callback that ignores everything."""


class CancelToken:
    """Thread-safe cancel flag that a long run checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class EventFollower:
    """The events appended to a JSONL event file (a step log, a job's events) since the last
    :meth:`read`: whole lines only, so a line being written is read once it is complete.

    Args:
        path: the file; it may not exist yet.
        from_start: read what is already there too (else only what is appended from now on).
    """

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self.offset = 0 if from_start or not self.path.exists() else self.path.stat().st_size
        self._partial = b""

    def read(self) -> list[ProgressEvent]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        complete, _, self._partial = (self._partial + chunk).rpartition(b"\n")
        return parse_step_log(complete.decode("utf-8", errors="replace"))
