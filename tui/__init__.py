"""adapterhub's terminal UI (Textual): registry, training with live curves, side-by-side compare.

Build the app with :func:`make_app` over a backend: :class:`~adapterhub_tui.local.InProcessBackend`
(the library in this process) or :class:`~adapterhub_tui.remote.HttpBackend` (a running
``adapterhub serve``). ``adapterhub tui [--server URL] [--home PATH]`` does that for you.
"""

from adapterhub_tui.app import AdapterHubApp, make_app
from adapterhub_tui.backend import Backend, BackendInfo, Capability, TrainRequest

__all__ = ["AdapterHubApp", "Backend", "BackendInfo", "Capability", "TrainRequest", "make_app"]
