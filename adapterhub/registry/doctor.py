"""``adapterhub doctor``: check a whole registry and repair what is safe to repair.

Checks, on every backend: every version's files against their recorded sha256 (through the blob
store, local or object storage); blobs nothing refers to; ``.tmp-*`` leftovers of interrupted
writes; rows that point at nothing (a file or alias without its version). On SQLite also its own
integrity check and a write-ahead log whose size is not a whole number of frames (it was
truncated, so committed transactions at its end may be lost). Repair removes leftovers and
unreferenced blobs and checkpoints SQLite's WAL. It never deletes a version: a version with a
corrupt file is reported, and the user decides.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from adapterhub.errors import CorruptBlobError
from adapterhub.registry.location import RegistryLocation
from adapterhub.registry.schema import aliases, evaluations, files, versions
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


def diagnose(home: Path | str | Registry | None = None, *, repair: bool = False, url: str | None = None,
             blobs: str | None = None) -> DoctorReport:
    """Check a registry (a hub home's, or the one ``url``/``blobs`` or the environment name, or
    an open :class:`Registry`); with ``repair`` remove leftovers and unreferenced blobs."""
    report = DoctorReport()
    if isinstance(home, Registry):
        location = home.location
    else:
        location = RegistryLocation.resolve(home, url=url, blobs=blobs)
    # Look at the log before anything opens the database: the last connection to close
    # checkpoints it, and the evidence of truncation would be gone.
    wal_problem = check_wal(location.db_path) if location.db_path is not None else None
    registry = home if isinstance(home, Registry) else Registry(location.home, url=location.url,
                                                                  blobs=location.blobs)
    if wal_problem:
        report.database.append(wal_problem)
    if registry.db_path is not None:
        with closing(sqlite3.connect(registry.db_path)) as db:
            result = [r[0] for r in db.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                report.database.extend(f"integrity: {r}" for r in result)
    report.database.extend(_orphan_rows(registry))

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
    report.temp_files = list(registry.blobs.temp_files())

    if repair:
        for key in report.temp_files:
            registry.blobs.remove_temp(key)
        if report.temp_files:
            report.repaired.append(f"removed {len(report.temp_files)} temporary files")
        for digest in report.dangling_blobs:
            registry.blobs.delete(digest)
        if report.dangling_blobs:
            report.repaired.append(f"removed {len(report.dangling_blobs)} unreferenced blobs")
        if wal_problem and registry.db_path is not None:
            try:
                with closing(sqlite3.connect(registry.db_path, timeout=60)) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as e:
                report.database.append(f"could not checkpoint the write-ahead log: {e}; free space "
                                       "and run `adapterhub doctor --repair` again")
            else:
                report.repaired.append("checkpointed the write-ahead log (its whole frames are kept)")
                report.database.remove(wal_problem)
                report.database.append(f"{wal_problem} (now checkpointed; check recent versions)")
    return report


def _orphan_rows(registry: Registry) -> list[str]:
    """Rows whose version is gone (the foreign keys forbid them; a database that did not
    enforce them, or was edited by hand, may have some)."""
    problems = []
    with registry._transaction() as db:
        for table in (files, aliases, evaluations):
            orphans = db.execute(
                select(table.c.name, table.c.number).distinct().where(
                    ~select(versions.c.number).where(versions.c.name == table.c.name,
                                                     versions.c.number == table.c.number).exists())
            ).all()
            problems += [f"{table.name}: rows for {n}@{k}, which does not exist" for n, k in orphans]
    return problems
