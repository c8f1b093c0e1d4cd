"""``adapterhub.json``: the record in each pushed commit that a pull verifies and registers.

It holds what the Hub's files cannot say: the base's fingerprint and chat template hash, lineage,
the recipe, metrics, evaluations, and the sha256 of every registry file in the commit. Read from
the Hub, it is input from outside: size-capped, ``extra="forbid"``, every problem listed at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapterhub.errors import ConfigError, UnsafeAdapterError, describe_validation_error
from adapterhub.registry import Evaluation

MANIFEST_FILE = "adapterhub.json"
MANIFEST_FORMAT: Final = "adapterhub.manifest/1"
MAX_SMALL_FILE_BYTES = 16 * 1024 * 1024  # the cap on every downloaded file but the weights
_SHA256 = r"^[0-9a-f]{64}$"


class ManifestBase(BaseModel):
    """The base a version was trained on, as recorded in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=512)
    """The base's name: a Hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) or a folder name."""

    fingerprint: str = Field(pattern=_SHA256)
    """sha256 over the base's config, tokenizer, chat template and weights."""

    template_hash: str = Field(pattern=_SHA256)
    """sha256 of the chat template the adapter was trained with."""


class ManifestEvaluation(BaseModel):
    """One evaluation of the version, as recorded in the pushing registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1, max_length=256)
    metric: str = Field(min_length=1, max_length=256)
    value: float = Field(allow_inf_nan=False)
    stderr: float | None = Field(default=None, allow_inf_nan=False)
    samples: int | None = Field(default=None, ge=0)
    harness: str = Field(default="", max_length=128)
    created_at: float = Field(default=0.0, ge=0)
    setup: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, e: Evaluation) -> ManifestEvaluation:
        return cls(task=e.task, metric=e.metric, value=e.value, stderr=e.stderr, samples=e.samples,
                   harness=e.harness, created_at=e.created_at, setup=dict(e.setup))

    def to_evaluation(self, upstream: str) -> Evaluation:
        """A record for the pulling registry (name and number are set when it registers)."""
        return Evaluation("", 0, self.task, self.metric, self.value, stderr=self.stderr,
                          samples=self.samples, harness=self.harness, created_at=self.created_at,
                          setup={**self.setup, "measured_on": upstream})


class HubManifest(BaseModel):
    """``adapterhub.json``: what a pushed commit holds, so a pull can verify and register it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["adapterhub.manifest/1"] = MANIFEST_FORMAT
    """Manifest format; a new incompatible layout gets a new value."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Adapter name in the registry it was pushed from."""

    number: int = Field(ge=1)
    """Version number in that registry; the commit is tagged ``v<number>``."""

    method: str = Field(min_length=1, max_length=64)
    """Training method (``sft``, ``dpo``, … or ``imported``)."""

    created_at: float = Field(ge=0)
    """When the version was registered (Unix time)."""

    base: ManifestBase
    """The base it was trained on."""

    files: dict[str, str] = Field(min_length=2, max_length=64)
    """Registry files pushed, filename -> sha256 of the bytes in this commit."""

    recipe: dict[str, Any] = Field(default_factory=dict)
    """The resolved training recipe."""

    dataset_fingerprint: str | None = Field(default=None, max_length=128)
    """Hash of the training data, when known."""

    parent: str | None = Field(default=None, max_length=128)
    """Ref of the version it started from, in the pushing registry."""

    metrics: dict[str, Any] = Field(default_factory=dict)
    """Training, eval and forgetting-check metrics."""

    source: dict[str, Any] = Field(default_factory=dict)
    """Where the version itself came from (e.g. an earlier pull)."""

    evaluations: list[ManifestEvaluation] = Field(default_factory=list, max_length=1000)
    """The newest evaluation per task and metric when it was pushed (``adapterhub eval``)."""

    def identity(self) -> tuple[Any, ...]:
        """What makes two pushes the same version: name, number, base and file hashes."""
        return (self.name, self.number, self.base.fingerprint, tuple(sorted(self.files.items())))


def read_manifest(api: Any, repo_id: str, commit: str) -> HubManifest | None:
    """The manifest at ``commit``, or None if there is none or it is not ours."""
    from huggingface_hub import errors as hf

    with tempfile.TemporaryDirectory(prefix="adapterhub-manifest-") as tmp:
        try:
            path = api.hf_hub_download(repo_id, MANIFEST_FILE, revision=commit, local_dir=tmp)
        except hf.RemoteEntryNotFoundError:
            return None
        data = Path(path).read_bytes()
    return parse_manifest(data, f"{repo_id}@{commit[:12]}")


def parse_manifest(data: bytes, where: str) -> HubManifest:
    """The manifest in ``data``, read from ``where`` (named in the errors).

    Raises:
        UnsafeAdapterError: it is over :data:`MAX_SMALL_FILE_BYTES`.
        ConfigError: it is not a valid manifest; every problem at once.
    """
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise UnsafeAdapterError(f"{where}: {MANIFEST_FILE} is {len(data)} bytes; refusing it")
    try:
        return HubManifest.model_validate_json(data)
    except ValidationError as e:
        problems = describe_validation_error(e.errors(include_url=False), root=MANIFEST_FILE)
        raise ConfigError([line for _, line in problems], source=f"{MANIFEST_FILE} in {where}") from None
