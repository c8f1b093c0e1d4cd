"""The in-process backend: the TUI over :class:`adapterhub.Hub` in this very process.

Registry calls (SQLite, checksummed blobs), training (torch) and engine start-up block, so every
one runs in a thread (``asyncio.to_thread``) and the event loop stays free to draw. Generation
uses the library's engine (:class:`adapterhub.engine.Engine`): one engine thread over the hub's
one frozen base, started on the first compare and shared by every column, so the columns of one
prompt decode together in its continuous batch; its async stream feeds the UI directly.

Design choices:

* Heavy imports (torch, the engine, training) happen on first use, not at import, so the app
  opens at once even on a large base.
* Training is :meth:`adapterhub.Hub.train` with the overrides as ``--set`` keys; it loads its
  own private base copy, so the engine keeps serving while a run trains. A version registered by
  the run is servable at once: the engine resolves refs through the same registry.
* A base the engine does not serve falls back to :meth:`adapterhub.Hub.generate`, the library's
  one-request-at-a-time path, delivered as one chunk.
* Evaluation is :meth:`adapterhub.Hub.evaluate` in a thread: lm-evaluation-harness over an engine
  of its own on the same loaded base, with the hub's engine settings, so what is measured is what
  compare streams. The numbers are recorded in the registry before the call returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.core.progress import CancelToken, ProgressCallback, ProgressEvent
from adapterhub.engine.types import GenerationChunk, GenerationRequest, SamplingParams, Usage
from adapterhub.errors import AdapterHubError, ConfigError, EngineError
from adapterhub.registry import Evaluation, Version
from adapterhub.training.votes import PreferenceStore
from adapterhub_tui.backend import BackendInfo, Capability, ChatMessages, TrainRequest

if TYPE_CHECKING:
    from adapterhub.engine import Engine, EngineConfig
    from adapterhub.facade import Hub



class InProcessBackend:
    """A :class:`~adapterhub_tui.backend.Backend` over a :class:`~adapterhub.Hub`.

    Args:
        hub: the hub home to work on.
        engine_config: settings of the engine compare streams through (library defaults if None).
    """

    def __init__(self, hub: Hub, *, engine_config: EngineConfig | None = None) -> None:
        self.hub = hub
        self.engine_config = engine_config
        self._engine: Engine | None = None
        self._engine_failed: BaseException | None = None
        self._engine_lock = threading.Lock()  # one engine, whichever column asks first

    @property
    def home(self) -> Path:
        return self.hub.home

    def preference_store(self) -> PreferenceStore:
        return PreferenceStore.in_home(self.hub.home)

    # ------------------------------------------------------------------ registry

    async def describe(self) -> BackendInfo:
        info = await asyncio.to_thread(lambda: self.hub.base_info)
        return BackendInfo(f"in-process {self.hub.home}", info.name, frozenset(Capability))  # a Hub does all

    async def list_versions(self) -> list[Version]:
        return await asyncio.to_thread(self.hub.list)

    async def lineage(self, ref: str) -> list[Version]:
        return await asyncio.to_thread(self.hub.lineage, ref)

    async def step_log(self, ref: str) -> list[ProgressEvent]:
        return await asyncio.to_thread(self.hub.step_log, ref)

    async def evaluations(self, ref: str) -> list[Evaluation]:
        return await asyncio.to_thread(self.hub.evaluations, ref, latest=True)

    async def gates(self, ref: str) -> dict[str, list[str]]:
        def read() -> dict[str, list[str]]:
            version = self.hub.resolve(ref)
            rules = {alias: [str(g) for g in self.hub.gates(version.name, alias)]
                     for alias in version.aliases}
            return {alias: texts for alias, texts in rules.items() if texts}

        return await asyncio.to_thread(read)

    async def tag(self, ref: str, alias: str) -> Version:
        return await asyncio.to_thread(self.hub.tag, ref, alias)

    async def delete(self, ref: str) -> list[Version]:
        return await asyncio.to_thread(self.hub.delete, ref)

    async def push(self, ref: str, repo_id: str) -> str:
        result = await asyncio.to_thread(self.hub.push, ref, repo_id)
        return f"{result.url} ({result.tag}, {result.commit[:10]})"

    async def pull(self, repo_id: str, name: str | None = None) -> Version:
        repo, _, revision = repo_id.partition("@")
        result = await asyncio.to_thread(
            self.hub.pull, repo, revision=revision or None, name=name
        )
        return result.version

    # ------------------------------------------------------------------ training

    async def check_training(self, request: TrainRequest) -> list[str]:
        try:
            await asyncio.to_thread(self.hub.plan_run, _source(request), **request.overrides)
        except ConfigError as e:
            return list(e.problems)
        except AdapterHubError as e:  # e.g. the parent does not resolve
            return [str(e)]
        return []

    async def train(
        self, request: TrainRequest, *, progress: ProgressCallback, cancel: CancelToken
    ) -> Version:
        return await asyncio.to_thread(
            self.hub.train, _source(request), progress=progress, cancel=cancel, **request.overrides
        )

    # ------------------------------------------------------------------ evaluation

    async def evaluate(
        self, ref: str, tasks: Sequence[str], *, limit: int | None = None,
        progress: ProgressCallback,
    ) -> list[Evaluation]:
        def run() -> list[Evaluation]:
            report = self.hub.evaluate(ref, list(tasks), limit=limit,
                                       engine_config=self.engine_config, progress=progress)
            return list(report.evaluations)

        return await asyncio.to_thread(run)

    # ------------------------------------------------------------------ generation

    def _start_engine(self) -> Engine | None:
        """The shared engine, started once; None when the base has no engine fast path."""
        with self._engine_lock:
            if self._engine is None and self._engine_failed is None:
                from adapterhub.engine import Engine

                try:
                    self._engine = Engine(self.hub.base, self.hub.registry, self.engine_config)
                except EngineError as e:
                    self._engine_failed = e
            return self._engine

    async def stream(
        self, ref: str | None, messages: ChatMessages, sampling: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        chat = [dict(m) for m in messages]
        engine = await asyncio.to_thread(self._start_engine)
        if engine is None:
            yield await asyncio.to_thread(self._generate_alone, ref, chat, sampling)
            return
        prompt_ids = await asyncio.to_thread(self.hub.base.render_chat, chat)
        request = GenerationRequest(prompt_ids=tuple(prompt_ids), adapter=ref, sampling=sampling)
        async with engine.stream(request) as chunks:
            async for chunk in chunks:
                yield chunk

    def _generate_alone(
        self, ref: str | None, chat: list[dict[str, str]], sampling: SamplingParams
    ) -> GenerationChunk:
        resolved = self.hub.resolve(ref).ref if ref is not None else None
        text = self.hub.generate(ref, chat, sampling)
        completion = len(self.hub.base.tokenizer.encode(text, add_special_tokens=False))
        prompt = len(self.hub.base.render_chat(chat))
        return GenerationChunk(
            "local", text, (), finish_reason="stop",
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
            adapter_version=resolved,
        )

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)


def _source(request: TrainRequest) -> Path | Mapping[str, Any]:
    return request.recipe if isinstance(request.recipe, Mapping) else Path(request.recipe)
