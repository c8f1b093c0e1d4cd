"""adapterhub's OpenAI-compatible HTTP server (installed as ``adapterhub_server``).

``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it with uvicorn (what
``adapterhub serve`` calls). Settings come from :class:`ServerSettings` (env prefix
``ADAPTERHUB_``). The library never imports this package; this package imports the library.
"""

from adapterhub_server.app import create_app, serve
from adapterhub_server.settings import ServerSettings, load_settings

__all__ = ["ServerSettings", "create_app", "load_settings", "serve"]
