"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Design choices:

* **A route is three steps:** parse and check (schemas + :class:`InferenceService`), open the rows
  (errors become real status codes here, before any header is sent), then either collect a JSON
  answer or stream SSE chunks. Both paths share :func:`_generate`.
* **Disconnects cancel.** While rows are being opened or collected, a watcher waits for the
  client's ``http.disconnect`` and cancels the work; a streaming response is cancelled by
  Starlette when the client goes, and its ``finally`` cancels the rows.
* **Headers:** ``X-Adapter-Version`` carries the resolved version (``pirate@3``; the base's name
  for the base; ``0.5*a@1+0.5*b@2`` for a mix) and ``X-Request-Id`` the completion id.
* **In a stream, an error is one SSE event** with the OpenAI error JSON, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from adapterhub.engine.types import GenerationChunk
from adapterhub.errors import AdapterHubError
from adapterhub_server.auth import Caller
from adapterhub_server.deps import InferenceCaller, ReadyService
from adapterhub_server.errors import sse_error_event
from adapterhub_server.schemas import (
    ERROR_RESPONSES,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)
from adapterhub_server.service import InferenceService, OpenRequest, Target

router = APIRouter(tags=["openai"])
T = TypeVar("T")
Kind = Literal["chat", "completion"]


@dataclass(frozen=True)
class _Reply:
    """What every chunk and answer of one request repeats."""

    kind: Kind
    id: str
    created: int
    model: str
    rows_per_prompt: int
    include_usage: bool


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Chat completion with the base, an adapter ref or a mix",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: InferenceCaller, service: ReadyService
) -> Response:
    target = service.target(body)
    prompt = service.chat_prompt(body)
    reply = _Reply("chat", f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.n,
                   body.include_usage)
    return await _generate(request, service, caller, body, [prompt], target, reply)


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Text completion (no chat template) with the base, an adapter ref or a mix",
)
async def completions(
    body: CompletionRequest, request: Request, caller: InferenceCaller, service: ReadyService
) -> Response:
    target = service.target(body)
    prompts = service.completion_prompts(body)
    reply = _Reply("completion", f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.n,
                   body.include_usage)
    return await _generate(request, service, caller, body, prompts, target, reply)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES,
            summary="The base and every registered adapter version")
async def list_models(_: InferenceCaller, service: ReadyService) -> ModelList:
    assert service.hub is not None
    registry = service.hub.registry
    versions = await anyio.to_thread.run_sync(registry.list_versions)
    base, max_len = service.base_name, service.max_model_len
    cards = [ModelCard(id=base, created=int(time.time()), root=base, parent=None, max_model_len=max_len)]
    latest = {v.name: v for v in versions}  # oldest first, so the last one wins
    for name in sorted(latest):
        v = latest[name]
        cards.append(ModelCard(id=name, created=int(v.created_at), root=base, parent=base, version=v.ref,
                               aliases=list(v.aliases), method=v.method, max_model_len=max_len))
    for v in sorted(versions, key=lambda v: (v.name, v.number)):
        cards.append(ModelCard(id=v.ref, created=int(v.created_at), root=base, parent=base, version=v.ref,
                               aliases=list(v.aliases), method=v.method, max_model_len=max_len))
    return ModelList(data=cards)


# ---------------------------------------------------------------------------- shared path


async def _generate(
    request: Request,
    service: InferenceService,
    caller: Caller,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    target: Target,
    reply: _Reply,
) -> Response:
    endpoint = reply.kind
    service.budget.acquire(caller)
    handed_over = False
    try:
        try:
            opened = await _until_disconnect(request, lambda: service.open(prompts, target, body))
        except AdapterHubError as error:
            service.count_refused(endpoint, error)
            raise
        if opened is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        headers = {
            "X-Adapter-Version": opened.adapter_version or service.base_name,
            "X-Request-Id": reply.id,
        }
        if body.stream:
            handed_over = True

            def release() -> None:
                opened.cancel()
                service.budget.release(caller)

            return _EventStream(_events(service, opened, reply), release, headers=headers)
        answer = await _until_disconnect(request, lambda: _collect(service, opened, reply))
        if answer is None:
            return Response(status_code=499)
        return JSONResponse(answer, headers=headers)
    finally:
        if not handed_over:
            service.budget.release(caller)


async def _until_disconnect(request: Request, work: Callable[[], Coroutine[Any, Any, T]]) -> T | None:
    """Run ``work`` unless the client disconnects first (then cancel it and return None)."""
    task = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        return None
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _usage(opened: OpenRequest, reply: _Reply, completion_tokens: int) -> UsageInfo:
    prompt = sum(opened.prompt_tokens[:: reply.rows_per_prompt])  # each prompt once, not per choice
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion_tokens,
                     total_tokens=prompt + completion_tokens)


async def _collect(service: InferenceService, opened: OpenRequest, reply: _Reply) -> dict[str, Any]:
    """Run every row to the end and build the whole (non-streaming) answer."""
    rows = len(opened.streams)
    texts: list[list[str]] = [[] for _ in range(rows)]
    reasons: list[str | None] = [None] * rows
    tokens = [0] * rows
    outcome = "error"
    try:
        async for row, chunk in service.rows(opened):
            texts[row].append(chunk.text)
            tokens[row] += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                reasons[row] = chunk.finish_reason
        reasons = [reason or "cancelled" for reason in reasons]  # rows cut short by a shutdown
        outcome = reasons[0]
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        opened.cancel()
        service.finish(opened, reply.kind, outcome, sum(tokens))
    usage = _usage(opened, reply, sum(tokens))
    if reply.kind == "chat":
        return ChatCompletionResponse(
            id=reply.id, created=reply.created, model=reply.model, usage=usage,
            choices=[ChatChoice(index=i, message=ChatMessageOut(content="".join(texts[i])),
                                finish_reason=reasons[i]) for i in range(rows)],
        ).model_dump(mode="json")
    return CompletionResponse(
        id=reply.id, created=reply.created, model=reply.model, usage=usage,
        choices=[CompletionChoice(index=i, text="".join(texts[i]), finish_reason=reasons[i])
                 for i in range(rows)],
    ).model_dump(mode="json")


async def _events(service: InferenceService, opened: OpenRequest, reply: _Reply) -> AsyncIterator[str]:
    """SSE events of a streaming answer, ending with ``data: [DONE]``."""
    tokens = 0
    outcome = "cancelled"
    finished: dict[int, str] = {}
    try:
        if reply.kind == "chat":
            for row in range(len(opened.streams)):  # OpenAI opens each choice with its role
                yield _chat_event(reply, row, ChatDelta(role="assistant", content=""), None)
        async for row, chunk in service.rows(opened):
            tokens += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                finished[row] = chunk.finish_reason
            if chunk.text or chunk.finish_reason is not None:
                yield _chunk_event(reply, row, chunk)
        for row in range(len(opened.streams)):  # rows cut short by a shutdown still end
            if row not in finished:
                finished[row] = "cancelled"
                yield _chunk_event(reply, row, GenerationChunk("", "", (), finish_reason="cancelled"))
        if reply.include_usage:
            yield _usage_event(reply, _usage(opened, reply, tokens))
        outcome = finished[0]
    except AdapterHubError as error:
        outcome = "error"
        yield sse_error_event(error)
    except Exception as error:  # never a traceback to the client; logged with an id
        outcome = "error"
        yield sse_error_event(error)
    finally:
        opened.cancel()
        service.finish(opened, reply.kind, outcome, tokens)
    yield "data: [DONE]\n\n"


def _chat_event(reply: _Reply, row: int, delta: ChatDelta, finish: str | None) -> str:
    chunk = ChatCompletionChunk(
        id=reply.id, created=reply.created, model=reply.model,
        choices=[ChatChunkChoice(index=row, delta=delta, finish_reason=finish)],
    )
    return f"data: {chunk.model_dump_json()}\n\n"


def _chunk_event(reply: _Reply, row: int, chunk: GenerationChunk) -> str:
    if reply.kind == "chat":
        return _chat_event(reply, row, ChatDelta(content=chunk.text), chunk.finish_reason)
    event = CompletionResponse(
        id=reply.id, created=reply.created, model=reply.model,
        choices=[CompletionChoice(index=row, text=chunk.text, finish_reason=chunk.finish_reason)],
    )
    return f"data: {event.model_dump_json()}\n\n"


def _usage_event(reply: _Reply, usage: UsageInfo) -> str:
    event: ChatCompletionChunk | CompletionResponse
    if reply.kind == "chat":
        event = ChatCompletionChunk(id=reply.id, created=reply.created, model=reply.model, choices=[],
                                    usage=usage)
    else:
        event = CompletionResponse(id=reply.id, created=reply.created, model=reply.model, choices=[],
                                   usage=usage)
    return f"data: {event.model_dump_json()}\n\n"


class _EventStream(StreamingResponse):
    """An SSE response that runs ``on_close`` however it ends (done, disconnect, shutdown)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
