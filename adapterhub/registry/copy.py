"""``adapterhub registry copy``: every version, alias, gate, evaluation and blob of one registry
into another, e.g. from a laptop's home to the team's PostgreSQL + S3.

Design choices:

* **Versions keep their identity.** A version arrives with its number, time, lineage, metadata and
  evaluations as they were (:meth:`Registry.restore`); refs that worked on the source work on the
  destination.
* **Checked both ways.** A blob is read from the source through its checksum and written to the
  destination through the store's verified path (temporary key, read back, then published).
* **Resumable and idempotent.** Each version is published in its own transaction after its blobs,
  so an interrupted copy leaves whole versions and at worst unreferenced blobs; running it again
  skips what is there (a version with the same files and metadata; blobs already stored) and
  adds only the evaluations the destination lacks. Aliases and their gates are set to the
  source's last.
* **Never overwrites.** A destination version that differs from the source's under the same
  number is a conflict: it is left alone, reported, and the copy fails after copying the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterhub.core.progress import ProgressCallback, ProgressEvent, no_progress
from adapterhub.errors import RegistryError, VersionExistsError
from adapterhub.registry.store import Evaluation, Registry, Version

_IDENTITY = ("files", "created_at", "method", "base_fingerprint", "template_hash", "recipe",
             "dataset_fingerprint", "parent", "metrics", "source")


@dataclass
class CopyReport:
    """What one copy did."""

    copied: list[str] = field(default_factory=list)  # refs published on the destination
    present: list[str] = field(default_factory=list)  # refs it already had, the same
    conflicts: list[str] = field(default_factory=list)  # refs it has, different
    blobs_copied: int = 0
    bytes_copied: int = 0
    evaluations_copied: int = 0
    aliases: list[str] = field(default_factory=list)  # "name:alias -> name@N"

    def lines(self) -> list[str]:
        out = [f"copied {len(self.copied)} versions ({self.blobs_copied} blobs, "
               f"{self.bytes_copied:,} bytes), {len(self.present)} already there",
               f"{self.evaluations_copied} evaluations copied, {len(self.aliases)} aliases set"]
        out += [f"conflict: {c}" for c in self.conflicts]
        return out


def copy_registry(src: Registry, dst: Registry, *, progress: ProgressCallback | None = None) -> CopyReport:
    """Copy everything in ``src`` into ``dst`` (see the module docstring).

    Raises:
        CorruptBlobError: a source blob does not match its checksum (nothing of that version is
            published; the versions before it are).
        RegistryError: some destination versions differ from the source's (listed); the rest
            was copied.
    """
    emit = progress or no_progress
    report = CopyReport()
    versions = src.list_versions()
    emit(ProgressEvent("start", total_steps=len(versions), message=f"copying {len(versions)} versions"))
    for step, version in enumerate(versions, start=1):
        _copy_version(src, dst, version, report)
        emit(ProgressEvent("step", step=step, total_steps=len(versions), message=version.ref))
    conflicted = set(report.conflicts)
    for name, alias, number, gates in src.aliases():
        if f"{name}@{number}" in conflicted:
            continue
        dst.restore_alias(name, alias, number, gates)
        report.aliases.append(f"{name}:{alias} -> {name}@{number}")
    if report.conflicts:
        raise RegistryError(
            f"{len(report.conflicts)} version(s) exist on the destination with other contents: "
            f"{report.conflicts!r}; they were left alone (versions are immutable) and the rest was "
            "copied. Delete them on the destination, or copy into another registry"
        )
    emit(ProgressEvent("done", step=len(versions), total_steps=len(versions), message="; ".join(report.lines())))
    return report


def _copy_version(src: Registry, dst: Registry, version: Version, report: CopyReport) -> None:
    sizes = src.sizes(version)
    existing = _existing(dst, version)
    if existing is not None and not _same(existing, version):
        report.conflicts.append(version.ref)
        return
    for filename, digest in sorted(version.files.items()):
        if not dst.blobs.exists(digest, sizes[filename]):
            data = src.read_file(version, filename)  # checked against its sha256
            dst.blobs.put(data)  # temporary key, read back and checked, then published
            report.blobs_copied += 1
            report.bytes_copied += len(data)
    evaluations = src.evaluations(version)
    if existing is None:
        try:
            dst.restore(version, sizes, evaluations=evaluations)
        except VersionExistsError:  # another copy published it a moment ago
            existing = _existing(dst, version)
            if existing is None or not _same(existing, version):
                report.conflicts.append(version.ref)
                return
        else:
            report.copied.append(version.ref)
            report.evaluations_copied += len(evaluations)
            return
    have = {_evaluation_key(e) for e in dst.evaluations(existing)}
    missing = [e for e in evaluations if _evaluation_key(e) not in have]
    if missing:
        dst.record_evaluations(missing)
        report.evaluations_copied += len(missing)
    report.present.append(version.ref)


def _existing(dst: Registry, version: Version) -> Version | None:
    return dst.lookup(version.name, version.number)


def _same(a: Version, b: Version) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _IDENTITY)


def _evaluation_key(e: Evaluation) -> tuple[object, ...]:
    return (e.task, e.metric, e.value, e.stderr, e.samples, e.harness, e.created_at,
            tuple(sorted((k, str(v)) for k, v in e.setup.items())))
