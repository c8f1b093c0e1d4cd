"""``adapterhub doctor``: check a whole registry and repair what is safe to repair.

Checks: SQLite's own integrity check; a write-ahead log whose size is not a whole number of
frames (it was truncated, so committed transactions at its end may be lost); every version's
files against their recorded sha256; blobs nothing refers to; ``.tmp-*`` leftovers of
interrupted writes. Repair removes leftovers and unreferenced blobs and checkpoints the WAL. It
never deletes a version: a version with a corrupt file is reported, and the user decides.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from adapterhub.errors import CorruptBlobError
from adapterhub.registry.store import Registry

_WAL_HEADER = 32
_FRAME_HEADER = 24


@dataclass
class DoctorReport:
    """What a check found; ``repaired`` lists what ``repair=True`` fixed."""

    versions_checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # "name@N/file: reason"
    dangling_blobs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    database: list[str] = field(default_factory=list)  # integrity / WAL problems
    repaired: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No problem is left (repaired ones do not count)."""
        return not (self.corrupt or self.database) and (
            not (self.dangling_blobs or self.temp_files) or bool(self.repaired)
        )

    def lines(self) -> list[str]:
        out = [f"checked {self.versions_checked} versions"]
        out += [f"corrupt: {c}" for c in self.corrupt]
        out += [f"database: {d}" for d in self.database]
        if self.dangling_blobs:
            out.append(f"{len(self.dangling_blobs)} unreferenced blobs")
        if self.temp_files:
            out.append(f"{len(self.temp_files)} leftover temporary files")
        out += [f"repaired: {r}" for r in self.repaired]
        out.append("healthy" if self.healthy else "problems found")
        return out


def check_wal(db_path: Path) -> str | None:
    """Say what is wrong with the write-ahead log, if anything."""
    wal = db_path.with_name(db_path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return None
    size = wal.stat().st_size
    with open(wal, "rb") as f:
        header = f.read(_WAL_HEADER)
    if len(header) < _WAL_HEADER:
        return f"write-ahead log {wal.name} is truncated to {size} bytes (shorter than its header)"
    page_size = int.from_bytes(header[8:12], "big")
    frame = page_size + _FRAME_HEADER
    if page_size < 512 or (size - _WAL_HEADER) % frame:
        return (
            f"write-ahead log {wal.name} is {size} bytes, not a whole number of {frame}-byte frames: "
            "it was truncated, and the transactions in its last frames are lost"
        )
    return None


def diagnose(home: Path | str, *, repair: bool = False) -> DoctorReport:
    """Check the registry in ``home``; with ``repair`` remove leftovers and unreferenced blobs."""
    report = DoctorReport()
    # Look at the log before anything opens the database: the last connection to close
    # checkpoints it, and the evidence of truncation would be gone.
    wal_problem = check_wal(Path(home) / "registry.db")
    registry = Registry(home)
    if wal_problem:
        report.database.append(wal_problem)
    with sqlite3.connect(registry.db_path) as db:
        result = [r[0] for r in db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            report.database.extend(f"integrity: {r}" for r in result)

    referenced: set[str] = set()
    for version in registry.list_versions():
        report.versions_checked += 1
        for filename, digest in version.files.items():
            referenced.add(digest)
            try:
                registry.blobs.get(digest, label=f"{version.ref}/{filename}")
            except CorruptBlobError as e:
                report.corrupt.append(f"{version.ref}/{filename}: {e}")
    report.dangling_blobs = sorted(set(registry.blobs.digests()) - referenced)
    report.temp_files = [str(p) for p in registry.blobs.temp_files()]

    if repair:
        for path in report.temp_files:
            Path(path).unlink(missing_ok=True)
        if report.temp_files:
            report.repaired.append(f"removed {len(report.temp_files)} temporary files")
        for digest in report.dangling_blobs:
            registry.blobs.delete(digest)
        if report.dangling_blobs:
            report.repaired.append(f"removed {len(report.dangling_blobs)} unreferenced blobs")
        if wal_problem:
            with sqlite3.connect(registry.db_path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            report.repaired.append("checkpointed the write-ahead log (its whole frames are kept)")
            report.database.remove(wal_problem)
            report.database.append(f"{wal_problem} (now checkpointed; check recent versions)")
    return report
