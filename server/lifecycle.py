"""The start-up and shutdown states both backends share (our engine, the replica router).

:class:`ServiceLifecycle` holds the phase (starting, ready, failed, stopping), why a start
failed, and what the start made; a route asks :meth:`ServiceLifecycle.ready` for it (new
requests) or :attr:`ServiceLifecycle.loaded` (requests admitted before a drain began), and gets
a 503 with ``Retry-After`` saying which phase it is in otherwise.

Design choices:

* **One start task.** :meth:`start_loading` runs the subclass's ``_start`` in the background so
  ``/health`` answers at once; its result is kept, its exception becomes the ``failed`` phase
  (reported by ``/ready`` and every 503; the log has the trace). A shutdown that began while
  starting stays ``stopping``.
* **Words per backend, one table.** Each backend names what starting means
  (``starting_reason``) and what failed (``failed_reason``); the phases and their 503s are here.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar

import anyio
from fastapi import HTTPException

log = logging.getLogger("adapterhub.server")
T = TypeVar("T")


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class ServiceLifecycle(Generic[T]):
    """Phase, failure and the start's result ``T``, and the 503s while there is none."""

    starting_reason: ClassVar[str] = "the server is still starting; retry shortly"
    failed_reason: ClassVar[str] = "the server could not start"

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.failure: str | None = None
        self._loaded: T | None = None  # kept once set: a draining request still needs it
        self._starter: asyncio.Task[None] | None = None

    async def _start(self) -> T:
        """Build what the service serves with (off the event loop where it blocks)."""
        raise NotImplementedError

    def _on_ready(self, loaded: T) -> None:
        """Called once the start succeeded and the phase is ``ready`` (log, start watchers)."""

    def start_loading(self) -> None:
        """Start :meth:`_start` in the background (the lifespan calls this)."""
        self._starter = asyncio.get_running_loop().create_task(self._run_start())

    async def _run_start(self) -> None:
        try:
            self._loaded = await self._start()
        except Exception as error:  # reported by /ready and every 503; the log has the trace
            if self.phase is Phase.STARTING:  # a drain that began meanwhile stays "stopping"
                self.phase = Phase.FAILED
            self.failure = f"{type(error).__name__}: {error}"
            log.error("%s", self.failed_reason, exc_info=error)
            return
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY
            self._on_ready(self._loaded)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait for the start to end (ready or failed); True when ready."""
        if self._starter is not None:
            with anyio.move_on_after(timeout):
                await asyncio.shield(self._starter)
        return self.phase is Phase.READY

    async def _stop_starting(self) -> None:
        """Let a start under way finish (a half-built service would leak what it started)."""
        if self._starter is not None and not self._starter.done():
            await asyncio.shield(self._starter)

    def ready(self) -> T:
        """What a new request needs, or a 503 saying why it is not available."""
        if self.phase is Phase.READY and self._loaded is not None:
            return self._loaded
        raise self._unavailable()

    @property
    def loaded(self) -> T:
        """What a request already admitted needs: also while draining, when :meth:`ready` refuses
        new ones; a 503 before the start ends."""
        if self._loaded is None:
            raise self._unavailable()
        return self._loaded

    def _unavailable(self) -> HTTPException:
        reasons = {
            Phase.STARTING: self.starting_reason,
            Phase.READY: self.starting_reason,  # ready, but the result not yet set: a moment more
            Phase.STOPPING: "the server is shutting down",
            Phase.FAILED: f"{self.failed_reason} ({self.failure}); see its log",
        }
        return HTTPException(503, reasons[self.phase], headers={"Retry-After": "2"})
