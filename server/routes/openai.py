"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, and
``/v1/compare`` (one conversation, several models, one batch).

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
* **Tenants.** A key with an adapter allowlist may name only those adapters (others answer as
  unknown) and sees only those in ``/v1/models`` (:mod:`adapterhub_server.tenants`); its
  requests and tokens per minute are counted in ``app.state.rates``: a request is admitted
  before it opens and its prompt + completion tokens are counted when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from adapterhub.engine.types import GenerationChunk, TokenLogprob
from adapterhub.errors import AdapterHubError
from adapterhub.registry import Version
from adapterhub_server.auth import Caller, KeyRates
from adapterhub_server.deps import HubDep, InferenceCaller, RatesDep, ReadyService
from adapterhub_server.errors import sse_error_event
from adapterhub_server.schemas import (
    ERROR_RESPONSES,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompareRequest,
    CompareResponse,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    FunctionCall,
    ModelCard,
    ModelList,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    UsageInfo,
)
from adapterhub_server.service import InferenceService, OpenRequest, Target
from adapterhub_server.tenants import check_generation

router = APIRouter(tags=["openai"])
models_router = APIRouter(tags=["openai"])
"""``/v1/models``: the same with our engine and with replicas (``--engine vllm``)."""
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
    echo: tuple[tuple[str, tuple[int, ...]], ...] = ()  # completions with echo: each prompt's text and ids
    call: tuple[str | None] | None = None  # chat with a forced tool_choice: (the named function, or None)

    def echoed(self, row: int) -> tuple[str, tuple[int, ...]] | None:
        return self.echo[row // self.rows_per_prompt] if self.echo else None


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Chat completion with the base, an adapter ref or a mix",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: InferenceCaller, service: ReadyService,
    rates: RatesDep,
) -> Response:
    target = service.target(body)
    check_generation(caller, body, service.base_name)
    prompt = service.chat_prompt(body)
    forced = body.forced_call()
    reply = _Reply("chat", f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.n,
                   body.include_usage, call=None if forced is None else (forced[0],))
    return await _generate(request, service, caller, rates, body, [prompt], target, reply)


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="Text completion (no chat template) with the base, an adapter ref or a mix",
)
async def completions(
    body: CompletionRequest, request: Request, caller: InferenceCaller, service: ReadyService,
    rates: RatesDep,
) -> Response:
    target = service.target(body)
    check_generation(caller, body, service.base_name)
    prompts = service.completion_prompts(body)
    echo = tuple(zip(service.prompt_texts(body, prompts), map(tuple, prompts), strict=True)) if body.echo else ()
    reply = _Reply("completion", f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.n,
                   body.include_usage, echo)
    return await _generate(request, service, caller, rates, body, prompts, target, reply)


@router.post(
    "/v1/compare",
    response_model=CompareResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
    summary="One conversation answered by several models (base, adapter refs), decoded together",
)
async def compare(
    body: CompareRequest, request: Request, caller: InferenceCaller, service: ReadyService, rates: RatesDep,
) -> Response:
    """Each model's chat completion of the same messages. Streamed, the chunks of all models
    interleave as they are decoded (one mixed batch), each chunk naming its model and its
    completion's id, and one ``data: [DONE]`` ends them all; whole, ``answers`` holds one chat
    completion per model, in the order of ``models``. A comparison counts as one request of the
    key's ``max_streams_per_key`` and ``requests_per_minute`` (its columns are at most
    ``MAX_COMPARED``); every column's tokens count against ``tokens_per_minute``."""
    columns = [body.for_model(model) for model in body.models]
    targets = [service.target(column) for column in columns]
    for column in columns:  # a model outside the key's list is as unknown as on chat completions
        check_generation(caller, column, service.base_name)
    prompt = service.chat_prompt(columns[0])  # the same messages: one rendering serves every column
    created = int(time.time())
    replies = [_Reply("chat", f"chatcmpl-{uuid.uuid4().hex}", created, model, 1, body.include_usage)
               for model in body.models]
    rates.admit(caller)
    spend = functools.partial(rates.spend, caller)  # every column's tokens count against the key
    service.budget.acquire(caller)
    handed_over = False
    try:
        opened = await _until_disconnect(request, lambda: _open_all(service, prompt, targets, columns))
        if opened is None:
            return Response(status_code=499)
        headers = {"X-Adapter-Version": ", ".join(o.adapter_version or service.base_name for o in opened),
                   "X-Request-Id": f"cmp-{replies[0].id.removeprefix('chatcmpl-')}"}
        if body.stream:
            handed_over = True

            def release() -> None:
                for one in opened:
                    one.cancel()
                service.budget.release(caller)

            streams = [_events(service, one, reply, spend) for one, reply in zip(opened, replies, strict=True)]
            return _EventStream(_merged(streams), release, headers=headers)
        try:
            answers = await _until_disconnect(request, lambda: _collect_all(service, opened, replies, spend))
        except BaseExceptionGroup as group:  # one column failed: its error, as one request's would be
            raise group.exceptions[0] from None
        if answers is None:
            return Response(status_code=499)
        return JSONResponse(CompareResponse(id=headers["X-Request-Id"], created=created,
                                            answers=answers).model_dump(mode="json"), headers=headers)
    finally:
        if not handed_over:
            service.budget.release(caller)


async def _open_all(
    service: InferenceService, prompt: list[int], targets: list[Target], columns: list[ChatCompletionRequest]
) -> list[OpenRequest]:
    """Open every column at once (so the engine admits them into one batch). If one is refused,
    or the caller is cancelled (the client left) while they open, the columns already open are
    cancelled and counted, and the error (or the cancellation) goes on."""
    tasks = [asyncio.ensure_future(service.open([prompt], target, column))
             for target, column in zip(targets, columns, strict=True)]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks)
        _cancel_opened(service, tasks)
        raise
    failed = [t.exception() for t in tasks if t.exception() is not None]
    if failed:
        _cancel_opened(service, tasks)
        if isinstance(failed[0], AdapterHubError):
            service.count_refused("chat", failed[0])
        raise failed[0]
    return [t.result() for t in tasks]


def _cancel_opened(service: InferenceService, tasks: list[asyncio.Future[OpenRequest]]) -> None:
    for task in tasks:
        if not task.cancelled() and task.exception() is None:
            task.result().cancel()
            service.finish(task.result(), "chat", "cancelled", 0)


async def _collect_all(service: InferenceService, opened: list[OpenRequest], replies: list[_Reply],
                       spend: Callable[[int], None]) -> list[dict[str, Any]]:
    """Every column's whole answer; if one fails, the others are cancelled and its error goes on."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_collect(service, one, reply, spend))
                 for one, reply in zip(opened, replies, strict=True)]
    return [task.result() for task in tasks]


async def _merged(streams: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """The events of several SSE streams as they come, each stream's ``[DONE]`` held back and
    one sent when all have ended."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump(stream: AsyncIterator[str]) -> None:
        try:
            async for event in stream:
                if event != "data: [DONE]\n\n":
                    await queue.put(event)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            event = await queue.get()
            if event is None:
                running -= 1
            else:
                yield event
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@models_router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES,
            summary="The base and every registered adapter version (those the key may use)")
async def list_models(caller: InferenceCaller, service: ReadyService, hub: HubDep) -> ModelList:
    def read() -> list[tuple[Version, dict[str, float]]]:
        return [(v, {e.subject: e.value for e in hub.evaluations(v, latest=True)})
                for v in hub.list() if caller.may_use(v.name)]

    versions = await anyio.to_thread.run_sync(read)
    base, max_len = service.base_name, service.max_model_len
    cards = [ModelCard(id=base, created=int(time.time()), root=base, parent=None, max_model_len=max_len)]
    latest = {v.name: (v, scores) for v, scores in versions}  # oldest first, so the last one wins
    listed = [(name, *latest[name]) for name in sorted(latest)]
    listed += [(v.ref, v, scores) for v, scores in sorted(versions, key=lambda pair: (pair[0].name, pair[0].number))]
    for model_id, v, scores in listed:
        cards.append(ModelCard(id=model_id, created=int(v.created_at), root=base, parent=base, version=v.ref,
                               aliases=list(v.aliases), method=v.method, max_model_len=max_len,
                               evaluations=scores))
    return ModelList(data=cards)


# ---------------------------------------------------------------------------- shared path


async def _generate(
    request: Request,
    service: InferenceService,
    caller: Caller,
    rates: KeyRates,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    target: Target,
    reply: _Reply,
) -> Response:
    endpoint = reply.kind
    rates.admit(caller)
    spend = functools.partial(rates.spend, caller)
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

            return _EventStream(_events(service, opened, reply, spend), release, headers=headers)
        answer = await _until_disconnect(request, lambda: _collect(service, opened, reply, spend))
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


async def _collect(service: InferenceService, opened: OpenRequest, reply: _Reply,
                   spend: Callable[[int], None]) -> dict[str, Any]:
    """Run every row to the end and build the whole (non-streaming) answer; ``spend`` is told
    the tokens used (prompt + completion), however it ends."""
    rows = len(opened.streams)
    texts: list[list[str]] = [[] for _ in range(rows)]
    reasons: list[str | None] = [None] * rows
    tokens = [0] * rows
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(rows)]
    scored: list[tuple[TokenLogprob | None, ...]] = [() for _ in range(rows)]
    outcome = "error"
    try:
        async for row, chunk in service.rows(opened):
            texts[row].append(chunk.text)
            tokens[row] += len(chunk.token_ids)
            logprobs[row].extend(chunk.logprobs)
            scored[row] = scored[row] or chunk.prompt_logprobs
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
        spend(_usage(opened, reply, sum(tokens)).total_tokens)
    usage = _usage(opened, reply, sum(tokens))
    words = _TokenWords(service.base.tokenizer)
    if reply.kind == "chat":
        return ChatCompletionResponse(
            id=reply.id, created=reply.created, model=reply.model, usage=usage,
            choices=[ChatChoice(index=i, logprobs=words.chat(logprobs[i]),
                                **_chat_answer(reply, "".join(texts[i]), reasons[i]))
                     for i in range(rows)],
        ).model_dump(mode="json")
    return CompletionResponse(
        id=reply.id, created=reply.created, model=reply.model, usage=usage,
        choices=[_completion_choice(i, "".join(texts[i]), reasons[i], words, reply.echoed(i), scored[i], logprobs[i], 0)
                 for i in range(rows)],
    ).model_dump(mode="json")


def _tool_calls(reply: _Reply, text: str) -> list[ToolCall] | None:
    """The calls in a forced-call answer (None when it is not complete JSON, e.g. cut by
    ``max_tokens``): the named function's arguments, or ``required``'s array of calls."""
    if reply.call is None:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    (named,) = reply.call
    calls = [(named, parsed)] if named is not None else [(c["name"], c["arguments"]) for c in parsed]
    return [ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=name, arguments=json.dumps(args)))
            for name, args in calls]


def _chat_answer(reply: _Reply, text: str, finish: str | None) -> dict[str, Any]:
    """A chat choice's message and finish reason: text, or the tool calls a forced call made
    (OpenAI's ``tool_calls`` finish for ``required``, ``stop`` for a named function)."""
    calls = _tool_calls(reply, text) if finish == "stop" else None
    if calls is None:
        return {"message": ChatMessageOut(content=text), "finish_reason": finish}
    finish = "tool_calls" if reply.call == (None,) else "stop"
    return {"message": ChatMessageOut(content=None, tool_calls=calls), "finish_reason": finish}


def _completion_choice(
    row: int, text: str, finish: str | None, words: _TokenWords, echoed: tuple[str, tuple[int, ...]] | None,
    scored: Sequence[TokenLogprob | None], logprobs: Sequence[TokenLogprob], offset: int,
) -> CompletionChoice:
    """A completions choice; with ``echoed`` (the first of a row's answer) the prompt leads its
    text and its log-probabilities (the first prompt token's is null, as in OpenAI's API)."""
    entries = [(lp.token_id, lp.logprob, lp.top) for lp in logprobs]
    asked = bool(logprobs) or bool(scored)
    if echoed is not None:
        prompt_text, ids = echoed
        text = prompt_text + text
        if scored:
            entries = [(ids[0], None, None), *((lp.token_id, lp.logprob, lp.top) for lp in scored[1:] if lp),
                       *entries]
    return CompletionChoice(index=row, text=text, finish_reason=finish,
                            logprobs=words.completion(entries, offset) if asked else None)


async def _events(service: InferenceService, opened: OpenRequest, reply: _Reply,
                  spend: Callable[[int], None]) -> AsyncIterator[str]:
    """SSE events of a streaming answer, ending with ``data: [DONE]``; ``spend`` as for
    :func:`_collect`."""
    tokens = 0
    outcome = "cancelled"
    finished: dict[int, str] = {}
    words = _TokenWords(service.base.tokenizer)
    offsets = [0] * len(opened.streams)  # characters of each row's completion streamed so far
    echoing = set(range(len(opened.streams))) if reply.echo else set()  # rows whose prompt is still to send
    held: dict[int, str] = {}  # forced calls: each row's text until it ends
    try:
        if reply.kind == "chat":
            for row in range(len(opened.streams)):  # OpenAI opens each choice with its role
                yield _chat_event(reply, row, ChatDelta(role="assistant", content=""), None)
        async for row, chunk in service.rows(opened):
            tokens += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                finished[row] = chunk.finish_reason
            if reply.call is not None:  # a forced call streams as one tool_calls delta at its end
                held[row] = held.get(row, "") + chunk.text
                if chunk.finish_reason is not None:
                    yield _call_event(reply, row, held.pop(row), chunk.finish_reason)
                continue
            if chunk.text or chunk.logprobs or chunk.finish_reason is not None or row in echoing:
                echoed = reply.echoed(row) if row in echoing else None
                echoing.discard(row)
                yield _chunk_event(reply, row, chunk, words, offsets[row], echoed)
                offsets[row] += sum(len(words.text(lp.token_id)) for lp in chunk.logprobs)
                if echoed is not None:
                    offsets[row] += sum(len(words.text(t)) for t in echoed[1])
        for row in range(len(opened.streams)):  # rows cut short by a shutdown still end
            if row not in finished:
                finished[row] = "cancelled"
                yield _chunk_event(reply, row, GenerationChunk("", "", (), finish_reason="cancelled"), words, 0)
        if reply.include_usage:
            yield _usage_event(reply, _usage(opened, reply, tokens))
        outcome = finished[0]
    except Exception as error:  # a library error in its own shape; anything else logged with an id
        outcome = "error"
        yield sse_error_event(error)
    finally:
        opened.cancel()
        service.finish(opened, reply.kind, outcome, tokens)
        spend(_usage(opened, reply, tokens).total_tokens)
    yield "data: [DONE]\n\n"


def _call_event(reply: _Reply, row: int, text: str, finish: str) -> str:
    answer = _chat_answer(reply, text, finish)
    message: ChatMessageOut = answer["message"]
    if message.tool_calls is None:
        return _chat_event(reply, row, ChatDelta(content=text), answer["finish_reason"])
    calls = [ToolCallDelta(index=i, **call.model_dump()) for i, call in enumerate(message.tool_calls)]
    return _chat_event(reply, row, ChatDelta(tool_calls=calls), answer["finish_reason"])


def _chat_event(reply: _Reply, row: int, delta: ChatDelta, finish: str | None,
                logprobs: ChatLogprobs | None = None) -> str:
    chunk = ChatCompletionChunk(
        id=reply.id, created=reply.created, model=reply.model,
        choices=[ChatChunkChoice(index=row, delta=delta, finish_reason=finish, logprobs=logprobs)],
    )
    return f"data: {chunk.model_dump_json()}\n\n"


def _chunk_event(reply: _Reply, row: int, chunk: GenerationChunk, words: _TokenWords, offset: int,
                 echoed: tuple[str, tuple[int, ...]] | None = None) -> str:
    if reply.kind == "chat":
        return _chat_event(reply, row, ChatDelta(content=chunk.text), chunk.finish_reason,
                           words.chat(chunk.logprobs))
    choice = _completion_choice(row, chunk.text, chunk.finish_reason, words, echoed, chunk.prompt_logprobs,
                                chunk.logprobs, offset)
    event = CompletionResponse(id=reply.id, created=reply.created, model=reply.model, choices=[choice])
    return f"data: {event.model_dump_json()}\n\n"


class _TokenWords:
    """Log-probabilities in the two APIs' shapes, each token as the text it decodes to alone."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = str(self.tokenizer.decode([token_id]))
        return self._texts[token_id]

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self.text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    def chat(self, logprobs: Sequence[TokenLogprob]) -> ChatLogprobs | None:
        if not logprobs:
            return None
        return ChatLogprobs(content=[
            ChatTokenLogprob(**self._top(lp.token_id, lp.logprob).model_dump(),
                             top_logprobs=[self._top(t, v) for t, v in lp.top])
            for lp in logprobs
        ])

    def completion(self, entries: Sequence[tuple[int, float | None, Sequence[tuple[int, float]] | None]],
                   offset: int) -> CompletionLogprobs:
        """``(token id, log-probability, alternatives)`` per token; None where a token has none."""
        out = CompletionLogprobs()
        for token, logprob, top in entries:
            text = self.text(token)
            out.tokens.append(text)
            out.token_logprobs.append(logprob)
            out.top_logprobs.append(None if top is None else self._by_text(top))
            out.text_offset.append(offset)
            offset += len(text)
        return out

    def _by_text(self, top: Sequence[tuple[int, float]]) -> dict[str, float]:
        """Most likely first; of two tokens that decode alike, the likelier keeps the entry."""
        entry: dict[str, float] = {}
        for token, logprob in top:
            entry.setdefault(self.text(token), logprob)
        return entry


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
