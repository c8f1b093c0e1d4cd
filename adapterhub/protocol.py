"""Wire schemas of the server's admin and registry routes, shared by the server and the TUI.

The server (``adapterhub_server``) answers with these models and the TUI's HTTP backend parses
them, so both sides spell every field the same way without importing each other. The
OpenAI-compatible routes keep their schemas in the server (``adapterhub_server.schemas``): a
client of those uses the ``openai`` package.

Design choices:

* Requests are strict (``extra="forbid"``, limits, a docstring per field). Responses ignore
  fields they do not know, so an older TUI keeps working against a newer server.
* Library values convert in one place: :meth:`VersionInfo.from_version` /
  :meth:`VersionInfo.to_version`, :meth:`ResidentAdapterInfo.from_resident`.
* Errors travel as the ``code`` each library error class declares
  (:class:`~adapterhub.errors.AdapterHubError`): the server answers with it and a client raises
  :func:`~adapterhub.errors.error_class` of it, so an unknown adapter is an
  :class:`~adapterhub.errors.AdapterNotFoundError` on both sides of the wire.
* Pure pydantic: importing this module imports neither torch nor any web framework.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from adapterhub.engine.types import ResidentAdapter
    from adapterhub.registry import Evaluation, Version

_REF = Field(min_length=1, max_length=200)
_REF_OR_BASE = Field(default=None, min_length=1, max_length=200)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------- requests


class LoadAdapterRequest(_Request):
    """``POST /admin/adapters/load``: warm an adapter into a slot."""

    ref: str = _REF
    """Adapter ref: ``name``, ``name@3`` or ``name:alias``."""

    pin: bool = False
    """Also pin it, so it is never evicted."""


class PinAdapterRequest(_Request):
    """``POST /admin/adapters/pin``: pin (load if needed) or unpin an adapter."""

    ref: str = _REF
    """Adapter ref."""

    pinned: bool = True
    """True pins (loading it if needed); False unpins a resident adapter."""


class UnloadAdapterRequest(_Request):
    """``POST /admin/adapters/unload``: drop an adapter from its slot and the cache."""

    ref: str = _REF
    """Adapter ref."""


class TagRequest(_Request):
    """``POST /admin/versions/{ref}/tag``: point ``name:alias`` at a version."""

    alias: str = Field(min_length=1, max_length=64)
    """Alias to set or move, e.g. ``prod``."""
    gates: list[str] | None = Field(default=None, max_length=32)
    """Rules the alias holds from now on (``adapterhub_capitals:acc>=parent``, ``forgetting<=1.2``),
    replacing its old ones; ``[]`` removes them; absent keeps them. A gated alias moves only to a
    version whose recorded evaluations pass (409 ``gate_failed`` with the numbers otherwise)."""


class VllmLoadLoraRequest(_Request):
    """vLLM's ``POST /v1/load_lora_adapter`` body."""

    lora_name: str = _REF
    """Adapter ref to warm, or the name to register ``lora_path`` under."""

    lora_path: str | None = Field(default=None, min_length=1, max_length=4096)
    """A PEFT LoRA folder on the server's disk to import as the next version of ``lora_name``
    (safetensors only, checked against the base); omit it to load a registered ref."""

    load_inplace: bool = False
    """vLLM's flag; accepted. Registered versions are immutable, so a path always makes a new
    version."""


class VllmUnloadLoraRequest(_Request):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    lora_name: str = _REF
    """Adapter ref to unload."""

    lora_int_id: int | None = None
    """vLLM's numeric id; accepted and ignored."""


# ---------------------------------------------------------------------------- responses


class ResidentAdapterInfo(_Response):
    """An adapter resident in one of the engine's slots."""

    ref: str
    slot: int
    pinned: bool
    active_rows: int
    rank: int
    num_bytes: int

    @classmethod
    def from_resident(cls, resident: ResidentAdapter) -> ResidentAdapterInfo:
        return cls(
            ref=resident.ref, slot=resident.slot, pinned=resident.pinned,
            active_rows=resident.active_rows, rank=resident.rank, num_bytes=resident.num_bytes,
        )


class ResidencyResponse(_Response):
    """``GET /admin/adapters``: slots, cache and queue of the engine."""

    max_slots: int
    slots_used: int
    resident: list[ResidentAdapterInfo]
    cached_adapters: int
    """Prepared adapters in the in-memory LRU cache behind the slots."""
    loads_in_flight: int
    cache_hits: int
    cache_misses: int
    queue_depth: int
    running_rows: int
    max_rows: int


class UnloadResponse(_Response):
    """Result of an unload."""

    ref: str
    """The resolved version."""
    unloaded: bool
    """False when it was not resident."""


class EvaluationInfo(_Response):
    """One evaluation of a version: the fields of :class:`adapterhub.registry.Evaluation`."""

    ref: str
    task: str
    metric: str
    value: float
    stderr: float | None = None
    samples: int | None = None
    harness: str = ""
    created_at: float = 0.0
    setup: dict[str, Any] = Field(default_factory=dict)


class VersionInfo(_Response):
    """One registered version: the fields of :class:`adapterhub.registry.Version`, and its
    newest evaluation per task and metric."""

    ref: str
    name: str
    number: int
    created_at: float
    method: str
    base_fingerprint: str
    template_hash: str
    files: dict[str, str]
    recipe: dict[str, Any] = Field(default_factory=dict)
    dataset_fingerprint: str | None = None
    parent: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    evaluations: list[EvaluationInfo] = Field(default_factory=list)

    @classmethod
    def from_version(cls, version: Version, evaluations: Iterable[Evaluation] = ()) -> VersionInfo:
        return cls.model_validate({**version.to_dict(), "evaluations": [e.to_dict() for e in evaluations]})

    def to_version(self) -> Version:
        from dataclasses import fields

        from adapterhub.registry import Version

        data = self.model_dump(include={f.name for f in fields(Version)})
        return Version(**{**data, "aliases": tuple(self.aliases)})


class VersionList(_Response):
    """``GET /admin/versions`` (every version, oldest first) and lineage chains (newest first)."""

    data: list[VersionInfo]


class DeleteResponse(_Response):
    """``DELETE /admin/versions/{ref}``: the versions deleted."""

    deleted: list[str]


class ServerInfo(_Response):
    """``GET /admin/info``: what this server serves."""

    base_name: str
    base_fingerprint: str
    template_hash: str
    precision: str
    max_model_len: int
    home: str
    version: str


# --------------------------------------------------------------------------- jobs


class TrainJobRequest(_Request):
    """Train a recipe and register the adapter (what ``adapterhub train`` does)."""

    kind: Literal["train"]
    recipe: str | dict[str, Any]
    """A bundled recipe's name (a file ``<name>.yaml`` in the server's recipes folder) or a recipe body."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Recipe fields to override, by dotted path (as ``--set`` takes them)."""
    resume: bool = False
    """Continue this recipe's interrupted run from its last checkpoint."""


class EvalJobRequest(_Request):
    """Evaluate a version (or the base) with lm-evaluation-harness and record it (``adapterhub eval``)."""

    kind: Literal["eval"]
    ref: str | None = _REF_OR_BASE
    """The version to evaluate; null evaluates the base alone (not recorded)."""
    tasks: list[str] = Field(min_length=1, max_length=32)
    """lm-eval task names, or task folders / YAML files on the server."""
    limit: int | None = Field(default=None, ge=1)
    """Score only the first ``limit`` documents of each task."""
    num_fewshot: int | None = Field(default=None, ge=0, le=64)
    chat: bool = False
    """Render prompts with the chat template."""


class PushJobRequest(_Request):
    """Push a version to a Hugging Face Hub repo (``adapterhub push``)."""

    kind: Literal["push"]
    ref: str = _REF
    repo_id: str = Field(min_length=3, max_length=200)
    private: bool = False
    revision: str = Field(default="main", min_length=1, max_length=200)


class PullJobRequest(_Request):
    """Pull a PEFT LoRA repo from the Hugging Face Hub and register it (``adapterhub pull``)."""

    kind: Literal["pull"]
    repo_id: str = Field(min_length=3, max_length=200)
    revision: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    """The adapter name to register under; the repo's name when null."""


JobRequest = Annotated[
    TrainJobRequest | EvalJobRequest | PushJobRequest | PullJobRequest, Field(discriminator="kind")
]
"""``POST /admin/jobs``: one of the four kinds, told apart by ``kind``."""

JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
FINAL_JOB_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "interrupted"})


class JobInfo(_Response):
    """A job: ``POST /admin/jobs``, ``GET /admin/jobs/{id}``, and the last event of its stream."""

    id: str
    kind: str
    state: JobState
    request: dict[str, Any]
    """The request as submitted."""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    """The job's process while it runs (the queue follows it across a restart)."""
    message: str = ""
    """Why it failed, was cancelled or interrupted (and how to resume), or what it did."""
    version_ref: str | None = None
    """The version a train or pull job registered."""
    owner: str | None = None
    """The name of the API key that queued it through a server (None: queued otherwise). A key
    limited to some adapters sees only the jobs it queued."""
    result: dict[str, Any] = Field(default_factory=dict)
    """What the job produced beyond a version (an evaluation's numbers, a push's commit)."""


class JobList(_Response):
    """``GET /admin/jobs``: every job of this hub, newest first."""

    jobs: list[JobInfo]
