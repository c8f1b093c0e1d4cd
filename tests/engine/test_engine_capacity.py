"""The engine's capacity bound under a burst: ``max_rows`` running plus ``max_queue`` waiting.

Found by the server load test: requests that arrive together, before the engine thread has
admitted any, all counted as waiting, so a burst was refused at ``max_queue`` although rows were
free (4 rows + 4 queue refused the 5th of 8 simultaneous requests).
"""

from __future__ import annotations

import threading

import pytest

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.errors import CapacityError


class _Sink:
    def __init__(self, on_chunk=None):  # type: ignore[no-untyped-def]
        self.on_chunk = on_chunk
        self.done = threading.Event()

    def __call__(self, item):  # type: ignore[no-untyped-def]
        if self.on_chunk is not None:
            self.on_chunk()
        if isinstance(item, BaseException) or item.finish_reason is not None:
            self.done.set()


def test_a_burst_fills_free_rows_before_the_queue(make_engine, prompts):  # type: ignore[no-untyped-def]
    engine = make_engine(max_rows=3, max_queue=1)
    gate, running = threading.Event(), threading.Event()

    def hold() -> None:  # holds the engine thread inside the first request's step
        running.set()
        gate.wait(10)

    blocker = _Sink(hold)
    engine.submit(GenerationRequest(tuple(prompts[0]), sampling=SamplingParams(max_tokens=3)), blocker)
    assert running.wait(10)
    # the engine thread is busy: these arrive together, before any is admitted; 2 free rows and
    # 1 queue place take three of them, the fourth is over capacity
    sinks = [_Sink() for _ in range(3)]
    try:
        for sink in sinks:
            engine.submit(GenerationRequest(tuple(prompts[1]), sampling=SamplingParams(max_tokens=2)), sink)
        with pytest.raises(CapacityError, match="queue is full"):
            engine.submit(GenerationRequest(tuple(prompts[2])), _Sink())
    finally:
        gate.set()
    assert all(s.done.wait(30) for s in [blocker, *sinks])
    assert engine.stats().queue_depth == 0
