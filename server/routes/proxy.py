"""The OpenAI-compatible generation routes of the replica backend (``--engine vllm``).

Same paths, bodies, keys, limits and errors as :mod:`~adapterhub_server.routes.openai`, and a
client that hangs up cancels the work there too (the replica's connection is closed, so it
stops decoding); the rows are decoded by a replica (:class:`~adapterhub_server.replica_service.ReplicaService`).
``/v1/models`` and the registry's admin routes are the same functions as with our engine (so
the TUI's HTTP backend browses, tags and deletes through a router too); ``GET /admin/info`` says
which base, ``GET /admin/replicas`` what the router knows of each replica. Adapter allowlists
and per-minute budgets apply as with our engine (:mod:`adapterhub_server.tenants`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import adapterhub
from adapterhub.errors import AdapterHubError
from adapterhub.protocol import ServerInfo
from adapterhub_server.auth import Caller, KeyRates
from adapterhub_server.deps import AdminCaller, InferenceCaller, RatesDep, ReplicaReady
from adapterhub_server.replica_service import Forwarded, ReplicaService
from adapterhub_server.routes.openai import _EventStream, _until_disconnect
from adapterhub_server.schemas import (
    ERROR_RESPONSES,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from adapterhub_server.tenants import check_generation

router = APIRouter(tags=["openai"])
Kind = Literal["chat", "completion"]


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Chat completion with the base, an adapter ref or a mix, decoded by a replica",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: InferenceCaller, service: ReplicaReady,
    rates: RatesDep,
) -> Response:
    return await _forward(request, service, caller, rates, body, "/v1/chat/completions", "chat")


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Text completion with the base, an adapter ref or a mix, decoded by a replica",
)
async def completions(
    body: CompletionRequest, request: Request, caller: InferenceCaller, service: ReplicaReady,
    rates: RatesDep,
) -> Response:
    return await _forward(request, service, caller, rates, body, "/v1/completions", "completion")


@router.get("/admin/info", response_model=ServerInfo, responses=ERROR_RESPONSES,
            summary="The base this router serves (its replicas decode; precision is the hub's setting)")
async def info(_: AdminCaller, service: ReplicaReady) -> ServerInfo:
    hub = service.ready().hub
    base = service.base_info
    return ServerInfo(
        base_name=base.name, base_fingerprint=base.fingerprint, template_hash=base.template_hash,
        precision=hub.precision, max_model_len=service.max_model_len or 0, home=str(hub.home),
        version=adapterhub.__version__,
    )


@router.get("/admin/replicas", summary="Each replica: health, base, requests in flight, adapters loaded",
            responses=ERROR_RESPONSES)
async def replicas(_: AdminCaller, service: ReplicaReady) -> dict[str, Any]:
    return {"replicas": service.ready().router.describe()}


async def _forward(
    request: Request, service: ReplicaService, caller: Caller, rates: KeyRates,
    body: ChatCompletionRequest | CompletionRequest, path: str, endpoint: Kind,
) -> Response:
    started = time.perf_counter()
    check_generation(caller, body, service.base_name)
    rates.admit(caller)
    spend = functools.partial(rates.spend, caller)
    service.budget.acquire(caller)
    handed_over = False
    try:
        try:
            service.check_limits(body)
            adapter = await service.adapter_for(body)
            raw = await request.json()
            # a non-streamed answer's headers come with its last token: the wait can be long
            forwarded = await _until_disconnect(request, lambda: service.forward(path, raw, adapter, body.stream))
        except AdapterHubError as error:
            service.count_refused(endpoint, error)
            raise
        if forwarded is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        headers = {"X-Adapter-Version": adapter.label if adapter is not None else service.base_name}
        if body.stream and forwarded.response.status_code == 200:
            headers["X-Request-Id"] = _event_id(forwarded)
            handed_over = True

            def release() -> None:
                service.budget.release(caller)
                _abandon(service, forwarded)

            events = service.events(forwarded, adapter, endpoint, body.model, body.include_usage, started, spend)
            return _EventStream(events, release, headers=headers)
        answered = await _until_disconnect(
            request, lambda: service.answer(forwarded, adapter, endpoint, body.model, started, spend))
        if answered is None:
            return Response(status_code=499)
        status, payload = answered
        if status != 200:  # the replica's error, already in OpenAI's shape
            return JSONResponse(payload, status)
        headers["X-Request-Id"] = str(payload.get("id", ""))
        return JSONResponse(payload, headers=headers)
    finally:
        if not handed_over:
            service.budget.release(caller)


def _event_id(forwarded: Forwarded) -> str:
    return str((forwarded.first_event or {}).get("id", ""))


def _abandon(service: ReplicaService, forwarded: Forwarded) -> None:
    """However a stream ended (done, disconnect before it began), free its lease and connection."""
    service.loaded.router.release(forwarded.lease)  # a no-op once the stream's own end did it
    if not forwarded.response.is_closed:
        asyncio.get_running_loop().create_task(forwarded.response.aclose())
