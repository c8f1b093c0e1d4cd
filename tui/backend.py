"""The TUI's one seam: everything a screen may ask of adapterhub, whoever answers.

Screens never touch :class:`adapterhub.Hub`, SQLite or HTTP; they hold a :class:`Backend`. Two
implement it: :class:`~adapterhub_tui.local.InProcessBackend` over the library in this process,
and :class:`~adapterhub_tui.remote.HttpBackend` over a running ``adapterhub serve`` (its
OpenAI-compatible API plus its admin API). Tests add a small fake of their own.

Design choices:

* Every method is a coroutine (or, for streaming, an async iterator), so a screen calls it from an
  async Textual worker and the event loop never blocks. A backend that does blocking work (the
  in-process one: SQLite, torch) moves it to a thread itself.
* A backend states what it can do as :class:`Capability` flags; a screen hides or refuses an
  action the backend lacks *before* calling it, with a notification that says why.
* The values crossing the seam are the library's own: :class:`~adapterhub.registry.Version`,
  :class:`~adapterhub.registry.Evaluation`, :class:`~adapterhub.core.progress.ProgressEvent`,
  :class:`~adapterhub.engine.types.SamplingParams` and
  :class:`~adapterhub.engine.types.GenerationChunk`. One spelling per idea, whatever the
  transport.
* Failures are adapterhub errors (``adapterhub.errors``); the app turns them into notifications.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from adapterhub.core.progress import CancelToken, ProgressCallback, ProgressEvent
from adapterhub.engine.types import GenerationChunk, SamplingParams
from adapterhub.registry import Evaluation, Version
from adapterhub.training.votes import Answer, PreferencePair

ChatMessages = Sequence[Mapping[str, str]]
"""A chat as OpenAI writes it: ``[{"role": "user", "content": "..."}]``."""


class Capability(StrEnum):
    """An optional action a backend may support."""

    TAG = "tag"
    DELETE = "delete"
    STEP_LOG = "step_log"
    EVALUATIONS = "evaluations"  # read a version's recorded evaluations
    GATES = "gates"  # read the rules its aliases hold
    TRAIN = "train"
    PUSH = "push"
    PULL = "pull"


@dataclass(frozen=True)
class BackendInfo:
    """Who answers: shown in the header and used to label the base column in compare."""

    label: str  # e.g. "in-process ~/.adapterhub" or "http://127.0.0.1:8000"
    base_name: str  # the base model's name; compare's "base" column
    capabilities: frozenset[Capability] = frozenset()

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class TrainRequest:
    """One training run: a recipe (file or mapping) and the fields the form changed.

    ``overrides`` uses the CLI's ``--set`` keys (dotted paths into the recipe), so the request and
    the command the training screen shows are the same thing.
    """

    recipe: Path | Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)


class Preferences(Protocol):
    """Where compare's votes go and where the DPO offer finds them (see
    :class:`adapterhub.training.votes.PreferenceStore`, the in-process one)."""

    path: Path
    """The pairs' JSONL file, as the training names it (on the server, for the HTTP backend)."""

    @property
    def recipe_folder(self) -> Path:
        """A local folder the DPO recipe over the votes is written to."""
        ...

    def vote(self, prompt: str, best: Answer, others: Sequence[Answer]) -> list[PreferencePair]:
        """Record that ``best`` beat each of ``others``. Raises ConfigError for an empty vote."""
        ...

    def pairs(self) -> list[PreferencePair]:
        ...

    def preferred_adapter(self) -> str | None:
        ...

    def count(self) -> int | None:
        """How many pairs are stored; None when that cannot be known now (the server is unreachable)."""
        ...

    def thumb(self, prompt: str, answer: Answer, label: bool) -> dict[str, Any]:
        """Record one answer as desirable (``label`` true) or not: a row of KTO's unpaired data.
        Returns the stored record (``ref`` is the version that answered). Raises ConfigError for
        an empty prompt or answer."""
        ...

    def thumbs_count(self) -> int | None:
        """How many thumbs are stored; None when that cannot be known now."""
        ...


@runtime_checkable
class Backend(Protocol):
    """What the TUI needs from adapterhub. See the module docstring for the rules."""

    @property
    def home(self) -> Path:
        """The local hub home: where compare's preference pairs are written."""
        ...

    async def describe(self) -> BackendInfo:
        """Label, base name and capabilities."""
        ...

    def preference_store(self) -> Preferences:
        """Where compare's votes go: the hub home's preference file (on the server over HTTP)."""
        ...

    async def list_versions(self) -> list[Version]:
        """Every registered version, oldest first."""
        ...

    async def lineage(self, ref: str) -> list[Version]:
        """The version ``ref`` names and its parent chain, newest first."""
        ...

    async def step_log(self, ref: str) -> list[ProgressEvent]:
        """The progress events recorded while the version was trained (empty when none)."""
        ...

    async def evaluations(self, ref: str) -> list[Evaluation]:
        """The version's newest evaluation per task and metric, sorted by ``task:metric``."""
        ...

    async def gates(self, ref: str) -> dict[str, list[str]]:
        """Each gated alias of the version with the text of its rules (ungated ones left out)."""
        ...

    async def evaluate(
        self, ref: str, tasks: Sequence[str], *, limit: int | None = None,
        progress: ProgressCallback,
    ) -> list[Evaluation]:
        """Run lm-evaluation-harness on the version, record the numbers and return them.

        ``tasks`` are task folders or YAML files (``recipes/evals/capitals``) or lm-eval task
        names; ``limit`` scores only the first documents of each. ``progress`` may be called from
        any thread.
        """
        ...

    async def tag(self, ref: str, alias: str) -> Version:
        """Point ``name:alias`` at ``ref``'s version."""
        ...

    async def delete(self, ref: str) -> list[Version]:
        """Delete one version; refused while another version names it as parent."""
        ...

    async def push(self, ref: str, repo_id: str) -> str:
        """Push a version to the Hugging Face Hub; returns where it went."""
        ...

    async def pull(self, repo_id: str, name: str | None = None) -> Version:
        """Pull a repo (``id`` or ``id@revision``) and register it."""
        ...

    async def check_training(self, request: TrainRequest) -> list[str]:
        """Every problem the recipe with these overrides has (empty when it would run)."""
        ...

    async def train(
        self, request: TrainRequest, *, progress: ProgressCallback, cancel: CancelToken
    ) -> Version:
        """Run one training to the end and return the registered version.

        ``progress`` may be called from any thread; ``cancel`` stops the run between steps
        (the run then raises :class:`~adapterhub.errors.TrainingCancelled`).
        """
        ...

    def stream(
        self, ref: str | None, messages: ChatMessages, sampling: SamplingParams
    ) -> AsyncIterator[GenerationChunk]:
        """Stream one chat answer from adapter ``ref`` (None = the base).

        The last chunk has ``finish_reason`` and ``usage`` set.
        """
        ...

    async def aclose(self) -> None:
        """Release clients, threads and models."""
        ...
