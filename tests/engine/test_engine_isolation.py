"""One bad row never fails the rest: a failure injected into one row ends that request alone."""

from __future__ import annotations

import threading

import pytest

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.sampling import RowSampler
from adapterhub.errors import EngineError

STEPS = 10


_RUNS = iter(range(1_000_000))


def _batch(prompts, bad_seed: int | None = None):  # type: ignore[no-untyped-def]
    """Four rows over three adapters and the base; two sample, the second with ``bad_seed`` (so
    the first has drawn its token before the failure in the same step)."""
    run = next(_RUNS)  # fresh request ids: a finished id is free only once its row is retired
    greedy = SamplingParams(max_tokens=STEPS, ignore_eos=True)
    sampled = SamplingParams(max_tokens=STEPS, ignore_eos=True, temperature=0.8, seed=7)
    return [
        GenerationRequest(tuple(prompts[0]), adapter="alpha", sampling=greedy, request_id=f"r0-{run}"),
        GenerationRequest(tuple(prompts[1]), adapter=None, sampling=sampled, request_id=f"r1-{run}"),
        GenerationRequest(tuple(prompts[2]), adapter="beta", request_id=f"r2-{run}",
                          sampling=SamplingParams(max_tokens=STEPS, ignore_eos=True, temperature=0.8, seed=bad_seed or 21)),
        GenerationRequest(tuple(prompts[3]), adapter="gamma", sampling=greedy, request_id=f"r3-{run}"),
    ]


def _run(engine, requests):  # type: ignore[no-untyped-def]
    """Each request's tokens, or the exception its stream ended with."""
    done = [threading.Event() for _ in requests]
    tokens: list[list[int]] = [[] for _ in requests]
    errors: list[BaseException | None] = [None] * len(requests)
    for i, request in enumerate(requests):
        def sink(item, i=i):  # type: ignore[no-untyped-def]
            if isinstance(item, BaseException):
                errors[i] = item
                done[i].set()
                return
            tokens[i].extend(item.token_ids)
            if item.finish_reason:
                done[i].set()

        engine.submit(request, sink)
    assert all(event.wait(60) for event in done)
    return [errors[i] or tokens[i] for i in range(len(requests))]


def test_a_row_whose_sampler_raises_fails_alone(make_engine, prompts, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(max_slots=3)
    clean = _run(engine, _batch(prompts))
    assert all(isinstance(o, list) for o in clean)

    real_choose = RowSampler.choose

    def choose(self, logits):  # type: ignore[no-untyped-def]
        if self.params.seed == 13:
            raise RuntimeError("injected sampling failure")
        return real_choose(self, logits)

    monkeypatch.setattr(RowSampler, "choose", choose)
    outcomes = _run(engine, _batch(prompts, bad_seed=13))
    assert isinstance(outcomes[2], EngineError) and "injected sampling failure" in str(outcomes[2])
    for i in (0, 1, 3):  # the others, the seeded one too, finish with the clean run's tokens
        assert outcomes[i] == clean[i], i
    # and the engine goes on serving
    assert _run(engine, _batch(prompts)) == clean


def test_a_row_with_non_finite_logits_fails_alone(make_engine, prompts) -> None:
    engine = make_engine(max_slots=3)
    clean = _run(engine, _batch(prompts))
    runner = engine._runner
    real_decode = runner.decode
    calls = {"n": 0}

    def decode(tokens, lengths, mix):  # type: ignore[no-untyped-def]
        logits = real_decode(tokens, lengths, mix)
        calls["n"] += 1
        if calls["n"] == 3:  # mid-flight, one row's logits overflow (as a broken adapter's would)
            logits[0] = float("nan")
        return logits

    runner.decode = decode
    outcomes = _run(engine, _batch(prompts))
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert len(failed) == 1, outcomes
    assert isinstance(outcomes[failed[0]], EngineError) and "non-finite logits" in str(outcomes[failed[0]])
    for i in set(range(4)) - set(failed):
        assert outcomes[i] == clean[i], i


def test_rows_with_a_resolved_version_never_read_the_registry(make_engine, prompts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve at the edge, once: the engine takes the version as it is (no database read, no map)."""
    from adapterhub.registry import Registry

    engine = make_engine(max_slots=3)
    by_ref = engine.generate_many([GenerationRequest(tuple(p), adapter="beta", sampling=SamplingParams(
        max_tokens=STEPS, ignore_eos=True)) for p in prompts])
    version = engine.resolve("beta")

    def no_reads(self, ref):  # type: ignore[no-untyped-def]
        raise AssertionError(f"the registry was asked to resolve {ref!r}")

    monkeypatch.setattr(Registry, "resolve", no_reads)
    by_version = engine.generate_many([GenerationRequest(tuple(p), adapter=version, sampling=SamplingParams(
        max_tokens=STEPS, ignore_eos=True)) for p in prompts])
    assert [r.token_ids for r in by_version] == [r.token_ids for r in by_ref]
    assert {r.adapter_version for r in by_version} == {"beta@1"}
    assert not hasattr(engine._residency, "_versions")
