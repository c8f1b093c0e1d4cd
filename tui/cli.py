"""``adapterhub tui``: registered into the library's CLI through the ``adapterhub.commands``
entry point, so that the library never imports this package."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterhub.cli import BlobsOption, HomeOption, RegistryOption, quiet_libraries


def register(app: typer.Typer) -> None:
    """Add the command to the ``adapterhub`` CLI."""
    app.command()(tui)


def tui(
    server: Annotated[str | None, typer.Option("--server", help="URL of a running `adapterhub serve`; in-process on the hub home when omitted.", show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="ADAPTERHUB_API_KEY", help="API key for --server (an admin key enables tag, delete, training, evaluation, push and pull).", show_default=False)] = None,
    home: HomeOption = None,
    registry: RegistryOption = None,
    blobs: BlobsOption = None,
) -> None:
    """Open the terminal UI: registry, training with live curves, side-by-side compare."""
    from adapterhub_tui.launch import run_tui

    quiet_libraries()
    run_tui(server=server, home=home, api_key=api_key, registry=registry, blobs=blobs)
