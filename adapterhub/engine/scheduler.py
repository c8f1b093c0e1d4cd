"""Continuous-batching admission: who joins the running batch at the next step.

Design choices:

* **Join at the next step, leave at once.** Each step the scheduler fills free rows from the
  queue; a finished or cancelled request frees its row before the next step, and the engine
  keeps running rows contiguous in the KV cache.
* **FIFO with bypass.** Requests are considered oldest first. One whose adapter is not ready
  (loading, or every slot busy with running rows) is skipped so the rest of the queue keeps
  moving: an adapter load never stalls anyone else.
* **Starvation bound.** Once the oldest waiting request has waited ``max_wait_steps`` steps, no
  younger request may be admitted ahead of it. The rows that keep its slot busy then finish
  within their ``max_tokens`` and are not replaced, so it is served within
  ``max_wait_steps + max_tokens`` steps (plus its adapter's load), whatever floods the queue.
* **A prefill budget.** At most ``max_prefill_tokens`` prompt tokens to compute join per step,
  bounding the stall a burst of prompts causes to decoding rows; a prefix that comes from the
  prefix cache costs nothing.
* **Chunked prefill.** A prompt longer than the budget does not stall everyone for its whole
  prefill: it becomes the *partial* job, which holds the last cache row and prefills one
  budget's worth of tokens per step, between the decoding rows' steps, until its prompt is in;
  then it joins them. One partial at a time; short prompts still join beside it with what the
  budget leaves. (A prompt that cannot be chunked still joins alone.)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapterhub.engine.sampling import RowSampler, TextTracker
from adapterhub.engine.types import GenerationChunk, GenerationRequest, TokenLogprob
from adapterhub.registry import Version

Sink = Callable[[GenerationChunk | BaseException], None]


@dataclass(eq=False)
class Job:
    """A request's life inside the engine (mutable, engine thread only).

    ``adapters`` maps resolved version refs to mix weights (empty for the base); ``slots`` maps
    the slots they occupy to the same weights once the request is admitted.
    """

    request: GenerationRequest
    request_id: str
    adapters: dict[str, float]
    adapter_version: str | None
    versions: dict[str, Version]  # the resolved version of each key of ``adapters``
    sink: Sink
    sampler: RowSampler
    text: TextTracker
    submitted_at: float = field(default_factory=time.perf_counter)
    enqueued_step: int = 0
    slots: dict[int, float] = field(default_factory=dict)
    generated: list[int] = field(default_factory=list)
    cache_len: int = 0  # tokens in this row's KV cache (of its prompt, while it is prefilled in chunks)
    block_names: tuple[bytes, ...] = ()  # the prompt's full blocks, named for the prefix cache
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()  # scored at prefill, sent with the first chunk

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def next_token(self) -> int:
        return self.generated[-1]


class Scheduler:
    """The waiting queue and the running batch (row i of ``running`` is cache row i)."""

    def __init__(self, *, max_rows: int, max_prefill_tokens: int, max_wait_steps: int) -> None:
        self.max_rows = max_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.max_wait_steps = max_wait_steps
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.partial: Job | None = None  # a prompt prefilled in chunks, in the last cache row
        self.step = 0

    def enqueue(self, job: Job) -> None:
        job.enqueued_step = self.step
        self.waiting.append(job)

    def admit(
        self,
        try_start: Callable[[Job], bool],
        cost: Callable[[Job], int] | None = None,
        chunkable: Callable[[Job], bool] | None = None,
    ) -> list[Job]:
        """Take the requests that join the batch this step, oldest first.

        Args:
            try_start: makes a job's adapters resident and returns True, or returns False when
                they cannot be yet (the job stays queued).
            cost: the prompt tokens a job's prefill computes (its whole prompt when None).
            chunkable: whether a job over the budget may be prefilled in chunks (it then becomes
                :attr:`partial`); None: no job may.

        Returns:
            The admitted jobs (prefilled whole this step), in the order their rows follow the
            running ones.
        """
        admitted: list[Job] = []
        budget = self.max_prefill_tokens
        if self.partial is not None:
            budget -= min(self.partial.prompt_len - self.partial.cache_len, budget)
        free = self.max_rows - len(self.running) - (self.partial is not None)
        for job in list(self.waiting):
            if free <= 0:
                break
            tokens = job.prompt_len if cost is None else cost(job)
            if tokens > self.max_prefill_tokens and chunkable is not None and chunkable(job):
                if self.partial is None and budget == self.max_prefill_tokens and try_start(job):
                    self.waiting.remove(job)
                    self.partial = job
                    budget, free = 0, free - 1  # its first chunk takes the whole budget
                elif self._is_starving(job):
                    break
                continue
            if (admitted or self.partial is not None) and tokens > budget:
                if self._is_starving(job):
                    break
                continue
            if try_start(job):
                self.waiting.remove(job)
                admitted.append(job)
                budget -= tokens
                free -= 1
            elif self._is_starving(job):
                break  # nobody younger may take what it waits for
        return admitted

    def _is_starving(self, job: Job) -> bool:
        return self.step - job.enqueued_step >= self.max_wait_steps

    def remove_running(self, job: Job, move_row: Callable[[int, int, int], Any]) -> None:
        """Free ``job``'s row, moving the last running row into its place.

        Args:
            move_row: ``(src, dst, length)`` copies a cache row.
        """
        row = self.running.index(job)
        last = len(self.running) - 1
        if row != last:
            moved = self.running[last]
            move_row(last, row, moved.cache_len)
            self.running[row] = moved
        self.running.pop()

    @property
    def partial_row(self) -> int:
        """The cache row the partial job's prompt fills."""
        return self.max_rows - 1

    def find(self, request_id: str) -> Job | None:
        if self.partial is not None and self.partial.request_id == request_id:
            return self.partial
        for job in self.running:
            if job.request_id == request_id:
                return job
        for job in self.waiting:
            if job.request_id == request_id:
                return job
        return None
