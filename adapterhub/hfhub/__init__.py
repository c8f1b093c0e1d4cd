"""Push adapter versions to the Hugging Face Hub and pull them back; the only huggingface_hub user.

Design choices:

* **One version, one commit, one tag.** Pushing ``name@N`` writes one commit on a branch (``main``
  unless asked) and tags it ``vN``. Before writing, the tag is looked up: if it already holds this
  very version (same files, same base) the push is a no-op; if it holds something else the push is
  refused instead of silently retagging. Commits carry ``parent_commit``, so a concurrent push to
  the same branch fails instead of being overwritten.
* **A repo that plain PEFT and vLLM load.** ``adapter_config.json`` (with the base's Hub id in
  ``base_model_name_or_path``) and ``adapter_model.safetensors`` byte for byte from the registry,
  the base's tokenizer files and chat template, a model card with Hub metadata, and our manifest
  ``adapterhub.json`` (fingerprints, lineage, metrics, file hashes).
* **Pull trusts nothing.** It resolves the revision to a commit sha first and downloads every file
  at that sha, so a branch moving mid-pull cannot mix two commits. Safetensors only: a repo whose
  weights are pickles is refused with the reason. The base check uses the manifest's fingerprint
  when there is one; otherwise shapes and target modules against the current base, with a
  :class:`BaseMismatchWarning` when the card names another base. File hashes are checked against
  the manifest. The registered version's ``source`` names the endpoint, repo, revision and commit,
  and pulling a commit already registered returns that version instead of a duplicate.
* **Errors translated in one place.** :func:`_hub_errors` turns huggingface_hub and transport
  errors into :class:`HubAuthError`, :class:`HubNotFoundError` or :class:`HubError`, raised ``from``
  the original.
* **Tokens and endpoint** come from the usual places: an explicit argument, else ``HF_TOKEN`` or
  the ``hf auth login`` token (huggingface_hub reads them per request); an explicit endpoint, else
  ``HF_ENDPOINT`` read at call time, else huggingface.co. Byte progress of downloads goes to the
  caller's :data:`~adapterhub.core.progress.ProgressCallback`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapterhub.core.progress import ProgressCallback, ProgressEvent, no_progress
from adapterhub.core.refs import validate_name
from adapterhub.errors import (
    BaseMismatchWarning,
    ConfigError,
    CorruptBlobError,
    HubAuthError,
    HubError,
    HubNotFoundError,
    IncompatibleAdapterError,
    UnsafeAdapterError,
)
from adapterhub.hfhub.card import HUB_ID, MANIFEST_FILE, render_model_card
from adapterhub.models.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraLimits,
    check_fits,
    load_lora_bytes,
    refuse_pickles,
)
from adapterhub.models.base import BaseInfo, load_skeleton
from adapterhub.registry import Evaluation, Registry, Version

MANIFEST_FORMAT: Final = "adapterhub.manifest/1"
README_FILE = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
MAX_SMALL_FILE_BYTES = 16 * 1024 * 1024
_SHA256 = r"^[0-9a-f]{64}$"


# --------------------------------------------------------------------------- settings & manifest


class HubSettings(BaseModel):
    """Where the Hub is and how to authenticate; from arguments, else the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(default=DEFAULT_ENDPOINT, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """Base URL of the Hub (``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co)."""

    token: str | None = Field(default=None, min_length=1, max_length=4096, repr=False)
    """Access token; None lets huggingface_hub use ``HF_TOKEN`` or the ``hf auth login`` token."""

    @classmethod
    def resolve(cls, endpoint: str | None = None, token: str | None = None) -> HubSettings:
        """Build settings from explicit values, falling back to ``HF_ENDPOINT``.

        Raises:
            ConfigError: the endpoint is not an http(s) URL.
        """
        chosen = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        try:
            return cls(endpoint=chosen, token=token or None)
        except ValidationError as e:
            raise ConfigError(
                f"Hub endpoint {chosen!r} is not an http(s) URL; pass --endpoint https://host "
                f"or set HF_ENDPOINT ({e.error_count()} problem(s))"
            ) from None


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


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    repo_id: str
    branch: str
    tag: str
    commit: str  # the commit sha the tag points at
    url: str
    created: bool  # False when the tag already held this version (a no-op)


@dataclass(frozen=True)
class PullResult:
    """What a pull did."""

    version: Version
    repo_id: str
    revision: str
    commit: str
    created: bool  # False when this commit was already registered


# --------------------------------------------------------------------------- errors


@contextmanager
def _hub_errors(what: str, *, repo_id: str = "", revision: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub and transport errors into ours, raised ``from`` the original."""
    import httpx2
    from huggingface_hub import errors as hf

    where = f" {repo_id!r}" if repo_id else ""
    token_hint = "set HF_TOKEN or run `hf auth login` with a token that may access it"
    try:
        yield
    except hf.GatedRepoError as e:
        raise HubAuthError(
            f"{what}: repo{where} is gated; request access on the Hub, then {token_hint}"
        ) from e
    except hf.RevisionNotFoundError as e:
        raise HubNotFoundError(
            f"{what}: revision {revision!r} does not exist in{where}; use a branch, a tag such as "
            "'v1', or a full commit sha"
        ) from e
    except hf.RepositoryNotFoundError as e:
        raise HubNotFoundError(
            f"{what}: repo{where} does not exist or is private; check the id, or {token_hint}"
        ) from e
    except hf.RemoteEntryNotFoundError as e:
        raise HubNotFoundError(f"{what}: a file is missing in{where} at {revision!r}: {e}") from e
    except hf.LocalTokenNotFoundError as e:
        raise HubAuthError(f"{what}: no Hub token found; {token_hint}") from e
    except hf.OfflineModeIsEnabled as e:
        raise HubError(f"{what}: HF_HUB_OFFLINE is set; unset it to talk to the Hub") from e
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubAuthError(
                f"{what}: the Hub refused the token ({status}) for{where or ' this request'}; "
                f"{token_hint} (write access is needed to push)"
            ) from e
        raise HubError(f"{what}: the Hub answered {status} for{where}: {_first_line(e)}") from e
    except hf.HFValidationError as e:
        raise ConfigError(
            f"repo id {repo_id!r} is not valid: {e}; write it as namespace/name"
        ) from e
    except httpx2.TransportError as e:
        raise HubError(
            f"{what}: cannot reach the Hub ({type(e).__name__}: {e}); check the network, "
            "HF_ENDPOINT or --endpoint"
        ) from e


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# --------------------------------------------------------------------------- push


def push_version(
    registry: Registry,
    ref: str,
    repo_id: str,
    *,
    base: BaseInfo | None = None,
    private: bool = False,
    branch: str = "main",
    settings: HubSettings | None = None,
    progress: ProgressCallback = no_progress,
) -> PushResult:
    """Push version ``ref`` to ``repo_id`` as one commit on ``branch`` tagged ``v<N>``.

    Args:
        registry: Where the version lives.
        ref: ``name``, ``name@N`` or ``name:alias``.
        repo_id: ``namespace/name`` on the Hub; created if missing.
        base: The base the version was trained on; its tokenizer files and Hub id go into the repo
            when its fingerprint matches the version's.
        private: Create the repo private (ignored if it exists).
        branch: Branch to commit on; created from ``main`` if missing.
        settings: Endpoint and token; :meth:`HubSettings.resolve` when None.
        progress: Receives start/done events.

    Returns:
        The repo, tag and commit; ``created`` is False when the tag already held this version.

    Raises:
        HubAuthError: no token or no write access.
        HubError: the tag holds other content, or the Hub failed.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    settings = settings or HubSettings.resolve()
    version = registry.resolve(ref)
    tag = f"v{version.number}"
    matching_base = (
        base if base is not None and base.fingerprint == version.base_fingerprint else None
    )
    files, manifest = _repo_files(registry, version, matching_base, repo_id, tag)
    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    url = f"{settings.endpoint}/{repo_id}/tree/{tag}"
    total = sum(len(data) for data in files.values())
    progress(
        ProgressEvent("start", total_steps=total, message=f"pushing {version.ref} to {repo_id}")
    )

    with _hub_errors(f"push {version.ref} to {repo_id}", repo_id=repo_id, revision=branch):
        api.create_repo(repo_id, private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id)
        tags = {t.name: t.target_commit for t in refs.tags}
        if tag in tags:
            existing = _read_manifest(api, repo_id, tags[tag])
            if existing is not None and existing.identity() == manifest.identity():
                progress(
                    ProgressEvent("done", message=f"{repo_id}@{tag} already holds {version.ref}")
                )
                return PushResult(repo_id, branch, tag, tags[tag], url, created=False)
            held = (
                f"{existing.name}@{existing.number}"
                if existing
                else "files not pushed by adapterhub"
            )
            raise HubError(
                f"tag {tag!r} in {repo_id!r} already holds {held}, not {version.ref}; "
                "push to another repo, or delete that tag on the Hub first"
            )
        heads = {b.name: b.target_commit for b in refs.branches}
        if branch not in heads:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
            heads = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
        previous = _read_manifest(api, repo_id, heads[branch])
        stale = sorted(set(previous.files) - set(files)) if previous else []
        operations: list[Any] = [
            CommitOperationAdd(path, data) for path, data in sorted(files.items())
        ]
        operations += [CommitOperationDelete(path) for path in stale]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"adapterhub: {version.ref} ({version.method})",
            commit_description=_commit_description(manifest),
            revision=branch,
            parent_commit=heads[branch],
        )
        api.create_tag(
            repo_id, tag=tag, revision=commit.oid, tag_message=f"adapterhub {version.ref}"
        )
    progress(ProgressEvent("done", step=total, total_steps=total, message=f"{repo_id}@{tag}"))
    return PushResult(repo_id, branch, tag, commit.oid, url, created=True)


def _repo_files(
    registry: Registry, version: Version, base: BaseInfo | None, repo_id: str, tag: str
) -> tuple[dict[str, bytes], HubManifest]:
    """Every file of the commit, deterministic for a given version and base."""
    files = {name: registry.read_file(version, name) for name in sorted(version.files)}
    config = json.loads(files[CONFIG_FILE])
    base_name = _base_name(base, config)
    config["base_model_name_or_path"] = base_name
    files[CONFIG_FILE] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    manifest = HubManifest(
        name=version.name,
        number=version.number,
        method=version.method,
        created_at=version.created_at,
        base=ManifestBase(
            name=base_name or "unknown",
            fingerprint=version.base_fingerprint,
            template_hash=version.template_hash,
        ),
        files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        recipe=dict(version.recipe),
        dataset_fingerprint=version.dataset_fingerprint,
        parent=version.parent,
        metrics=dict(version.metrics),
        source=dict(version.source),
        evaluations=[ManifestEvaluation.of(e) for e in registry.evaluations(version, latest=True)],
    )
    if base is not None:
        for name in TOKENIZER_FILES:
            if (base.path / name).is_file():
                files.setdefault(name, (base.path / name).read_bytes())
    files[MANIFEST_FILE] = (manifest.model_dump_json(indent=2) + "\n").encode()
    files[README_FILE] = render_model_card(
        manifest=manifest.model_dump(),
        adapter_config=config,
        repo_id=repo_id,
        tag=tag,
        base_hub_id=base_name if base_name and _is_hub_id(base, base_name) else None,
    ).encode()
    return files, manifest


def _base_name(base: BaseInfo | None, config: Mapping[str, Any]) -> str:
    """The base's Hub id when known; else its name; else what the adapter config says."""
    if base is not None:
        return base.name
    named = str(config.get("base_model_name_or_path") or "")
    return "" if named.startswith(("/", ".", "~")) else named


def _is_hub_id(base: BaseInfo | None, name: str) -> bool:
    if not HUB_ID.match(name):
        return False
    return base is None or base.source.startswith(("hub:", "pypi:"))


def _commit_description(manifest: HubManifest) -> str:
    lines = [
        f"version: {manifest.name}@{manifest.number}",
        f"method: {manifest.method}",
        f"base: {manifest.base.name} ({manifest.base.fingerprint[:16]})",
    ]
    if manifest.parent:
        lines.append(f"parent: {manifest.parent}")
    return "\n".join(lines)


def _read_manifest(api: Any, repo_id: str, commit: str) -> HubManifest | None:
    """The manifest at ``commit``, or None if there is none or it is not ours."""
    from huggingface_hub import errors as hf

    with tempfile.TemporaryDirectory(prefix="adapterhub-manifest-") as tmp:
        try:
            path = api.hf_hub_download(repo_id, MANIFEST_FILE, revision=commit, local_dir=tmp)
        except hf.RemoteEntryNotFoundError:
            return None
        data = Path(path).read_bytes()
    return _parse_manifest(data, f"{repo_id}@{commit[:12]}")


def _parse_manifest(data: bytes, where: str) -> HubManifest:
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise UnsafeAdapterError(f"{where}: {MANIFEST_FILE} is {len(data)} bytes; refusing it")
    try:
        return HubManifest.model_validate_json(data)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(problems, source=f"{MANIFEST_FILE} in {where}") from None


# --------------------------------------------------------------------------- pull


def pull_version(
    registry: Registry,
    repo_id: str,
    *,
    base: BaseInfo,
    revision: str | None = None,
    name: str | None = None,
    settings: HubSettings | None = None,
    progress: ProgressCallback = no_progress,
    limits: LoraLimits | None = None,
) -> PullResult:
    """Download a PEFT LoRA repo at ``revision`` and register it as a new version.

    Args:
        registry: Where to register.
        repo_id: ``namespace/name`` on the Hub.
        base: The current base; the adapter must fit it.
        revision: Branch, tag (``v3``) or commit sha; ``main`` when None.
        name: Adapter name; the manifest's name, else the repo's name, when None.
        settings: Endpoint and token; :meth:`HubSettings.resolve` when None.
        progress: Receives byte progress per file.
        limits: Size and rank limits for the weights; the defaults when None.

    Returns:
        The version; ``created`` is False when this commit was already registered.

    Raises:
        HubNotFoundError: no such repo, revision, or adapter files in it.
        HubAuthError: the token may not read the repo.
        UnsafeAdapterError: pickled weights only, malformed or oversized files.
        IncompatibleAdapterError: trained on another base, or shapes do not fit.
        CorruptBlobError: a file's hash differs from the manifest.
    """
    from huggingface_hub import HfApi

    settings = settings or HubSettings.resolve()
    limits = limits or LoraLimits()
    if name is not None:
        validate_name(name, field="adapter name")
    wanted = revision or "main"
    api = HfApi(endpoint=settings.endpoint, token=settings.token)
    what = f"pull {repo_id}@{wanted}"
    with _hub_errors(what, repo_id=repo_id, revision=wanted):
        info = api.model_info(repo_id, revision=wanted, files_metadata=True)
    commit = str(info.sha)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    _check_listing(sizes, repo_id, wanted, limits)

    for existing in registry.list_versions():
        if existing.source.get("hub") == repo_id and existing.source.get("commit") == commit:
            return PullResult(existing, repo_id, wanted, commit, created=False)

    with tempfile.TemporaryDirectory(prefix="adapterhub-pull-") as tmp:
        download = _Downloader(api, repo_id, commit, Path(tmp), progress, what)
        manifest = None
        if MANIFEST_FILE in sizes:
            manifest = _parse_manifest(download(MANIFEST_FILE), f"{repo_id}@{commit[:12]}")
            _check_manifest_base(manifest, base, repo_id)  # before downloading the weights
        wanted_files = sorted(manifest.files) if manifest else [CONFIG_FILE, WEIGHTS_FILE]
        refuse_pickles(wanted_files, where=f"{MANIFEST_FILE} of {repo_id}")
        missing = [f for f in wanted_files if f not in sizes]
        if missing:
            raise HubNotFoundError(
                f"{repo_id}@{wanted} lacks {missing!r}; "
                + ("its manifest lists them" if manifest else "a PEFT LoRA repo has both files")
            )
        total = download.total = sum(sizes.get(f) or 0 for f in wanted_files)
        download.done = 0  # count only the files that are registered (not the manifest)
        progress(ProgressEvent("start", total_steps=total, message=f"pulling {repo_id}@{wanted}"))
        data = {
            f: download(f, expected_sha256=manifest.files[f] if manifest else None)
            for f in wanted_files
        }
        card = download(README_FILE) if README_FILE in sizes and not manifest else b""

    adapter = load_lora_bytes(
        data[CONFIG_FILE], data[WEIGHTS_FILE], ref=f"{repo_id}@{wanted}", limits=limits
    )
    check_fits(adapter, load_skeleton(base.path))
    if manifest is None:
        _warn_if_other_base(data[CONFIG_FILE], card, base, repo_id)

    source: dict[str, Any] = {
        "hub": repo_id,
        "commit": commit,
        "revision": wanted,
        "endpoint": settings.endpoint,
    }
    adapter_name = name or (manifest.name if manifest else _name_from_repo(repo_id))
    if manifest is not None:
        source["upstream"] = {
            "ref": f"{manifest.name}@{manifest.number}",
            "parent": manifest.parent,
            "source": manifest.source,
            "created_at": manifest.created_at,
        }
        version = registry.register(
            adapter_name,
            data,
            base_fingerprint=manifest.base.fingerprint,
            template_hash=manifest.base.template_hash,
            method=manifest.method,
            recipe=manifest.recipe,
            dataset_fingerprint=manifest.dataset_fingerprint,
            metrics=manifest.metrics,
            source=source,
            evaluations=[e.to_evaluation(f"{manifest.name}@{manifest.number}") for e in manifest.evaluations],
        )
    else:
        version = registry.register(
            adapter_name,
            data,
            base_fingerprint=base.fingerprint,
            template_hash=base.template_hash,
            method="imported",
            metrics={
                "r": adapter.r,
                "alpha": adapter.alpha,
                "target_modules": list(adapter.target_modules),
            },
            source=source,
        )
    progress(
        ProgressEvent(
            "done",
            step=total,
            total_steps=total,
            version_ref=version.ref,
            message=f"registered {version.ref} from {repo_id}@{commit[:12]}",
        )
    )
    return PullResult(version, repo_id, wanted, commit, created=True)


def _check_listing(
    sizes: Mapping[str, int | None], repo_id: str, revision: str, limits: LoraLimits
) -> None:
    """Refuse pickle-only repos and oversized files before downloading anything."""
    top_level = [f for f in sizes if "/" not in f]
    if WEIGHTS_FILE not in top_level:
        refuse_pickles(top_level, where=f"{repo_id}@{revision}")
        raise HubNotFoundError(
            f"{repo_id}@{revision} has no {WEIGHTS_FILE} (files: {sorted(top_level)[:12]!r}); "
            "is it a PEFT LoRA adapter repo, saved with safe_serialization=True?"
        )
    weights = sizes.get(WEIGHTS_FILE) or 0
    if weights > limits.max_weights_bytes:
        raise UnsafeAdapterError(
            f"{repo_id}@{revision}: {WEIGHTS_FILE} is {weights} bytes, over the limit of "
            f"{limits.max_weights_bytes}"
        )


def _check_manifest_base(manifest: HubManifest, base: BaseInfo, repo_id: str) -> None:
    if manifest.base.fingerprint != base.fingerprint:
        raise IncompatibleAdapterError(
            f"{repo_id} holds {manifest.name}@{manifest.number}, trained on base "
            f"{manifest.base.name!r} ({manifest.base.fingerprint[:12]}…), but the current base is "
            f"{base.name!r} ({base.fingerprint[:12]}…); run `adapterhub init --base "
            f"{manifest.base.name}` in another hub home to use it"
        )
    if manifest.base.template_hash != base.template_hash:
        raise IncompatibleAdapterError(
            f"{repo_id} was trained with chat template {manifest.base.template_hash[:12]}… but the "
            f"current base renders with {base.template_hash[:12]}…; it would answer in the wrong "
            "format, so it is refused"
        )


def _warn_if_other_base(config_bytes: bytes, card: bytes, base: BaseInfo, repo_id: str) -> None:
    """Warn when the adapter's config or card names a base other than the current one."""
    named: list[str] = []
    config = json.loads(config_bytes)
    if config.get("base_model_name_or_path"):
        named.append(str(config["base_model_name_or_path"]))
    named += _card_base_models(card)
    mine = _short(base.name)
    others = sorted({n for n in named if _short(n) != mine})
    if others:
        warnings.warn(
            f"{repo_id} names base {others[0]!r} but the current base is {base.name!r}; its shapes "
            "fit, so it was pulled, but check that it behaves as expected",
            BaseMismatchWarning,
            stacklevel=3,
        )


def _card_base_models(card: bytes) -> list[str]:
    import yaml

    match = re.match(rb"^---\s*\n(.*?)\n---\s*(\n|$)", card, re.DOTALL)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return []
    value = meta.get("base_model") if isinstance(meta, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _name_from_repo(repo_id: str) -> str:
    candidate = repo_id.rsplit("/", 1)[-1]
    try:
        return validate_name(candidate, field="adapter name")
    except ConfigError:
        raise ConfigError(
            f"repo name {candidate!r} is not a valid adapter name; pass --name NAME"
        ) from None


class _Downloader:
    """Downloads files of one commit into a folder, reporting bytes and checking sizes/hashes."""

    def __init__(
        self,
        api: Any,
        repo_id: str,
        commit: str,
        folder: Path,
        progress: ProgressCallback,
        what: str,
    ) -> None:
        self.api, self.repo_id, self.commit, self.folder = api, repo_id, commit, folder
        self.progress, self.what = progress, what
        self.done = 0  # bytes downloaded so far, over all files
        self.total = 0  # bytes expected over all files, once known

    def __call__(self, filename: str, *, expected_sha256: str | None = None) -> bytes:
        with _hub_errors(self.what, repo_id=self.repo_id, revision=self.commit):
            path = self.api.hf_hub_download(
                self.repo_id,
                filename,
                revision=self.commit,
                local_dir=self.folder,
                tqdm_class=_byte_reporter(self, filename),
            )
        data = Path(path).read_bytes()
        if filename != WEIGHTS_FILE and len(data) > MAX_SMALL_FILE_BYTES:
            raise UnsafeAdapterError(
                f"{self.repo_id}: {filename} is {len(data)} bytes, over {MAX_SMALL_FILE_BYTES}"
            )
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise CorruptBlobError(
                f"{self.repo_id}@{self.commit[:12]}: {filename} does not match the sha256 in "
                f"{MANIFEST_FILE}; the repo was edited after the push. Pull another revision or "
                "push the version again"
            )
        return data


def _byte_reporter(downloader: _Downloader, filename: str) -> type:
    """A tqdm-shaped class that forwards a download's bytes to the progress callback.

    huggingface_hub builds its per-file bar from ``tqdm_class(total=..., initial=..., desc=...)``
    and calls ``update(n)``; anything that is not its own tqdm subclass gets exactly that.
    """

    class _Reporter:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __enter__(self) -> _Reporter:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int = 1) -> None:
            downloader.done += n
            downloader.progress(
                ProgressEvent(
                    "step", step=downloader.done, total_steps=downloader.total, message=filename
                )
            )

        def close(self) -> None:
            return None

    return _Reporter
