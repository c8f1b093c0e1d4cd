"""Push a registered version to the Hub: one version, one commit, one tag.

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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapterhub.core.progress import ProgressCallback, ProgressEvent, no_progress
from adapterhub.errors import HubError
from adapterhub.hfhub.card import HUB_ID, README_FILE, render_model_card
from adapterhub.hfhub.manifest import (
    MANIFEST_FILE,
    HubManifest,
    ManifestBase,
    ManifestEvaluation,
    read_manifest,
)
from adapterhub.hfhub.settings import HubSettings, hub_errors
from adapterhub.models.adapters import CONFIG_FILE
from adapterhub.models.base import BaseInfo
from adapterhub.registry import Registry, Version

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


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    repo_id: str
    branch: str
    tag: str
    commit: str  # the commit sha the tag points at
    url: str
    created: bool  # False when the tag already held this version (a no-op)


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

    with hub_errors(f"push {version.ref} to {repo_id}", repo_id=repo_id, revision=branch):
        api.create_repo(repo_id, private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id)
        tags = {t.name: t.target_commit for t in refs.tags}
        if tag in tags:
            existing = read_manifest(api, repo_id, tags[tag])
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
        previous = read_manifest(api, repo_id, heads[branch])
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
