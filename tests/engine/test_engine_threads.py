"""Thread discipline (adapterhub/engine/threads.py): the decode thread runs on the configured
intra-op threads and the adapter loaders on one, whatever the constructing thread uses."""

from __future__ import annotations

import threading
from typing import Any

import torch

from adapterhub.engine import GenerationRequest, SamplingParams


def test_decode_thread_gets_the_configured_threads_and_loaders_one(make_engine: Any, prompts: Any) -> None:
    engine = make_engine(num_threads=2)
    seen: list[int] = []
    done = threading.Event()

    def sink(item: Any) -> None:  # called on the engine's decode thread
        seen.append(torch.get_num_threads())
        if isinstance(item, BaseException) or item.finish_reason:
            done.set()

    engine.submit(GenerationRequest(tuple(prompts[0]), adapter="alpha",
                                    sampling=SamplingParams(max_tokens=3, ignore_eos=True)), sink)
    assert done.wait(30)
    assert seen and set(seen) == {2}, seen
    assert engine._residency._loader.submit(torch.get_num_threads).result() == 1
