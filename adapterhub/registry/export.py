"""Registry versions (and mixes of them) as PEFT folders under names that are never reused.

An engine that loads adapters by name (vLLM's ``/v1/load_lora_adapter``, its resolver plugins)
keeps whatever it loaded under a name, prefix cache included. So the name must say which weights
it is: a version is served as ``<name>.v<N>-<digest>``, where the digest is a hash of its files'
sha256s, and a mix as ``mix-<hash>`` of its parts' digests and weights. Moving an alias makes a
ref resolve to another version, hence another name, at once; a name never comes to mean other
weights, so no replica can answer from stale weights or a stale prefix cache.

Design choices:

* **Names are plain adapter names** (letters, digits, ``.``, ``-``; at most 64 characters) so
  that any replica accepts them, another ``adapterhub serve`` too (its registry names allow no
  ``@`` or ``:``). A long adapter name is cut; the digest keeps the name unique.
* **Exports are checked and atomic.** Files come from :meth:`Registry.export` (every blob
  checked against its sha256), are written into a temporary folder beside the target and
  renamed into place, so a replica never reads half a folder. An existing folder is reused only
  when its files still hash to the version's recorded sha256s; of two writers racing for one
  name the first folder stays (a replica may be reading it) and the second is dropped.
* **The folder is the contract.** A replica reads ``<cache>/<served name>/`` (PEFT layout:
  ``adapter_config.json``, ``adapter_model.safetensors``); remote replicas need that path on a
  shared disk, or the resolver plugin, which exports on the replica's machine itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterhub.core.refs import MAX_NAME_LENGTH
from adapterhub.models.adapters import CONFIG_FILE
from adapterhub.models.mixing import mix_loras, refuse_over_rank, save_lora_folder
from adapterhub.registry.store import Registry, Version

DIGEST_CHARS = 12


@dataclass(frozen=True)
class Exported:
    """A PEFT folder a replica can load, and the name to load it under.

    Attributes:
        name: the served name (never reused for other weights).
        path: the folder.
        label: what clients see (``X-Adapter-Version``, metrics): ``pirate@3`` or a mix's
            ``0.5*a@1+0.5*b@2``.
        rank: the adapter's LoRA rank.
        is_mix: a derived adapter (its label holds client-chosen weights, so metrics say ``mix``).
    """

    name: str
    path: Path
    label: str
    rank: int
    is_mix: bool = False

    @property
    def metric_label(self) -> str:
        """The label for metrics: the version ref, or ``mix`` (bounded by what is registered)."""
        return "mix" if self.is_mix else self.label


def version_digest(version: Version) -> str:
    """A hash of the version's files (names and sha256s): equal only for equal weights."""
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(version.files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def served_name(version: Version) -> str:
    """``<name>.v<N>-<digest>``: the name a replica serves ``version`` under."""
    suffix = f".v{version.number}-{version_digest(version)[:DIGEST_CHARS]}"
    # cut to fit, and no "." before the suffix's (a name may end in "."; ".." is never a name)
    return version.name[: MAX_NAME_LENGTH - len(suffix)].rstrip(".") + suffix


def mix_label(versions: Sequence[Version], weights: Sequence[float]) -> tuple[dict[str, float], str]:
    """Weights per version ref (a ref given twice adds up, as in the engine) and the label."""
    merged: dict[str, float] = {}
    for version, weight in zip(versions, weights, strict=True):
        merged[version.ref] = merged.get(version.ref, 0.0) + float(weight)
    return merged, "+".join(f"{w:g}*{ref}" for ref, w in merged.items())


def mix_name(versions: Sequence[Version], weights: Sequence[float]) -> str:
    """``mix-<hash>`` of the parts' digests and weights, in order."""
    parts = [[version_digest(v), float(w)] for v, w in zip(versions, weights, strict=True)]
    return "mix-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def export_version(registry: Registry, version: Version, cache: Path | str) -> Exported:
    """``version`` as a checked PEFT folder under ``cache`` (reused when already there).

    Raises:
        CorruptBlobError: a stored file no longer matches its sha256.
    """
    name = served_name(version)
    folder = Path(cache) / name
    if not _matches(folder, version):
        tmp = _scratch(folder)
        try:
            registry.export(version, tmp)
            _publish(tmp, folder, lambda: _matches(folder, version))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Exported(name, folder, version.ref, _rank(folder))


def export_mix(
    registry: Registry, versions: Sequence[Version], weights: Sequence[float], cache: Path | str,
    *, max_rank: int | None = None,
) -> Exported:
    """The mix as one derived adapter (:func:`adapterhub.models.mixing.mix_loras`), exported under
    ``mix-<hash>`` (reused when already there).

    Raises:
        IncompatibleAdapterError: the mix's rank is over ``max_rank``, or a part cannot be mixed.
    """
    merged, label = mix_label(versions, weights)
    by_ref = {v.ref: v for v in versions}
    parts = [by_ref[ref] for ref in merged]
    factors = list(merged.values())
    name = mix_name(parts, factors)
    folder = Path(cache) / name
    if not (folder / CONFIG_FILE).is_file():
        adapters = [registry.load_adapter(v) for v in parts]  # checksums verified
        mixed = mix_loras(adapters, factors, max_rank=max_rank, label=f"mix {label!r}")
        tmp = _scratch(folder)
        try:
            save_lora_folder(mixed, tmp)
            _publish(tmp, folder, lambda: (folder / CONFIG_FILE).is_file())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rank = _rank(folder)
    refuse_over_rank(f"mix {label!r}", rank, max_rank)  # a mix cached for a replica of a higher limit
    return Exported(name, folder, label, rank, is_mix=True)


def _matches(folder: Path, version: Version) -> bool:
    """Whether ``folder`` holds exactly the version's files, by sha256."""
    try:
        return all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
                   for name, sha in version.files.items())
    except OSError:
        return False


def _scratch(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"


def _publish(tmp: Path, folder: Path, is_good: Callable[[], bool]) -> None:
    """Move a finished folder into place. A folder already there that ``is_good`` (another
    writer's, with the same content) stays, since a replica may be reading it; a stale one is
    swapped out by two renames."""
    for path in tmp.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    try:
        os.rename(tmp, folder)  # fails when the folder exists and is not empty
        return
    except OSError:
        if not folder.exists():
            raise
    if is_good():
        return
    old = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _rank(folder: Path) -> int:
    return int(json.loads((folder / CONFIG_FILE).read_text())["r"])
