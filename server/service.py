"""The server's one hold on the library: Hub, base and Engine, and how requests become rows.

:class:`InferenceService` is created by ``create_app`` (never at import), loads the hub, the base
and the engine once in a worker thread, and turns wire requests into engine requests.

Design choices:

* **Loading in the background.** The lifespan starts the load and returns, so ``/health``
  answers at once and generation routes answer 503 ``not_ready`` (with ``Retry-After``) until the
  base and engine are up; ``/ready`` says which.
* **The event loop never runs a forward.** The engine has its own thread; here we only render
  prompts, submit, and await chunks. Blocking admin calls go through ``anyio.to_thread``.
* **Fail before the headers.** The engine raises admission errors (unknown adapter, full queue,
  prompt too long) at submit; :meth:`open` also waits for the first chunk of every row before
  the route answers, so even a corrupt adapter found by the loader gets a real status code and
  the resolved version can go in the ``X-Adapter-Version`` header.
* **Cancellation is explicit.** Every opened stream is cancelled in a ``finally`` (a no-op once
  finished), so a client that disconnects, a failed sibling row or a shutdown frees rows at once.
* **Refs resolve once per request, off the event loop.** A request's ref (or mix) is resolved
  against the registry in a worker thread before its rows are submitted, and every row carries
  the resolved version: n rows cost one registry read, the event loop never waits on the
  database, and a version registered by another process is served without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import HTTPException

from adapterhub.engine.grammar import json_schema_grammar
from adapterhub.engine.types import AdapterMix, GenerationChunk, GenerationRequest, SamplingParams
from adapterhub.errors import AdapterHubError, ConfigError, PromptTooLongError
from adapterhub_server.auth import RequestBudget
from adapterhub_server.lifecycle import Phase, ServiceLifecycle
from adapterhub_server.metrics import ServerMetrics
from adapterhub_server.schemas import ChatCompletionRequest, CompletionRequest
from adapterhub_server.settings import ServerSettings

if TYPE_CHECKING:
    from adapterhub.engine import Engine, RequestStream
    from adapterhub.facade import Hub
    from adapterhub.models.base import LoadedBase
    from adapterhub.registry import Version

log = logging.getLogger("adapterhub.server")
BASE_LABEL = "base"


@dataclass(frozen=True)
class Loaded:
    """What a successful load made: the hub, its base in memory, and the engine over that base."""

    hub: Hub
    engine: Engine


@dataclass(frozen=True)
class Target:
    """Which weights serve a request: the base (both None), one adapter ref, or a mix."""

    adapter: str | Version | None = None
    mix: AdapterMix | None = None


@dataclass(eq=False)
class OpenRequest:
    """A request whose rows are submitted and have each produced their first chunk.

    Attributes:
        streams: one per row (prompt x n), in choice order.
        first: each row's first chunk.
        adapter_version: the resolved version (``name@N``), a mix's description, or None.
        label: the metrics label (resolved version, ``mix`` or ``base``).
    """

    streams: list[RequestStream]
    first: list[GenerationChunk]
    adapter_version: str | None
    label: str
    started: float
    prompt_tokens: list[int] = field(default_factory=list)

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()


class InferenceService(ServiceLifecycle[Loaded]):
    """Hub + base + engine for one app, and the request plumbing around them."""

    starting_reason = "the server is still loading the base model; retry shortly"
    failed_reason = "the server could not load its model"

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__()
        self.settings = settings
        self.budget = RequestBudget(settings.max_streams_per_key)
        self.metrics = ServerMetrics(self._engine_stats)
        self._open: set[OpenRequest] = set()  # requests with rows in the engine

    # ------------------------------------------------------------------ lifecycle (see lifecycle.py)

    async def _start(self) -> Loaded:
        import torch

        from adapterhub.engine.threads import single_threaded

        # Only the engine's decode thread may run multi-threaded torch ops (see
        # adapterhub.engine.threads): this thread, and the worker that loads the base, use one.
        threads = self.settings.engine.num_threads or torch.get_num_threads()
        single_threaded()
        hub = await anyio.to_thread.run_sync(self._load_base)
        return Loaded(hub, self._start_engine(hub, threads))

    def _on_ready(self, loaded: Loaded) -> None:
        log.info("ready: base %s, %d slots", self.base_name, self.settings.engine.max_slots)

    def _load_base(self) -> Hub:
        from adapterhub.facade import Hub

        hub = Hub(self.settings.home, registry=self.settings.registry_url, blobs=self.settings.blobs,
                  precision=self.settings.precision, device=self.settings.device,
                  compute_dtype=self.settings.compute_dtype)
        log.info("%s", hub.base.summary())  # loads the model: the slow part, in a worker thread
        return hub

    def _start_engine(self, hub: Hub, threads: int) -> Engine:
        """The engine, its decode thread on ``threads`` intra-op threads."""
        from adapterhub.engine import Engine

        return Engine(hub.base, hub.registry, self.settings.engine.model_copy(update={"num_threads": threads}))

    def begin_drain(self, grace_s: float) -> None:
        """Shutdown has begun: refuse new requests now, and cancel rows still running just
        before ``grace_s`` ends, so their streams end cleanly (last chunk, ``[DONE]``) rather
        than being cut by the server's hard timeout."""
        self.phase = Phase.STOPPING
        log.info("draining: %d requests in flight, %.1fs to finish", len(self._open), grace_s)

        def cancel_the_rest() -> None:
            for opened in list(self._open):
                opened.cancel()

        asyncio.get_running_loop().call_later(max(grace_s - 0.5, 0.0), cancel_the_rest)

    async def close(self) -> None:
        """Stop the engine: rows still running end with an error event."""
        self.phase = Phase.STOPPING
        await self._stop_starting()  # a half-built engine would leak its thread
        if self._loaded is not None:
            await anyio.to_thread.run_sync(self._loaded.engine.close)  # a second close is a no-op

    @property
    def engine(self) -> Engine | None:
        """The engine once loaded (closed after shutdown), else None."""
        return self._loaded.engine if self._loaded is not None else None

    def _engine_stats(self) -> Any:
        loaded = self._loaded if self.phase is Phase.READY else None
        return loaded.engine.stats() if loaded is not None else None

    # ------------------------------------------------------------------ identity

    @property
    def base(self) -> LoadedBase:
        return self.loaded.hub.base

    @property
    def base_name(self) -> str:
        return self.base.info.name

    @property
    def max_model_len(self) -> int:
        return int(self.loaded.engine.max_seq_len)

    # ------------------------------------------------------------------ request -> rows

    def target(self, body: ChatCompletionRequest | CompletionRequest) -> Target:
        """Base, adapter or mix from ``model`` / ``adapter_id`` / ``mix``.

        Raises:
            ConfigError: a mix with ``model`` naming an adapter.
        """
        base = self.base_name
        if body.mix is not None:
            if body.model != base:
                raise ConfigError(
                    f"model={body.model!r} with mix: a mix combines adapters over the base, so "
                    f"model must be the base {base!r}"
                )
            return Target(mix=AdapterMix(tuple(m.ref for m in body.mix), tuple(m.weight for m in body.mix)))
        ref = body.adapter_id or body.model
        return Target() if ref == base else Target(adapter=ref)

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        """Token ids of the conversation through the base's chat template.

        Raises:
            ConfigError: the template refuses the conversation (e.g. roles it does not know).
        """
        import jinja2

        messages = [m.for_template() for m in body.messages]
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
        try:
            ids = self.base.render_chat(messages, tools=tools)
        except jinja2.TemplateError as e:
            raise ConfigError(
                f"messages: the base's chat template refused this conversation ({e}); check the "
                "roles and their order"
            ) from e
        self._check_prompt(len(ids))
        return ids

    def completion_prompts(self, body: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt of a text completion (no chat template)."""
        prompt = body.prompt
        texts = _prompt_strings(body)
        if texts is not None:
            tokenizer = self.base.tokenizer
            prompts = [list(tokenizer(text)["input_ids"]) for text in texts]
        elif prompt and isinstance(prompt[0], list):
            prompts = [list(p) for p in prompt]  # type: ignore[arg-type]
        else:
            prompts = [list(prompt)]  # type: ignore[arg-type]
        if len(prompts) > self.settings.max_prompts_per_request:
            raise ConfigError(
                f"prompt has {len(prompts)} prompts; the server allows at most "
                f"max_prompts_per_request={self.settings.max_prompts_per_request} per request"
            )
        for ids in prompts:
            if not ids:
                raise ConfigError("prompt is empty; give at least one token of text")
            self._check_prompt(len(ids))
        return prompts

    def prompt_texts(self, body: CompletionRequest, prompts: Sequence[Sequence[int]]) -> list[str]:
        """Each prompt as text, for ``echo``: the strings sent, or token ids decoded."""
        texts = _prompt_strings(body)
        if texts is not None:
            return texts
        return [str(self.base.tokenizer.decode(ids, skip_special_tokens=True)) for ids in prompts]

    def _check_prompt(self, length: int) -> None:
        limit = min(self.settings.max_prompt_tokens, self.max_model_len - 1)
        if length > limit:
            raise PromptTooLongError(
                f"the prompt is {length} tokens, over this server's limit of {limit} "
                f"(max_prompt_tokens={self.settings.max_prompt_tokens}, context "
                f"{self.max_model_len} minus at least one generated token); shorten it"
            )

    def sampling(self, body: ChatCompletionRequest | CompletionRequest, prompt_len: int) -> list[SamplingParams]:
        """One :class:`SamplingParams` per choice (``n``); seeds differ per choice.

        Raises:
            ConfigError: ``n`` or ``max_tokens`` over the server's limits.
            PromptTooLongError: ``prompt + max_tokens`` over the context.
        """
        s = self.settings
        problems = []
        if body.n > s.max_n:
            problems.append(f"n={body.n} is over the server's max_n={s.max_n}; ask for fewer choices")
        if body.max_tokens is not None and body.max_tokens > s.max_tokens_limit:
            problems.append(
                f"max_tokens={body.max_tokens} is over the server's max_tokens_limit="
                f"{s.max_tokens_limit}; ask for fewer"
            )
        grammar = _grammar(body)
        bias = body.bias_pairs()
        vocab = len(self.base.tokenizer)
        out_of_range = [token for token, _ in bias if token >= vocab]
        if out_of_range:
            problems.append(f"logit_bias names token ids {out_of_range[:3]!r}, over this base's vocabulary of {vocab}")
        if problems:
            raise ConfigError(problems, source="request")
        room = self.max_model_len - prompt_len
        max_tokens = body.max_tokens if body.max_tokens is not None else min(s.default_max_tokens, room)
        if max_tokens > room:
            raise PromptTooLongError(
                f"the prompt is {prompt_len} tokens and max_tokens={max_tokens}: "
                f"{prompt_len + max_tokens} is over the context of {self.max_model_len}; "
                f"lower max_tokens to at most {room} or shorten the prompt"
            )
        return [
            SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=max(body.top_k, 0),
                seed=None if body.seed is None else body.seed + i,
                stop=body.stop_strings(),
                min_tokens=body.min_tokens,
                ignore_eos=body.ignore_eos,
                logprobs=_logprobs(body),
                prompt_logprobs=body.logprobs if isinstance(body, CompletionRequest) and body.echo else None,
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty,
                repetition_penalty=body.repetition_penalty,
                logit_bias=bias,
                grammar=grammar,
            )
            for i in range(body.n)
        ]

    async def open(
        self, prompts: Sequence[Sequence[int]], target: Target, body: ChatCompletionRequest | CompletionRequest
    ) -> OpenRequest:
        """Submit every row (prompt x n) and wait for each row's first chunk.

        Raises:
            AdapterHubError: admission errors from the engine, or an error that a row met
                before its first token (every other row is then cancelled).
        """
        engine = self.ready().engine
        started = time.perf_counter()
        target = await anyio.to_thread.run_sync(self._resolved, engine, target)
        grammar = _grammar(body)
        if grammar is not None:  # compiled off the event loop first; each row's matcher is then quick
            await anyio.to_thread.run_sync(engine.check_grammar, grammar)
        streams: list[RequestStream] = []
        opened: OpenRequest | None = None
        prefix = uuid.uuid4().hex[:16]
        try:
            for ids in prompts:
                for params in self.sampling(body, len(ids)):
                    request = GenerationRequest(
                        prompt_ids=tuple(ids), adapter=target.adapter, mix=target.mix,
                        sampling=params, request_id=f"{prefix}-{len(streams)}",
                    )
                    streams.append(engine.stream(request))
            results = await asyncio.gather(*(anext(s) for s in streams), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            first: list[GenerationChunk] = list(results)  # type: ignore[arg-type]
            version = first[0].adapter_version
            label = "mix" if target.mix is not None else (version or BASE_LABEL)
            opened = OpenRequest(streams, first, version, label, started,
                                 [len(ids) for ids in prompts for _ in range(body.n)])
            self._open.add(opened)
            self.metrics.first_tokens(started, len(streams))
            return opened
        finally:
            if opened is None:
                for stream in streams:
                    stream.cancel()

    @staticmethod
    def _resolved(engine: Engine, target: Target) -> Target:
        """``target`` with its refs resolved to versions (worker thread: this reads the registry)."""
        if target.adapter is not None:
            return Target(adapter=engine.resolve(target.adapter))
        if target.mix is not None:
            versions = tuple(engine.resolve(ref) for ref in target.mix.refs)
            return Target(mix=AdapterMix(versions, target.mix.weights))
        return target

    async def rows(self, opened: OpenRequest) -> AsyncIterator[tuple[int, GenerationChunk]]:
        """Every chunk of every row as ``(row, chunk)``, first chunks first, until all finish.

        Errors of a row after its first chunk are raised here; the caller cancels the rest.
        """
        last = [time.perf_counter()] * len(opened.streams)

        def timed(row: int, chunk: GenerationChunk) -> tuple[int, GenerationChunk]:
            now = time.perf_counter()
            self.metrics.token_gap(now - last[row], len(chunk.token_ids))
            last[row] = now
            return row, chunk

        for row, chunk in enumerate(opened.first):
            yield row, chunk
        live = [row for row, chunk in enumerate(opened.first) if chunk.finish_reason is None]
        if len(live) == 1:
            row = live[0]
            async for chunk in opened.streams[row]:
                yield timed(row, chunk)
            return
        queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

        async def pump(row: int) -> None:
            try:
                async for chunk in opened.streams[row]:
                    queue.put_nowait((row, chunk))
            except BaseException as error:  # handed to the consumer, which re-raises it
                queue.put_nowait((row, error))
            else:
                queue.put_nowait((row, None))

        tasks = [asyncio.create_task(pump(row)) for row in live]
        try:
            pending = len(tasks)
            while pending:
                row, item = await queue.get()
                if item is None:
                    pending -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield timed(row, item)
        finally:
            for task in tasks:
                task.cancel()

    def finish(self, opened: OpenRequest, endpoint: str, outcome: str, completion_tokens: int) -> None:
        """Count a finished (or failed, or cancelled) request in the metrics."""
        self._open.discard(opened)
        self.metrics.request_done(
            opened.label, endpoint, outcome, sum(opened.prompt_tokens), completion_tokens,
            time.perf_counter() - opened.started,
        )

    def count_refused(self, endpoint: str, error: BaseException) -> None:
        kind = type(error).__name__ if isinstance(error, AdapterHubError | HTTPException) else "internal"
        self.metrics.refused(endpoint, kind)


def _prompt_strings(body: CompletionRequest) -> list[str] | None:
    """The prompts of a text completion when sent as strings; None when sent as token ids."""
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], str):
        return [str(p) for p in prompt]
    return None


def _logprobs(body: ChatCompletionRequest | CompletionRequest) -> int | None:
    """The engine's ``logprobs`` (alternatives per token, None for none) from either API's fields."""
    if isinstance(body, ChatCompletionRequest):
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def _grammar(body: ChatCompletionRequest | CompletionRequest) -> str | None:
    """The grammar a chat ``response_format`` or forced ``tool_choice`` enforces; None for text."""
    if not isinstance(body, ChatCompletionRequest):
        return None
    forced = body.forced_call()
    if forced is not None:
        return json_schema_grammar(forced[1])
    schema = body.response_format.schema_to_enforce() if body.response_format is not None else None
    return None if schema is None else json_schema_grammar(schema)
