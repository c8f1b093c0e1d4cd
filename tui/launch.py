"""``adapterhub tui``: build the right backend and run the app.

The library's CLI imports this module only inside its ``tui`` command, so ``import adapterhub``
never imports Textual.
"""

from __future__ import annotations

from pathlib import Path

from adapterhub_tui.app import make_app
from adapterhub_tui.backend import Backend


def build_backend(*, server: str | None, home: Path | None, api_key: str | None,
                  registry: str | None = None, blobs: str | None = None) -> Backend:
    """The in-process backend over ``home``, or the HTTP backend for ``server``.

    Args:
        server: URL of a running ``adapterhub serve``; None works on ``home`` in this process.
        home: the hub home (``$ADAPTERHUB_HOME`` or ``~/.adapterhub`` when None). With a server
            it is only where compare's votes are written.
        api_key: the server's API key (an admin key enables tagging and deleting).
        registry: in process, the registry's database URL (see ``Hub``); the environment's or
            the home's when None. blobs: its blob location, the same way.
    """
    from adapterhub.facade import Hub, default_home

    if server:
        from adapterhub_tui.remote import HttpBackend

        return HttpBackend(server, home=Path(home).expanduser() if home else default_home(),
                           api_key=api_key)
    from adapterhub_tui.local import InProcessBackend

    return InProcessBackend(Hub(home, registry=registry, blobs=blobs))


def run_tui(*, server: str | None = None, home: Path | None = None, api_key: str | None = None,
            registry: str | None = None, blobs: str | None = None) -> None:
    """Run the terminal UI until the user quits (ctrl+q)."""
    make_app(build_backend(server=server, home=home, api_key=api_key, registry=registry, blobs=blobs)).run()
