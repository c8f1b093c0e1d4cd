"""What the TUI tests share besides fixtures: waiting for workers, reading notifications.

``app.workers.wait_for_complete()`` raises ``WorkerCancelled`` when an exclusive worker (the
registry's reload, the details loader) is replaced while it waits, which is the screens' normal
behaviour; :func:`settle` instead polls until no worker is pending or running.
"""

from __future__ import annotations

import time
from typing import Any

from textual.pilot import Pilot
from textual.worker import WorkerState


async def settle(pilot: Pilot[Any], timeout: float = 120.0) -> None:
    """Let the app run until no worker is pending or running (then one more frame)."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        busy = [w for w in pilot.app.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if not busy:
            await pilot.pause()
            return
        assert time.monotonic() < deadline, f"workers still busy after {timeout}s: {busy}"
        await pilot.pause(0.02)


def notices(app: Any) -> list[str]:
    """The messages of every notification the app has shown."""
    return [n.message for n in app._notifications]
