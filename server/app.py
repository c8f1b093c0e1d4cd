"""``create_app(settings)``: the FastAPI app, and ``serve(settings)``: run it with uvicorn.

Design choices:

* **A factory, no module-level state.** Everything an app holds (service, keys, metrics registry)
  hangs off ``app.state``; two apps in one process share nothing.
* **Lifespan** starts loading the hub, base and engine in a worker thread and, on shutdown,
  closes the engine. On SIGTERM/SIGINT uvicorn stops accepting and lets in-flight requests run
  for ``shutdown_grace_s``; just before that ends the service cancels the rows still running,
  so every stream ends cleanly (last chunk, ``data: [DONE]``) instead of being cut off.
* **Body limit as pure ASGI middleware** (not ``BaseHTTPMiddleware``, which breaks streaming
  disconnects): bodies are buffered up to ``max_body_bytes`` and replayed; one byte more is a 413
  in OpenAI's shape, before any route parses it.
* **Two backends, one API.** ``settings.backend`` picks the service: our engine in this
  process (:class:`InferenceService`, routes in ``routes/openai.py`` and ``routes/admin.py``) or
  replicas speaking vLLM's LoRA API (:class:`ReplicaService`, routes in ``routes/proxy.py``).
  Keys, errors, ``/v1/models``, the registry's admin routes, health and metrics are shared.
* **Keys and tenants.** ``app.state.keys`` is a :class:`KeyRing` (the keys file re-read when
  it changes), ``app.state.rates`` the per-key requests- and tokens-per-minute windows; adapter
  allowlists are applied by the routes (:mod:`adapterhub_server.tenants`).
* **Refuse an open server on the network:** both ``create_app`` and ``serve`` check that a
  non-loopback host has API keys.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import adapterhub
from adapterhub_server.auth import KeyRates, KeyRing
from adapterhub_server.errors import http_error_response, install_error_handlers
from adapterhub_server.replica_service import ReplicaService
from adapterhub_server.routes import admin, health, jobs, openai, preferences, proxy
from adapterhub_server.service import InferenceService
from adapterhub_server.settings import ServerSettings, check_bind

if TYPE_CHECKING:
    from adapterhub.jobs import JobQueue

log = logging.getLogger("adapterhub.server")


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the server app for ``settings``. Loading starts when its lifespan starts.

    Raises:
        ConfigError: a non-loopback host without keys, or an unreadable keys file.
    """
    keys = settings.resolved_keys()
    check_bind(settings, keys)
    service: InferenceService | ReplicaService
    service = ReplicaService(settings) if settings.backend == "vllm" else InferenceService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start_loading()
        jobs = _job_queue(settings) if isinstance(service, InferenceService) else None
        app.state.jobs = jobs
        try:
            yield
        finally:
            try:
                if jobs is not None:  # stopping them waits on their processes: not on the event loop
                    await anyio.to_thread.run_sync(lambda: jobs.close(timeout=settings.shutdown_grace_s))
            finally:
                await service.close()

    app = FastAPI(
        title="adapterhub",
        version=adapterhub.__version__,
        summary="OpenAI-compatible serving of many LoRA adapters over one frozen base.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.keys = KeyRing(settings.env_keys(), settings.keys_file, keys)
    app.state.rates = KeyRates()
    install_error_handlers(app)
    if isinstance(service, ReplicaService):  # --engine vllm: replicas decode, this process routes
        app.include_router(proxy.router)
    else:
        app.include_router(openai.router)
        app.include_router(admin.router)
        app.include_router(jobs.router)
        app.include_router(preferences.router)
    app.include_router(openai.models_router)
    app.include_router(admin.registry_router)
    app.include_router(health.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _job_queue(settings: ServerSettings) -> JobQueue:
    """The home's job queue, with a hub of its own that loads no model (it checks requests)."""
    from adapterhub.facade import Hub
    from adapterhub.jobs import JobQueue

    hub = Hub(settings.home, registry=settings.registry_url, blobs=settings.blobs)
    return JobQueue(hub, recipes=settings.recipes, concurrency=settings.jobs_concurrency)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (buffers up to that much, then replays)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = http_error_response(
            413,
            f"the request body is {size} bytes or more, over this server's max_body_bytes="
            f"{self.max_bytes}; send less (or raise ADAPTERHUB_MAX_BODY_BYTES)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def serve(settings: ServerSettings) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM (what ``adapterhub serve`` calls).

    Checks what can be checked before binding: keys for a non-loopback host, and that the hub
    home has a base (else ``adapterhub init`` is the fix).

    Raises:
        ConfigError: see :func:`create_app`.
        BaseModelError: the hub home has no base.
    """
    import uvicorn

    from adapterhub.facade import Hub

    check_bind(settings, settings.resolved_keys())
    Hub(settings.home, registry=settings.registry_url, blobs=settings.blobs).base_info  # noqa: B018  (raises BaseModelError with the fix)
    if settings.launch_vllm:
        from adapterhub_server.vllm_launch import check_vllm_installed

        check_vllm_installed(settings)  # before binding, so the CLI prints the fix
    app = create_app(settings)
    service: InferenceService | ReplicaService = app.state.service

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, telling the service when shutdown starts (see begin_drain)."""

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            service.begin_drain(settings.shutdown_grace_s)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]  (float works)
        lifespan="on",
        access_log=settings.log_level == "debug",
    )
    DrainingServer(config).run()
