"""Messages the screens send each other, one small dataclass each (as Toolong does).

Training and evaluation emit many progress events per second from a worker thread. Posting one
message per event would flood the queue, so the worker only appends to a buffer and posts
:class:`ProgressPending`, which *replaces* an earlier undelivered one (``can_replace``): however
fast events arrive, the screen handles at most one message per frame and drains the buffer then.
:class:`ProgressInbox` is that buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.message_pump import MessagePump

from adapterhub.core.progress import ProgressEvent


@dataclass
class ProgressPending(Message, bubble=False):
    """New progress events (of a training run, an evaluation) wait in the screen's buffer."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProgressPending)


class ProgressInbox:
    """A screen's progress events from a worker thread, taken in batches on the UI thread.

    Pass the inbox itself as the backend's progress callback; handle :class:`ProgressPending`
    with :meth:`take`.
    """

    def __init__(self, screen: MessagePump) -> None:
        self._screen = screen
        self._events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        """The progress callback; may run on any thread."""
        self._events.append(event)  # list.append is atomic
        self._screen.post_message(ProgressPending())

    def take(self) -> list[ProgressEvent]:
        """The events that arrived since the last take (UI thread)."""
        batch, self._events = self._events, []
        return batch

    def clear(self) -> None:
        self._events = []


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
