"""Messages the screens send each other, one small dataclass each (as Toolong does).

Training and evaluation emit many progress events per second from a worker thread. Posting one
message per event would flood the queue, so the worker only appends to a buffer and posts
:class:`ProgressPending`, which *replaces* an earlier undelivered one (``can_replace``): however
fast events arrive, the screen handles at most one message per frame and drains the buffer then.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ProgressPending(Message, bubble=False):
    """New progress events (of a training run, an evaluation) wait in the screen's buffer."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProgressPending)


@dataclass
class VersionsChanged(Message):
    """The registry changed (a run finished, a version was tagged or deleted); reload it.

    ``select`` names the version the registry screen should highlight afterwards.
    """

    select: str | None = None


@dataclass
class VoteRecorded(Message):
    """Compare stored preference pairs; the training screen's DPO offer updates its count."""

    pairs: int
    total: int
