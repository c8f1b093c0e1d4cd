"""A small Hugging Face Hub-compatible server for tests, in the spirit of moto for AWS.

The real ``huggingface_hub`` client (2.4) talks to it through ``endpoint=`` (or ``HF_ENDPOINT``),
so tests exercise the very requests a user's machine sends. Repositories are real bare git repos
(``store.py``), so commit shas, branches and tags are real; tokens come from a table given at start.

Usage::

    with HubServer(tmp_path, tokens={"hf_write": Token(User("alice"))}) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_write")
        api.create_repo("alice/demo")

Routes (see ``app.py`` for the JSON shapes)::

    GET    /api/whoami-v2
    POST   /api/repos/create                         DELETE /api/repos/delete
    POST   /api/validate-yaml
    GET    /api/{type}s/{ns}/{name}[/revision/{rev}] model_info / dataset_info (?blobs=1)
    POST   /api/{type}s/{ns}/{name}/preupload/{rev}  always "regular" (inline) uploads
    POST   /api/{type}s/{ns}/{name}/commit/{rev}     NDJSON: header, file (base64), deletedFile,
                                                     deletedFolder; parentCommit -> 412 if stale
    POST   /api/{type}s/{ns}/{name}/branch/{branch}  DELETE the same path removes it
    POST   /api/{type}s/{ns}/{name}/tag/{rev}        DELETE .../tag/{tag} removes it
    GET    /api/{type}s/{ns}/{name}/refs
    GET    /api/{type}s/{ns}/{name}/commits/{rev}
    GET    /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]   ?recursive=1 ?expand=1
    POST   /api/{type}s/{ns}/{name}/paths-info/{rev}
    HEAD   /[{type}s/]{ns}/{name}/resolve/{rev}/{path}    GET too, with Range support

Not implemented: LFS/Xet transfers, pull requests and discussions, repo settings, search/listing,
Spaces runtime. Set ``HF_HUB_DISABLE_XET=1`` (or patch ``huggingface_hub.constants``) so the client
never looks for Xet.

The server runs uvicorn in a daemon thread on a socket bound to ``127.0.0.1:0`` (a free port chosen
by the kernel, so parallel test runs never collide).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn

from .app import INVALID_CREDENTIALS, HubApp, Token, User
from .store import GitRepoStore, HubServerError

__all__ = [
    "INVALID_CREDENTIALS",
    "GitRepoStore",
    "HubApp",
    "HubServer",
    "HubServerError",
    "Token",
    "User",
]


class HubServer:
    """Start the test Hub on 127.0.0.1 in a background thread; use as a context manager.

    Args:
        root: Folder for the git repositories.
        tokens: Token string -> :class:`Token` (who it belongs to, read or write).
    """

    def __init__(self, root: Path, tokens: dict[str, Token]) -> None:
        self.store = GitRepoStore(Path(root))
        self.app = HubApp(self.store, dict(tokens))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"hubserver-{self.port}",
        )

    def start(self) -> HubServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test Hub did not start on {self.endpoint}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
