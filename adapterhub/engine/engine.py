"""The inference engine: one base, adapter slots, mixed-adapter continuous batching.

``Engine(base, registry)`` starts one engine thread that owns the model, the KV cache and the
slots. Callers on any thread (or an asyncio loop) hand requests in through a queue and get
chunks back through a sink callback; the server's event loop therefore never runs a forward.

Design choices:

* **One engine thread, one loop.** Each iteration: take new requests, cancellations and admin
  calls from the inbox; admit queued requests into free rows (:mod:`.scheduler`); prefill the
  admitted prompts; run one decode step for every running row; emit one chunk per row; free
  finished rows. torch releases the GIL inside its kernels, so other threads stay responsive.
* **Fail early, on the caller's thread.** Unknown refs, incompatible adapters, prompts that do
  not fit and a full queue raise from :meth:`Engine.submit` before anything is queued, so the
  server can answer 404/400/429 before it starts a stream.
* **Errors after queuing travel in the stream.** A corrupt blob found by the loader fails the
  requests that wait for it: the sink receives the exception, and the sync and async APIs
  raise it to their caller.
* **Three faces on one primitive.** :meth:`Engine.submit` with a sink is the primitive;
  :meth:`Engine.generate` (blocking) and :meth:`Engine.stream` (async iterator) are built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from adapterhub.engine.config import EngineConfig
from adapterhub.engine.decoder import DecoderRunner, compute_dtype
from adapterhub.engine.grammar import Grammars
from adapterhub.engine.lora import LoraSlots, RowMix
from adapterhub.engine.prefix_cache import (
    BLOCK_TOKENS,
    PrefixCache,
    adapter_key,
    block_hashes,
    reusable,
)
from adapterhub.engine.residency import AdapterResidency, AdapterSource
from adapterhub.engine.sampling import (
    RowSampler,
    TextTracker,
    choose_tokens,
    prompt_token_logprobs,
    token_logprob,
)
from adapterhub.engine.scheduler import Job, Scheduler, Sink
from adapterhub.engine.threads import use_threads
from adapterhub.engine.types import (
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ResidentAdapter,
    TokenLogprob,
    Usage,
)
from adapterhub.errors import CapacityError, ConfigError, EngineError, PromptTooLongError
from adapterhub.registry import Version

_log = logging.getLogger(__name__)


class Engine:
    """Serve many adapters over one frozen base with continuous batching.

    Example::

        with Engine(load_base(path, "bf16"), Registry(home)) as engine:
            result = engine.generate(GenerationRequest(prompt_ids=ids, adapter="pirate@3"))
    """

    def __init__(
        self,
        base: Any,
        registry: AdapterSource | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        """Start the engine thread.

        Args:
            base: a :class:`~adapterhub.models.base.LoadedBase` (a family of :mod:`.families`, any precision).
            registry: where adapter refs resolve and load from; None serves the base only.
            config: capacity and scheduling settings.

        Raises:
            EngineError: the base is not of a family the engine serves (:mod:`.families`).
        """
        self.base = base
        self.config = config or EngineConfig()
        self.tokenizer = base.tokenizer
        model = base.model
        self._num_threads = self.config.num_threads or torch.get_num_threads()
        self.max_seq_len = int(self.config.max_seq_len or model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self._eos = frozenset(base.eos_token_ids)
        self._grammars = Grammars(self.tokenizer, self.vocab_size, sorted(self._eos))
        with torch.inference_mode():
            self._slots = LoraSlots.for_model(
                model,
                num_slots=self.config.max_slots,
                rank=self.config.max_lora_rank,
                dtype=torch.float32 if self.config.lora_dtype == "float32" else compute_dtype(model),
            )
            self._runner = DecoderRunner(
                model, self._slots, max_rows=self.config.max_rows, max_seq_len=self.max_seq_len
            )
        self._wake = threading.Event()
        self._residency = AdapterResidency(
            registry, base, self._slots,
            max_cpu_adapters=self.config.max_cpu_adapters, on_loaded=self._wake.set,
            loader_threads=self.config.loader_threads,
        )
        self._sched = Scheduler(
            max_rows=self.config.max_rows,
            max_prefill_tokens=self.config.max_prefill_tokens,
            max_wait_steps=self.config.max_wait_steps,
        )
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._failed_rows: list[tuple[Job, EngineError]] = []  # ended this step, told after retiring
        self._goals: list[tuple[Version, bool, Future[ResidentAdapter]]] = []
        self._lock = threading.Lock()  # guards the fields below, read by callers' threads
        self._active_ids: set[str] = set()
        self._queued = 0  # submitted and not yet admitted, finished or cancelled
        self._finished = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        samples = self.config.latency_samples
        self._ttft: deque[float] = deque(maxlen=samples)
        self._ttft_total = [0, 0.0]
        self._itl: deque[float] = deque(maxlen=samples)
        self._itl_total = [0, 0.0]
        self._mix_cache: tuple[tuple[Any, ...], RowMix | None] | None = None
        # a prefix's keys depend on the whole prompt's length under LongRoPE: nothing to reuse
        budget = self.config.prefix_cache_mib << 20
        self._prefix = PrefixCache(budget) if budget and not self._runner.rope_per_row else None
        self._computing: set[bytes] = set()  # blocks the prefills admitted this step compute
        # LongRoPE picks its factors by the whole prompt's length: no chunks there either
        self._chunked = self.config.chunked_prefill and not self._runner.rope_per_row
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="adapterhub-engine", daemon=True)
        self._thread.start()

    # ================================================================== public: requests

    def submit(self, request: GenerationRequest, sink: Sink) -> str:
        """Queue a request; ``sink`` then receives its chunks on the engine thread.

        The sink gets one :class:`GenerationChunk` per generated token (the last has
        ``finish_reason`` and ``usage``), or one exception if the request fails after queuing.
        It must be quick and must not raise (exceptions from it are swallowed).

        Returns:
            The request id (``request.request_id`` or a new one).

        Raises:
            AdapterNotFoundError: an adapter ref does not resolve.
            IncompatibleAdapterError: an adapter was trained on another base or template.
            PromptTooLongError: prompt plus ``max_tokens`` is over ``max_seq_len``.
            ConfigError: bad token ids, a duplicate request id, a mix bigger than the slots, a
                grammar that does not compile.
            CapacityError: the queue is full.
            EngineError: the engine is closed.
        """
        if self._closed:
            raise EngineError("the engine is closed; create a new Engine")
        request_id = request.request_id or uuid.uuid4().hex
        adapters, version, versions = self._resolve(request)
        self._check_fits(request, adapters)
        params = request.sampling
        job = Job(
            request=request,
            request_id=request_id,
            adapters=adapters,
            adapter_version=version,
            versions=versions,
            sink=sink,
            sampler=RowSampler(params, () if params.ignore_eos else sorted(self._eos), request.prompt_ids,
                               matcher=self._grammars.matcher(params.grammar) if params.grammar else None),
            text=TextTracker(self.tokenizer, request.prompt_ids, params.stop),
        )
        if self._prefix is not None:  # hashed here, on the caller's thread
            job.block_names = block_hashes(adapter_key(adapters, versions), request.prompt_ids)
        with self._lock:
            if request_id in self._active_ids:
                raise ConfigError(f"request_id {request_id!r} is already running; use a unique id")
            # rows + queue bound everything not finished: a burst that arrives before the engine
            # thread admits anyone fills the free rows, not only the queue
            if len(self._active_ids) >= self.config.max_rows + self.config.max_queue:
                raise CapacityError(
                    f"the request queue is full ({self.config.max_queue} waiting); retry shortly "
                    "or raise EngineConfig.max_queue",
                    retry_after=1.0,
                )
            self._active_ids.add(request_id)
            self._queued += 1
        self._post("submit", job)
        return request_id

    def check_grammar(self, grammar: str) -> None:
        """Compile ``grammar`` against the base's tokenizer, as :meth:`submit` will for each row
        (the first call also builds the tokenizer's view, slow on a real vocabulary: callers on an
        event loop run this in a worker thread first).

        Raises:
            ConfigError: the grammar does not compile.
        """
        self._grammars.matcher(grammar)

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request; its row is freed before the next step.

        The request's sink gets a last chunk with ``finish_reason="cancelled"``. Unknown or
        finished ids are ignored.
        """
        self._post("cancel", request_id)

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Run one request to the end, blocking (see :meth:`submit` for errors)."""
        return self.generate_many([request], timeout=timeout)[0]

    def generate_many(
        self, requests: Sequence[GenerationRequest], timeout: float | None = None
    ) -> list[GenerationResult]:
        """Run several requests concurrently (in one batch) and wait for all of them.

        Raises:
            The first error of any request; see :meth:`submit`.
        """
        collectors: list[_Collector] = []
        try:
            for request in requests:
                collector = _Collector()
                collector.request_id = self.submit(request, collector)
                collectors.append(collector)
        except BaseException:
            for collector in collectors:
                self.cancel(collector.request_id)
            raise
        return [c.result(timeout) for c in collectors]

    def stream(self, request: GenerationRequest) -> RequestStream:
        """Start a request and return an async iterator of its chunks.

        Call it from a coroutine; errors that can be known at once (unknown adapter, full
        queue...) raise here, before anything streams. Leaving ``async with`` or calling
        :meth:`RequestStream.cancel` before the end cancels the request.
        """
        return RequestStream(self, request)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """Run one request to the end without blocking the event loop."""
        chunks: list[GenerationChunk] = []
        async with self.stream(request) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        return _result(chunks)

    # ================================================================== public: admin

    def resolve(self, ref: str | Version) -> Version:
        """Resolve ``ref`` once (a registry read and a compatibility check), on the caller's thread.

        Pass the result as ``GenerationRequest.adapter`` (or in a mix) for every row of one
        client request: the rows then share one resolution, and the engine thread never reads
        the registry's database.

        Raises:
            AdapterNotFoundError: unknown ref, or no registry. IncompatibleAdapterError: another base.
        """
        return self._residency.resolve(ref)

    def load_adapter(self, ref: str | Version, *, pin: bool = False, timeout: float = 60.0) -> ResidentAdapter:
        """Make an adapter resident in a slot (loading it from the registry), optionally pinned.

        Raises:
            AdapterNotFoundError, IncompatibleAdapterError, CorruptBlobError: as for requests.
            CapacityError: every slot is pinned or busy past ``timeout`` seconds.
        """
        version = self._residency.resolve(ref)
        key = version.ref
        future: Future[ResidentAdapter] = Future()
        self._post("goal", (version, pin, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise CapacityError(
                f"no slot for {key!r} became free within {timeout}s; every slot is pinned or "
                "busy. Unpin or unload an adapter, or raise EngineConfig.max_slots",
                retry_after=timeout,
            ) from None

    def pin_adapter(self, ref: str | Version, pinned: bool = True) -> ResidentAdapter:
        """Pin (or unpin) an adapter: a pinned slot is never evicted. Loads it if needed."""
        if pinned:
            return self.load_adapter(ref, pin=True)
        key = self._residency.resolve(ref).ref
        found: ResidentAdapter | None = self._call(lambda: self._residency.set_pinned(key, False))
        if found is None:
            raise ConfigError(f"adapter {key!r} is not resident, so it cannot be unpinned")
        return found

    def unload_adapter(self, ref: str | Version) -> bool:
        """Drop an adapter from its slot and the cache; False when it was not resident.

        Raises:
            CapacityError: running rows use it (retry when they finish).
        """
        key = self._residency.resolve(ref).ref
        return bool(self._call(lambda: self._residency.unload(key)))

    def resident_adapters(self) -> list[ResidentAdapter]:
        """Adapters in slots now, with their pin state and running rows."""
        return list(self._call(self._residency.resident))

    def stats(self) -> EngineStats:
        """A snapshot of queue, rows, slots, cache and latency samples (cheap, any thread)."""
        with self._lock:
            ttft, itl = tuple(self._ttft), tuple(self._itl)
            ttft_count, ttft_sum = self._ttft_total
            itl_count, itl_sum = self._itl_total
            finished, prompt, completion = (
                self._finished, self._prompt_tokens, self._completion_tokens
            )
            queued = self._queued
        residency, prefix = self._residency, self._prefix
        return EngineStats(
            steps=self._sched.step,
            queue_depth=queued,
            running_rows=len(self._sched.running),
            max_rows=self.config.max_rows,
            max_slots=self.config.max_slots,
            resident=tuple(residency.resident()),
            cached_adapters=residency.cached,
            loads_in_flight=residency.loads_in_flight,
            cache_hits=residency.hits,
            cache_misses=residency.misses,
            prefix_cache_blocks=len(prefix) if prefix is not None else 0,
            prefix_cache_bytes=prefix.bytes if prefix is not None else 0,
            prefix_cache_queried_tokens=prefix.queried_tokens if prefix is not None else 0,
            prefix_cache_hit_tokens=prefix.hit_tokens if prefix is not None else 0,
            requests_finished=finished,
            prompt_tokens=prompt,
            completion_tokens=completion,
            ttft_seconds=ttft,
            ttft_count=int(ttft_count),
            ttft_sum=float(ttft_sum),
            token_latency_seconds=itl,
            token_latency_count=int(itl_count),
            token_latency_sum=float(itl_sum),
        )

    def close(self) -> None:
        """Stop the engine thread; queued and running requests end with ``EngineError``."""
        if self._closed:
            return
        self._closed = True
        self._post("stop", None)
        self._thread.join()
        self._residency.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== caller-side helpers

    def _resolve(self, request: GenerationRequest) -> tuple[dict[str, float], str | None, dict[str, Version]]:
        """``key -> weight``, the version label, and ``key -> version`` of a request's adapters."""
        if request.adapter is not None:
            version = self._residency.resolve(request.adapter)
            return {version.ref: 1.0}, version.ref, {version.ref: version}
        if request.mix is not None:
            adapters: dict[str, float] = {}
            versions: dict[str, Version] = {}
            for ref, weight in zip(request.mix.refs, request.mix.weights, strict=True):
                version = self._residency.resolve(ref)
                versions[version.ref] = version
                adapters[version.ref] = adapters.get(version.ref, 0.0) + float(weight)
            label = "+".join(f"{w:g}*{k}" for k, w in adapters.items())
            return adapters, label, versions
        return {}, None, {}

    def _check_fits(self, request: GenerationRequest, adapters: dict[str, float]) -> None:
        total = len(request.prompt_ids) + request.sampling.max_tokens
        if total > self.max_seq_len:
            raise PromptTooLongError(
                f"prompt of {len(request.prompt_ids)} tokens plus max_tokens="
                f"{request.sampling.max_tokens} is {total}, over the engine's max_seq_len="
                f"{self.max_seq_len}; shorten the prompt or lower max_tokens"
            )
        bad = [t for t in request.prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(
                f"prompt token ids {bad[:5]!r} are outside the vocabulary [0, {self.vocab_size})"
            )
        if len(adapters) > self.config.max_slots:
            raise ConfigError(
                f"a mix of {len(adapters)} adapters needs that many slots but max_slots is "
                f"{self.config.max_slots}; mix fewer adapters or raise EngineConfig.max_slots"
            )
        missing = [key for key in adapters if self._residency.slot_of(key) is None]
        if missing and not self._residency.can_ever_fit(len(missing)):
            raise CapacityError(
                f"adapters {missing!r} are not resident and every slot is pinned; unpin one "
                "(admin unpin) or raise EngineConfig.max_slots",
                retry_after=5.0,
            )

    def _post(self, kind: str, payload: Any) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine thread between steps and return its result."""
        if self._closed:
            raise EngineError("the engine is closed; create a new Engine")
        future: Future[Any] = Future()
        self._post("call", (fn, future))
        return future.result()

    # ================================================================== engine thread

    def _run(self) -> None:
        # This thread does the heavy work, so it gets the intra-op threads (the setting is per
        # thread); adapterhub.engine.threads says why the others should get one.
        use_threads(self._num_threads)
        with torch.inference_mode():
            while True:
                self._wake.clear()
                try:
                    if not self._drain_inbox():
                        break
                    self._handle_loads()
                    self._computing.clear()
                    partial = self._sched.partial
                    admitted = self._sched.admit(self._try_start, self._prefill_cost, self._chunkable)
                    with self._lock:  # and one more when a partial job started
                        self._queued -= len(admitted) + (self._sched.partial is not partial)
                    if self._sched.partial is not None:
                        self._prefill_chunk(self._sched.partial)
                    if admitted:
                        self._prefill(admitted)
                    if self._sched.running:
                        self._decode()
                except Exception as error:  # nothing may kill the thread: fail the rows instead
                    _log.exception("engine step failed")
                    self._fail_running(EngineError(f"generation step failed: {error!r}"), error)
                if not self._sched.running:
                    self._wake.wait(timeout=0.5)
            self._shutdown()

    def _drain_inbox(self) -> bool:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if kind == "submit":
                job: Job = payload
                for version in job.versions.values():
                    self._residency.prefetch(version)
                self._sched.enqueue(job)
            elif kind == "cancel":
                self._cancel(payload)
            elif kind == "call":
                fn, future = payload
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except Exception as error:
                        future.set_exception(error)
            elif kind == "goal":
                version, _, _ = payload
                self._residency.prefetch(version)
                self._goals.append(payload)
            elif kind == "stop":
                return False

    def _handle_loads(self) -> None:
        failed = self._residency.poll()
        if failed:
            for job in [j for j in self._sched.waiting if failed.keys() & j.adapters.keys()]:
                self._sched.waiting.remove(job)
                error = next(failed[k] for k in job.adapters if k in failed)
                with self._lock:
                    self._queued -= 1
                self._end(job, error=error)
        for goal in list(self._goals):
            version, pin, future = goal
            key = version.ref
            if future.cancelled():
                self._goals.remove(goal)
            elif key in failed:
                self._goals.remove(goal)
                future.set_exception(failed[key])
            elif not self._residency.can_ever_fit(1) and self._residency.slot_of(key) is None:
                self._goals.remove(goal)
                future.set_exception(CapacityError(
                    f"every slot is pinned, so {key!r} cannot be loaded; unpin one first"
                ))
            elif self._residency.acquire({key: version}, hold=False) is not None:
                self._goals.remove(goal)
                resident = self._residency.set_pinned(key, True) if pin else None
                described = resident or next(r for r in self._residency.resident() if r.ref == key)
                future.set_result(described)

    def _try_start(self, job: Job) -> bool:
        if self._waits_for_a_sibling(job):
            return False
        if job.adapters:
            placed = self._residency.acquire(job.versions)
            if placed is None:
                return False
            job.slots = {placed[key]: weight for key, weight in job.adapters.items()}
        self._computing.update(job.block_names)
        return True

    def _reusable_names(self, job: Job) -> Sequence[bytes]:
        """The blocks ``job`` may take from the prefix cache; none without a cache, or for a
        prompt scored for log-probabilities (every position must run)."""
        return reusable(job.block_names, job.prompt_len) if self._may_reuse(job) else ()

    def _may_reuse(self, job: Job) -> bool:
        return self._prefix is not None and job.request.sampling.prompt_logprobs is None

    def _cached_blocks(self, job: Job) -> int:
        """How many of ``job``'s leading blocks the prefix cache holds for it now."""
        names = self._reusable_names(job)
        return self._prefix.cached_blocks(names) if names and self._prefix is not None else 0

    def _waits_for_a_sibling(self, job: Job) -> bool:
        """Whether a prompt admitted this step computes the block this job would reuse next:
        the job then joins the step after, reusing it, instead of computing it again."""
        names, cached = self._reusable_names(job), self._cached_blocks(job)
        return cached < len(names) and names[cached] in self._computing

    def _prefill_cost(self, job: Job) -> int:
        """The prompt tokens ``job``'s prefill computes (what the prefix cache lacks)."""
        return job.prompt_len - self._cached_blocks(job) * BLOCK_TOKENS

    def _lookup_prefix(self, job: Job) -> list[torch.Tensor]:
        """The cached blocks ``job`` reuses (refreshed and counted), none where it may not."""
        if self._prefix is None or not self._may_reuse(job):
            return []
        return self._prefix.lookup(job.block_names, job.prompt_len)

    def _chunkable(self, job: Job) -> bool:
        return self._chunked and job.request.sampling.prompt_logprobs is None

    def _prefill_chunk(self, job: Job) -> None:
        """Run the partial job's next ``max_prefill_tokens`` prompt tokens into its row; once
        its prompt is in, move the row after the running ones, where it decodes with them."""
        cache, row = self._runner.cache, self._sched.partial_row
        if job.cache_len == 0:
            blocks = self._lookup_prefix(job)
            if blocks:
                job.cache_len = cache.write(row, 0, blocks)
        end = min(job.cache_len + self.config.max_prefill_tokens, job.prompt_len)
        logits = self._runner.prefill([job.request.prompt_ids[job.cache_len : end]], row, [job.slots],
                                      starts=[job.cache_len])
        job.cache_len = end
        if end < job.prompt_len:
            return
        self._sched.partial = None
        cache.move_row(row, len(self._sched.running), job.prompt_len)
        self._sched.running.append(job)
        self._join([job], logits)

    def _prefill(self, jobs: list[Job]) -> None:
        """Run the admitted prompts into the rows after the running ones.

        A prompt's cached prefix is copied into its row first, so only the rest runs. Rows run
        longest first in groups of similar length: a short prompt padded to a long one's width
        (a cached prefix beside a new prompt, a question beside a document) would cost the long
        one's time.
        """
        reused = [self._lookup_prefix(job) for job in jobs]
        ranked = sorted(zip(jobs, reused, strict=True),
                        key=lambda pair: pair[0].prompt_len - len(pair[1]) * BLOCK_TOKENS, reverse=True)
        jobs = [job for job, _ in ranked]
        starts = [len(blocks) * BLOCK_TOKENS for _, blocks in ranked]
        row_start = len(self._sched.running)
        self._sched.running.extend(jobs)  # before anything can fail: a failed step ends them
        cache = self._runner.cache
        for row, (_, blocks) in enumerate(ranked, start=row_start):
            if blocks:
                cache.write(row, 0, blocks)
        logits = []
        for lo, hi in _length_groups([job.prompt_len - start for job, start in zip(jobs, starts, strict=True)]):
            scored = [i for i in range(lo, hi) if jobs[i].request.sampling.prompt_logprobs is not None]
            logits.append(self._runner.prefill(
                [job.request.prompt_ids[start:] for job, start in zip(jobs[lo:hi], starts[lo:hi], strict=True)],
                row_start + lo, [job.slots for job in jobs[lo:hi]], every_position=[i - lo for i in scored],
                starts=starts[lo:hi],
            ))
            for i in scored:
                self._score_prompt(jobs[i], self._runner.prompt_logits[i - lo])
        self._join(jobs, torch.cat(logits))

    def _join(self, jobs: list[Job], logits: torch.Tensor) -> None:
        """The last running rows, just prefilled, start decoding: their prompts' blocks go to
        the prefix cache and their first tokens are sampled from ``logits``."""
        row_start = len(self._sched.running) - len(jobs)
        cache = self._runner.cache
        for row, job in enumerate(jobs, start=row_start):
            job.cache_len = job.prompt_len
            if self._prefix is not None:
                self._prefix.store(job.block_names, lambda start, end, row=row: cache.block(row, start, end))
        with self._lock:
            self._prompt_tokens += sum(job.prompt_len for job in jobs)
        self._accept(jobs, logits)

    def _score_prompt(self, job: Job, logits: torch.Tensor) -> None:
        """Keep the prompt's log-probabilities for the first chunk; a prompt scored only ends here."""
        job.prompt_logprobs = prompt_token_logprobs(
            logits, job.request.prompt_ids, job.request.sampling.prompt_logprobs or 0
        )
        if job.request.sampling.max_tokens == 0:
            job.finished = True
            _send(job.sink, GenerationChunk(
                job.request_id, "", (), finish_reason="length", usage=Usage(job.prompt_len, 0),
                adapter_version=job.adapter_version, prompt_logprobs=job.prompt_logprobs,
            ))

    def _decode(self) -> None:
        jobs = list(self._sched.running)
        tokens = torch.tensor([job.next_token for job in jobs])
        lengths = torch.tensor([job.cache_len for job in jobs])
        logits = self._runner.decode(tokens, lengths, self._row_mix(jobs))
        for job in jobs:
            job.cache_len += 1
        self._sched.step += 1
        self._accept(jobs, logits)

    def _row_mix(self, jobs: list[Job]) -> RowMix | None:
        signature = (self._slots.generation, *(tuple(job.slots.items()) for job in jobs))
        if self._mix_cache is None or self._mix_cache[0] != signature:
            self._mix_cache = (signature, self._slots.row_mix([job.slots for job in jobs]))
        return self._mix_cache[1]

    def _accept(self, jobs: list[Job], logits: torch.Tensor) -> None:
        """Sample each row's next token, stream it, and retire rows that are done.

        A row whose logits are not finite (an adapter that overflowed) or whose sampling or
        text decoding raises ends with an error alone; the other rows of the step go on.
        """
        # one scalar check per step; the per-row list only when some row is not finite
        finite = [True] * len(jobs) if bool(torch.isfinite(logits).all()) else torch.isfinite(logits).all(dim=-1).tolist()
        for job, ok in zip(jobs, finite, strict=True):
            if not ok and not job.finished:  # a prompt scored only has ended already
                self._fail_row(job, EngineError(
                    f"request {job.request_id!r}: the model produced non-finite logits at token "
                    f"{len(job.generated)} (adapter {job.adapter_version or 'none'}); the other requests "
                    "go on. An adapter that overflows in this compute dtype: try --compute-dtype float32"))
        live = [i for i, job in enumerate(jobs) if not job.finished]
        jobs_live = [jobs[i] for i in live]
        rows = logits if len(live) == len(jobs) else logits[live]
        asked = [i for i, job in enumerate(jobs_live) if job.request.sampling.logprobs is not None]
        raw = torch.log_softmax(rows[asked], dim=-1) if asked else None  # before bias and penalties
        tokens = self._choose(jobs_live, rows)
        logprobs: list[TokenLogprob | None] = [None] * len(jobs_live)
        if raw is not None:
            for k, i in enumerate(asked):
                if tokens[i] is not None:
                    logprobs[i] = token_logprob(raw[k], tokens[i], jobs_live[i].request.sampling.logprobs or 0)
        now = time.perf_counter()
        ttft: list[float] = []
        itl: list[float] = []
        for job, token, logprob in zip(jobs_live, tokens, logprobs, strict=True):
            if token is None:  # its sampling failed: already ended
                continue
            (ttft if job.first_token_at is None else itl).append(
                now - (job.last_token_at or job.submitted_at)
            )
            if job.first_token_at is None:
                job.first_token_at = now
            job.last_token_at = now
            try:
                self._emit(job, token, logprob)
            except Exception as error:
                _log.exception("emitting a token failed for %s", job.request_id)
                failure = EngineError(f"request {job.request_id!r}: decoding its text failed ({error!r}); "
                                      "the other requests go on")
                failure.__cause__ = error
                self._fail_row(job, failure)
        tokens = [t for t in tokens if t is not None]
        with self._lock:
            self._completion_tokens += len(tokens)
            self._ttft.extend(ttft)
            self._ttft_total[0] += len(ttft)
            self._ttft_total[1] += sum(ttft)
            self._itl.extend(itl)
            self._itl_total[0] += len(itl)
            self._itl_total[1] += sum(itl)
        for job in jobs:
            if job.finished:
                self._retire(job)
        failed, self._failed_rows = self._failed_rows, []
        for job, error in failed:
            _send(job.sink, error)

    def _choose(self, jobs: list[Job], logits: torch.Tensor) -> list[int | None]:
        """Every row's next token; a row whose sampler raises ends with an error (entry None)."""

        def failed(row: int, error: Exception) -> None:
            _log.exception("sampling failed for %s", jobs[row].request_id, exc_info=error)
            failure = EngineError(
                f"request {jobs[row].request_id!r}: sampling failed ({error!r}); the other requests "
                "go on. Retry it, or with other sampling settings if it fails again")
            failure.__cause__ = error
            self._fail_row(jobs[row], failure)

        return choose_tokens(logits, [j.sampler for j in jobs], [j.generated for j in jobs], failed)

    def _fail_row(self, job: Job, error: EngineError) -> None:
        """End one running row with ``error``: retired with the step's finished rows, and told
        after that (so its request id is free again when the caller hears of the failure)."""
        job.finished = True
        self._failed_rows.append((job, error))

    def _emit(self, job: Job, token: int, logprob: TokenLogprob | None = None) -> None:
        params = job.request.sampling
        logprobs = () if logprob is None else (logprob,)
        scored, job.prompt_logprobs = job.prompt_logprobs, ()  # the prompt's go with the first chunk
        job.generated.append(token)
        count = len(job.generated)
        text = job.text.push(token, check_stop=count >= params.min_tokens)
        matcher = job.sampler.matcher
        if matcher is not None and token not in self._eos and not matcher.consume_token(token):
            raise EngineError(f"the grammar refused token {token} that its own mask allowed: {matcher.get_error()}")
        reason: FinishReason | None = None
        if token in self._eos and not params.ignore_eos or job.text.stopped or (matcher is not None and matcher.is_stopped()):
            reason = "stop"
        elif count >= params.max_tokens or job.prompt_len + count >= self.max_seq_len:
            reason = "length"
        if reason is None:
            _send(job.sink, GenerationChunk(
                job.request_id, text, (token,), adapter_version=job.adapter_version, logprobs=logprobs,
                prompt_logprobs=scored,
            ))
            return
        job.finished = True
        _send(job.sink, GenerationChunk(
            job.request_id, text + job.text.flush(), (token,), finish_reason=reason,
            usage=Usage(job.prompt_len, count), adapter_version=job.adapter_version, logprobs=logprobs,
            prompt_logprobs=scored,
        ))

    def _retire(self, job: Job) -> None:
        self._sched.remove_running(job, self._runner.cache.move_row)
        self._residency.release(job.slots)
        with self._lock:
            self._active_ids.discard(job.request_id)
            self._finished += 1

    def _cancel(self, request_id: str) -> None:
        job = self._sched.find(request_id)
        if job is None or job.finished:
            return
        if job in self._sched.waiting:
            self._sched.waiting.remove(job)
            with self._lock:
                self._queued -= 1
            self._end(job, reason="cancelled")
        elif job is self._sched.partial:
            self._drop_partial(job)
            self._end(job, reason="cancelled")
        else:
            job.finished = True
            self._retire(job)
            _send(job.sink, GenerationChunk(
                job.request_id, job.text.flush(), (), finish_reason="cancelled",
                usage=Usage(job.prompt_len, len(job.generated)),
                adapter_version=job.adapter_version,
            ))

    def _end(self, job: Job, *, reason: FinishReason = "error", error: BaseException | None = None) -> None:
        """Finish a job that holds no row: with an exception or a bare final chunk."""
        job.finished = True
        with self._lock:
            self._active_ids.discard(job.request_id)
            self._finished += 1
        if error is not None:
            _send(job.sink, error)
        else:
            _send(job.sink, GenerationChunk(
                job.request_id, "", (), finish_reason=reason,
                usage=Usage(job.prompt_len, 0), adapter_version=job.adapter_version,
            ))

    def _drop_partial(self, job: Job) -> None:
        """Free the partial job's row and slots (it has sent nothing yet)."""
        self._sched.partial = None
        self._residency.release(job.slots)

    def _fail_running(self, error: EngineError, cause: BaseException) -> None:
        error.__cause__ = cause
        partial = self._sched.partial
        if partial is not None:
            self._drop_partial(partial)
            self._end(partial, error=error)
        for job in list(self._sched.running):
            job.finished = True
            self._retire(job)
            _send(job.sink, error)

    def _shutdown(self) -> None:
        closed = EngineError("the engine was closed before this request finished")
        self._fail_running(closed, closed)
        while self._sched.waiting:
            self._end(self._sched.waiting.popleft(), error=closed)
        for _, _, future in self._goals:
            if not future.done():
                future.set_exception(closed)
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                self._end(payload, error=closed)
            elif kind in ("call", "goal"):
                future = payload[-1] if kind == "goal" else payload[1]
                if not future.done():
                    future.set_exception(closed)


def _length_groups(widths: Sequence[int], slack: int = 64) -> Iterator[tuple[int, int]]:
    """Cut ``widths`` (longest first) into runs ``[lo, hi)`` run by one prefill each: a row
    starts a new run when padding it to the run's first would more than double it and cost more
    than ``slack`` tokens (below that, one more call costs more than the padding)."""
    lo = 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or (widths[lo] > 2 * widths[i] and widths[lo] - widths[i] > slack):
            yield lo, i
            lo = i


def _send(sink: Sink, item: GenerationChunk | BaseException) -> None:
    with contextlib.suppress(Exception):  # a broken consumer must not stop the other rows
        sink(item)


def _result(chunks: list[GenerationChunk]) -> GenerationResult:
    last = chunks[-1]
    assert last.finish_reason is not None and last.usage is not None
    return GenerationResult(
        request_id=last.request_id,
        text="".join(c.text for c in chunks),
        token_ids=tuple(t for c in chunks for t in c.token_ids),
        finish_reason=last.finish_reason,
        usage=last.usage,
        adapter_version=last.adapter_version,
        logprobs=tuple(lp for c in chunks for lp in c.logprobs),
        prompt_logprobs=chunks[0].prompt_logprobs,
    )


class _Collector:
    """A sink that gathers a request's chunks for the blocking API."""

    def __init__(self) -> None:
        self.request_id = ""
        self.chunks: list[GenerationChunk] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def __call__(self, item: GenerationChunk | BaseException) -> None:
        if isinstance(item, BaseException):
            self.error = item
            self._done.set()
            return
        self.chunks.append(item)
        if item.finish_reason is not None:
            self._done.set()

    def result(self, timeout: float | None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id!r} did not finish within {timeout}s")
        if self.error is not None:
            raise self.error
        return _result(self.chunks)


class RequestStream:
    """Async iterator over one request's chunks; cancel it to free its row at once.

    Use as ``async with engine.stream(request) as stream: async for chunk in stream: ...``;
    leaving the block early (or the task being cancelled) cancels the request.
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        self._done = False
        self.request_id = engine.submit(request, self._put)

    def _put(self, item: GenerationChunk | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def cancel(self) -> None:
        """Cancel the request (no-op once it has finished)."""
        if not self._done:
            self._done = True
            self._engine.cancel(self.request_id)

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
