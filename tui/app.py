"""The Textual app: three screens over one backend, built by :func:`make_app`.

``make_app(backend)`` is the only way in (as Posting's ``make_posting``): the CLI builds a backend
(in-process or HTTP) and hands it over, tests hand over a fake one. Nothing here reads the
environment or keeps module-level state.

The three main screens are Textual *modes*, each with its own screen stack, so switching between
them (``f1``/``f2``/``f3``, or the command palette) keeps each screen's state: a training run keeps
going in its worker while the user browses the registry or compares answers.

Errors never reach the shell: every worker catches what its backend call raises and hands it to
:meth:`AdapterHubApp.report`, which shows the message as a notification. adapterhub's own errors
already say what failed and how to fix it, so their text is shown as is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from adapterhub.errors import AdapterHubError
from adapterhub.training.votes import PreferenceStore
from adapterhub_tui.backend import Backend, BackendInfo
from adapterhub_tui.recipes import default_recipe_dirs
from adapterhub_tui.screens.compare import CompareScreen
from adapterhub_tui.screens.registry import RegistryScreen
from adapterhub_tui.screens.training import TrainingScreen

Clock = Callable[[], float]


class AdapterHubApp(App[None]):
    """adapterhub's terminal UI. Build it with :func:`make_app`."""

    TITLE = "adapterhub"
    CSS_PATH = "app.tcss"
    MODES = {"registry": RegistryScreen, "training": TrainingScreen, "compare": CompareScreen}
    DEFAULT_MODE = "registry"
    BINDINGS = [
        Binding("f1", "switch_mode('registry')", "Registry"),
        Binding("f2", "switch_mode('training')", "Train"),
        Binding("f3", "switch_mode('compare')", "Compare"),
    ]

    def __init__(
        self,
        backend: Backend,
        *,
        preferences: PreferenceStore,
        recipe_dirs: Sequence[Path],
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.preferences = preferences
        self.recipe_dirs = list(recipe_dirs)
        self.clock = clock
        self._info: BackendInfo | None = None
        self.select_on_return: str | None = None  # the registry highlights it when next shown
        self._info_lock = asyncio.Lock()

    # ------------------------------------------------------------------ backend

    async def info(self) -> BackendInfo:
        """What the backend is and can do (asked once; a failure leaves a minimal stand-in)."""
        async with self._info_lock:
            if self._info is None:
                try:
                    self._info = await self.backend.describe()
                except Exception as e:  # an unreachable server must not stop the app
                    self.report(e, "connecting to the backend")
                    return BackendInfo(label="(not connected)", base_name="base")
                self.sub_title = self._info.label
            return self._info

    @property
    def known_info(self) -> BackendInfo | None:
        """The backend's description if it has been asked already."""
        return self._info

    def report(self, error: BaseException, doing: str) -> None:
        """Show ``error`` as an error notification titled with what was being done."""
        if isinstance(error, AdapterHubError):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
            self.log.error(f"{doing} failed", exc_info=error)
        self.notify(message, title=f"{doing} failed", severity="error", timeout=10, markup=False)

    async def on_unmount(self) -> None:
        """The app owns its backend from ``make_app`` on: close it (engine, HTTP clients)."""
        try:
            await self.backend.aclose()
        except Exception as e:  # closing must never turn a clean exit into a traceback
            self.log.error("closing the backend failed", exc_info=e)

    # ------------------------------------------------------------------ cross-screen

    async def open_compare(self, refs: Iterable[str | None]) -> None:
        """Switch to compare with ``refs`` added as columns."""
        await self.switch_mode("compare")
        screen = self.screen
        if isinstance(screen, CompareScreen):
            for ref in refs:
                screen.add_column(ref)

    async def open_training(self, *, parent: str | None = None, dpo_on_votes: bool = False) -> None:
        """Switch to training; optionally start from ``parent`` or load the DPO-on-votes offer."""
        await self.switch_mode("training")
        screen = self.screen
        if isinstance(screen, TrainingScreen):
            if dpo_on_votes:
                screen.load_dpo_offer()
            elif parent is not None:
                screen.set_parent(parent)

    def versions_changed(self, select: str | None = None) -> None:
        """The registry changed: reload it now if it is showing, else when it is next shown."""
        screen = self.screen
        if isinstance(screen, RegistryScreen):
            screen.reload(select=select)
        else:
            self.select_on_return = select

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Registry", "Browse adapters and versions (f1)",
                            lambda: self.switch_mode("registry"))
        yield SystemCommand("Train", "Train an adapter from a recipe (f2)",
                            lambda: self.switch_mode("training"))
        yield SystemCommand("Compare", "Compare the base and adapters side by side (f3)",
                            lambda: self.switch_mode("compare"))
        yield SystemCommand("DPO on votes", "Train DPO on the pairs compare collected",
                            lambda: self.run_worker(self.open_training(dpo_on_votes=True)))
        palette = getattr(screen, "palette_commands", None)
        if callable(palette):
            yield from palette()
        yield from super().get_system_commands(screen)


def make_app(
    backend: Backend,
    *,
    preferences: PreferenceStore | None = None,
    recipe_dirs: Sequence[Path] | None = None,
    clock: Clock = time.monotonic,
) -> AdapterHubApp:
    """Build the app over ``backend``.

    The app closes ``backend`` when it exits.

    Args:
        backend: in-process, HTTP or a test fake.
        preferences: where compare's votes go; the backend's store when None (the hub home's
            ``preferences/compare.jsonl``, on the server for the HTTP backend).
        recipe_dirs: folders the training screen lists recipes from; ``./recipes`` and the
            bundled ``recipes/`` when None.
        clock: monotonic seconds, for tokens/s and ETA (tests pass a fixed clock).
    """
    return AdapterHubApp(
        backend,
        preferences=preferences or backend.preference_store(),
        recipe_dirs=default_recipe_dirs() if recipe_dirs is None else recipe_dirs,
        clock=clock,
    )
