"""Pull a PEFT LoRA repo from the Hub and register it as a new version, trusting nothing.

Design choices:

* **One commit.** The revision is resolved to a commit sha first and every file is downloaded at
  that sha, so a branch moving mid-pull cannot mix two commits.
* **Checked before it is registered.** Safetensors only: a repo whose weights are pickles is
  refused with the reason. The base check uses the manifest's fingerprint when there is one;
  otherwise shapes and target modules against the current base, with a
  :class:`BaseMismatchWarning` when the config or card names another base. File hashes are
  checked against the manifest.
* **Provenance.** The registered version's ``source`` names the endpoint, repo, revision and
  commit, and pulling a commit already registered returns that version instead of a duplicate.
  Byte progress of downloads goes to the caller's
  :data:`~adapterhub.core.progress.ProgressCallback`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.core.progress import ProgressCallback, ProgressEvent, no_progress
from adapterhub.core.refs import validate_name
from adapterhub.errors import (
    BaseMismatchWarning,
    ConfigError,
    CorruptBlobError,
    HubNotFoundError,
    IncompatibleAdapterError,
    UnsafeAdapterError,
)
from adapterhub.hfhub.card import README_FILE
from adapterhub.hfhub.manifest import (
    MANIFEST_FILE,
    MAX_SMALL_FILE_BYTES,
    HubManifest,
    parse_manifest,
)
from adapterhub.hfhub.settings import HubSettings, hub_errors
from adapterhub.models.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraLimits,
    check_fits,
    load_lora_bytes,
    refuse_pickles,
)
from adapterhub.models.base import BaseInfo, load_skeleton
from adapterhub.registry import Registry, Version


@dataclass(frozen=True)
class PullResult:
    """What a pull did."""

    version: Version
    repo_id: str
    revision: str
    commit: str
    created: bool  # False when this commit was already registered


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
    with hub_errors(what, repo_id=repo_id, revision=wanted):
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
            manifest = parse_manifest(download(MANIFEST_FILE), f"{repo_id}@{commit[:12]}")
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
    mine = _bare_name(base.name)
    others = sorted({n for n in named if _bare_name(n) != mine})
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


def _bare_name(name: str) -> str:
    """The last path part, lowercased: ``org/SmolLM2-135M`` and ``smollm2-135m`` compare equal."""
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
        with hub_errors(self.what, repo_id=self.repo_id, revision=self.commit):
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
