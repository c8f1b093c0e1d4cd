"""A small in-memory backend for the TUI's tests: deterministic, fast, with the real semantics.

It keeps versions in a list and follows the registry's rules (immutable versions, aliases that
move, deleting a parent refused), trains and evaluates by emitting scripted progress events *from
a worker thread* (as the real in-process backend does) and streams canned answers word by word.
Knobs let a test make any call fail, hold a training run or an evaluation until it is released,
or slow streams down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from adapterhub.core.progress import CancelToken, ProgressCallback, ProgressEvent
from adapterhub.core.refs import AdapterRef
from adapterhub.engine.types import GenerationChunk, SamplingParams, Usage
from adapterhub.errors import AdapterNotFoundError, ConfigError, RegistryError, TrainingCancelled
from adapterhub.registry import Evaluation, Version
from adapterhub.training.votes import PreferenceStore
from adapterhub_tui.backend import BackendInfo, Capability, ChatMessages, TrainRequest
from adapterhub_tui.recipes import get_key

T0 = 1_735_689_600.0  # 2025-01-01 00:00 UTC: fixed times keep snapshots stable
FP = "f" * 64


def make_version(name: str, number: int, method: str = "sft", **fields: Any) -> Version:
    fields.setdefault("created_at", T0 + 3600 * number + 60 * len(name))
    return Version(
        name=name,
        number=number,
        method=method,
        base_fingerprint=FP,
        template_hash="t" * 64,
        files={"adapter_config.json": "a" * 64, "adapter_model.safetensors": "b" * 64},
        **fields,
    )


def scripted_events(total: int, method: str = "sft") -> list[ProgressEvent]:
    """A plausible run: loss falling, a DPO-ish margin rising, an eval halfway."""
    events = [ProgressEvent("start", total_steps=total, message=f"{method} on fake data")]
    for step in range(1, total + 1):
        metrics = {"reward_margin": 0.1 * step, "kl": 0.01 * step} if method == "dpo" else {}
        events.append(
            ProgressEvent(
                "step",
                step=step,
                total_steps=total,
                loss=2.0 / (1 + 0.3 * step),
                learning_rate=2e-4,
                tokens_per_s=1000.0 + step,
                eta_s=float(total - step),
                metrics=metrics,
            )
        )
        if step == total // 2:
            events.append(ProgressEvent("eval", step=step, total_steps=total, loss=1.5,
                                        metrics={"eval_loss": 1.5}))
    return events


def make_evaluation(ref: str, task: str, metric: str, value: float, **fields: Any) -> Evaluation:
    name, _, number = ref.partition("@")
    fields.setdefault("created_at", T0 + 86_400)
    fields.setdefault("harness", "lm-eval 0.4.13")
    return Evaluation(name, int(number), task, metric, value, **fields)


def _recipe(request: TrainRequest) -> dict[str, Any]:
    if isinstance(request.recipe, Mapping):
        return dict(request.recipe)
    return dict(yaml.safe_load(Path(request.recipe).read_text()))


class FakeBackend:
    """In-memory :class:`~adapterhub_tui.backend.Backend` for tests."""

    def __init__(self, home: Path, *, capabilities: frozenset[Capability] | None = None) -> None:
        self._home = Path(home)
        self.capabilities = frozenset(Capability) - {Capability.PUSH, Capability.PULL} \
            if capabilities is None else capabilities
        self.versions: list[Version] = [
            make_version("pirate", 1, metrics={"loss": 1.234, "ppl_general": 9.8}),
            make_version("pirate", 2, parent="pirate@1", aliases=("prod",),
                         metrics={"loss": 0.912, "ppl_general": 10.1},
                         recipe={"method": "sft", "lora": {"r": 8}}),
            make_version("json-answers", 1, metrics={"loss": 0.55, "json_rate": 0.95}),
            make_version("pirate-dpo", 1, "dpo", parent="pirate@2",
                         metrics={"loss": 0.61, "reward_margin": 1.7}),
        ]
        self.step_logs: dict[str, list[ProgressEvent]] = {
            "pirate@2": scripted_events(8),
            "pirate-dpo@1": scripted_events(8, "dpo"),
        }
        self.answers: dict[str | None, str] = {
            None: "Paris is the capital of France.",
            "pirate@2": "Arr, Paris be the capital, matey!",
            "json-answers@1": '{"answer": "Paris", "confidence": 0.9}',
        }
        self.recorded: dict[str, list[Evaluation]] = {  # ref -> evaluations, oldest first
            "pirate@2": [
                make_evaluation("pirate@2", "adapterhub_capitals", "acc", 0.5833, stderr=0.1486,
                                samples=12),
                make_evaluation("pirate@2", "adapterhub_capitals", "acc_norm", 0.5, stderr=0.1508,
                                samples=12),
            ],
        }
        self.alias_gates: dict[tuple[str, str], list[str]] = {
            ("pirate", "prod"): ["adapterhub_capitals:acc>=parent"],
        }
        self.evaluated: list[tuple[str, tuple[str, ...], int | None]] = []
        self.hold_evaluation: threading.Event | None = None  # set() to let a held run finish
        self.fail: dict[str, BaseException] = {}  # method name -> error to raise
        self.train_steps = 6
        self.hold_training: threading.Event | None = None  # set() to let a held run finish
        self.stream_delay = 0.0
        self.trained: list[TrainRequest] = []
        self.streamed: list[tuple[str | None, SamplingParams]] = []

    # -------------------------------------------------------------- helpers

    @property
    def home(self) -> Path:
        return self._home

    def preference_store(self) -> PreferenceStore:
        return PreferenceStore.in_home(self._home)

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def resolve(self, ref: str) -> Version:
        parsed = AdapterRef.parse(ref)
        mine = [v for v in self.versions if v.name == parsed.name]
        for v in reversed(mine):
            if (parsed.version is None and parsed.alias is None) or parsed.version == v.number \
                    or (parsed.alias is not None and parsed.alias in v.aliases):
                return v
        raise AdapterNotFoundError(f"adapter {ref!r} does not exist; see `adapterhub list`.", ref=ref)

    # -------------------------------------------------------------- protocol

    async def describe(self) -> BackendInfo:
        self._maybe_fail("describe")
        return BackendInfo("fake backend", "tiny-base", self.capabilities)

    async def list_versions(self) -> list[Version]:
        self._maybe_fail("list_versions")
        return list(self.versions)

    async def lineage(self, ref: str) -> list[Version]:
        self._maybe_fail("lineage")
        chain = [self.resolve(ref)]
        while chain[-1].parent:
            chain.append(self.resolve(chain[-1].parent))
        return chain

    async def step_log(self, ref: str) -> list[ProgressEvent]:
        return list(self.step_logs.get(self.resolve(ref).ref, []))

    async def evaluations(self, ref: str) -> list[Evaluation]:
        self._maybe_fail("evaluations")
        newest = {e.subject: e for e in self.recorded.get(self.resolve(ref).ref, [])}
        return sorted(newest.values(), key=lambda e: e.subject)

    async def gates(self, ref: str) -> dict[str, list[str]]:
        self._maybe_fail("gates")
        version = self.resolve(ref)
        return {alias: list(self.alias_gates[(version.name, alias)]) for alias in version.aliases
                if self.alias_gates.get((version.name, alias))}

    async def evaluate(
        self, ref: str, tasks: Sequence[str], *, limit: int | None = None,
        progress: ProgressCallback,
    ) -> list[Evaluation]:
        self._maybe_fail("evaluate")
        version = self.resolve(ref)
        self.evaluated.append((version.ref, tuple(tasks), limit))
        names = [f"adapterhub_{Path(t).name}" for t in tasks]
        total = 4 * len(tasks)

        def run() -> None:  # on a worker thread, like lm-eval over the real engine
            progress(ProgressEvent("start", message=f"evaluating {version.ref} on {', '.join(names)}"))
            for step in range(1, total + 1):
                progress(ProgressEvent("step", step=step, total_steps=total, message="loglikelihood"))
                if step == 1 and self.hold_evaluation is not None:
                    self.hold_evaluation.wait(30)

        await asyncio.to_thread(run)
        found = [make_evaluation(version.ref, name, "acc", 0.25 * (i + 1), stderr=0.2,
                                 samples=limit or 12, created_at=T0 + 2 * 86_400)
                 for i, name in enumerate(names)]
        self.recorded.setdefault(version.ref, []).extend(found)
        progress(ProgressEvent("done", message=", ".join(f"{e.subject}={e.value:.4g}" for e in found),
                               metrics={e.subject: e.value for e in found}, version_ref=version.ref))
        return found

    async def tag(self, ref: str, alias: str) -> Version:
        self._maybe_fail("tag")
        target = self.resolve(ref)
        self.versions = [
            replace(v, aliases=tuple(a for a in v.aliases if a != alias)) if v.name == target.name else v
            for v in self.versions
        ]
        target = self.resolve(target.ref)
        tagged = replace(target, aliases=tuple(sorted((*target.aliases, alias))))
        self.versions = [tagged if v.ref == tagged.ref else v for v in self.versions]
        return tagged

    async def delete(self, ref: str) -> list[Version]:
        self._maybe_fail("delete")
        target = self.resolve(ref)
        children = [v.ref for v in self.versions if v.parent == target.ref]
        if children:
            raise RegistryError(
                f"cannot delete {ref!r}: {', '.join(children)} name it as parent; delete those first"
            )
        self.versions = [v for v in self.versions if v.ref != target.ref]
        return [target]

    async def push(self, ref: str, repo_id: str) -> str:
        self._maybe_fail("push")
        return f"https://hub.example/{repo_id}"

    async def pull(self, repo_id: str, name: str | None = None) -> Version:
        self._maybe_fail("pull")
        version = make_version(name or repo_id.split("/")[-1], 1, "imported")
        self.versions.append(version)
        return version

    async def check_training(self, request: TrainRequest) -> list[str]:
        self._maybe_fail("check_training")
        recipe = _recipe(request)
        problems = []
        parent = request.overrides.get("parent", recipe.get("parent"))
        if parent:
            try:
                self.resolve(str(parent))
            except AdapterNotFoundError as e:
                problems.append(f"parent: {e}")
        return problems

    async def train(
        self, request: TrainRequest, *, progress: ProgressCallback, cancel: CancelToken
    ) -> Version:
        self._maybe_fail("train")
        self.trained.append(request)
        recipe = _recipe(request)
        method = str(request.overrides.get("method", recipe.get("method", "sft")))
        name = str(request.overrides.get("name") or get_key(recipe, "name") or "fake-run")
        parent = request.overrides.get("parent", recipe.get("parent"))
        events = scripted_events(self.train_steps, method)

        def run() -> None:  # on a worker thread, like the real trainer
            for i, event in enumerate(events):
                if cancel.cancelled:
                    progress(ProgressEvent("cancelled", step=event.step, message="cancelled"))
                    raise TrainingCancelled(f"run of {name!r} cancelled at step {event.step}")
                progress(event)
                if i == 2 and self.hold_training is not None:
                    while not self.hold_training.wait(0.01):
                        if cancel.cancelled:
                            break

        await asyncio.to_thread(run)
        number = 1 + max((v.number for v in self.versions if v.name == name), default=0)
        version = make_version(name, number, method, parent=str(parent) if parent else None,
                               metrics={"loss": events[-1].loss}, recipe=recipe)
        self.versions.append(version)
        self.step_logs[version.ref] = events
        progress(ProgressEvent("done", step=self.train_steps, total_steps=self.train_steps,
                               version_ref=version.ref))
        return version

    async def stream(
        self, ref: str | None, messages: ChatMessages, sampling: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        self._maybe_fail("stream")
        resolved = self.resolve(ref).ref if ref is not None else None
        if not messages:
            raise ConfigError("no messages")
        self.streamed.append((ref, sampling))
        words = self.answers.get(resolved, f"answer from {resolved}").split(" ")
        words = words[: sampling.max_tokens]
        for i, word in enumerate(words):
            await asyncio.sleep(self.stream_delay)
            yield GenerationChunk("fake", word if i == 0 else " " + word, (i,),
                                  adapter_version=resolved)
        yield GenerationChunk("fake", "", (), finish_reason="stop",
                              usage=Usage(prompt_tokens=5, completion_tokens=len(words)),
                              adapter_version=resolved)

    async def aclose(self) -> None:
        return None
