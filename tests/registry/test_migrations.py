"""Schema migrations: a home written by the code before migrations upgrades in place and keeps
every version readable; a schema newer than this code is refused, saying what to do.

``_MAIN_SCHEMA`` is, verbatim, the SQL that ``Registry.__init__`` ran on main before this change
(committed here as text, not as a binary database), so the legacy home below is built exactly as
that code built it: the same statements, the same PRAGMAs, the same rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapterhub.errors import RegistrySchemaError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Registry, schema

_MAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    recipe TEXT NOT NULL DEFAULT '{}',
    dataset_fingerprint TEXT,
    parent TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, number)
);
CREATE TABLE IF NOT EXISTS files (
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, number, filename),
    FOREIGN KEY (name, number) REFERENCES versions (name, number) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    number INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, number) REFERENCES versions (name, number) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    number INTEGER NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    stderr REAL,
    samples INTEGER,
    harness TEXT NOT NULL,
    created_at REAL NOT NULL,
    setup TEXT NOT NULL DEFAULT '{}',
    FOREIGN KEY (name, number) REFERENCES versions (name, number) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS gates (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    position INTEGER NOT NULL,
    rule TEXT NOT NULL,
    PRIMARY KEY (name, alias, position)
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (sha256);
CREATE INDEX IF NOT EXISTS evaluations_by_version ON evaluations (name, number, task, metric);
CREATE INDEX IF NOT EXISTS versions_by_parent ON versions (parent);
"""


def _legacy_home(home: Path, lora_dir: Path) -> dict[str, bytes]:
    """A home as main's code left it: two versions of ``pirate`` (the second with a parent, an
    evaluation and a gated alias), one of ``json``; blobs in ``blobs/sha256/ab/cdef…``."""
    files = {CONFIG_FILE: (lora_dir / CONFIG_FILE).read_bytes(),
             WEIGHTS_FILE: (lora_dir / WEIGHTS_FILE).read_bytes(),
             "step_log.jsonl": b'{"kind": "step", "step": 1, "loss": 1.5}\n'}
    for data in files.values():
        digest = hashlib.sha256(data).hexdigest()
        blob = home / "blobs" / "sha256" / digest[:2] / digest[2:]
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
    with closing(sqlite3.connect(home / "registry.db", isolation_level=None)) as db:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            db.execute(f"PRAGMA {pragma}")
        db.executescript(_MAIN_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        for name, number, parent in (("pirate", 1, None), ("pirate", 2, "pirate@1"), ("json", 1, None)):
            db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (name, number, 1_700_000_000.0 + number, "sft", "fp", "th",
                        json.dumps({"method": "sft"}), "ds", parent, json.dumps({"train_loss": 1.25}),
                        json.dumps({})))
            db.executemany("INSERT INTO files VALUES (?,?,?,?,?)",
                           [(name, number, fn, hashlib.sha256(data).hexdigest(), len(data))
                            for fn, data in files.items()])
        db.execute("INSERT INTO aliases VALUES ('pirate', 'prod', 2)")
        db.execute("INSERT INTO gates VALUES ('pirate', 'prod', 0, 'capitals:acc>=0.5')")
        db.execute("INSERT INTO evaluations (name, number, task, metric, value, stderr, samples, harness, "
                   "created_at, setup) VALUES ('pirate', 2, 'capitals', 'acc', 0.75, 0.1, 12, 'lm-eval 0.4.13', "
                   "1700000100.0, '{}')")
        db.execute("COMMIT")
    return files


@pytest.mark.parametrize("home", ["sqlite"], indirect=True)
def test_a_home_made_before_migrations_upgrades_in_place(home: Path, lora_dir: Path) -> None:
    files = _legacy_home(home, lora_dir)
    registry = Registry(home)
    with closing(sqlite3.connect(home / "registry.db")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(schema.HEAD,)]
    assert [v.ref for v in registry.list_versions()] == ["json@1", "pirate@1", "pirate@2"]
    for version in registry.list_versions():
        for filename, data in files.items():
            assert registry.read_file(version, filename) == data  # checksums verified
        assert registry.load_adapter(version).r == 4
    prod = registry.resolve("pirate:prod")
    assert (prod.ref, prod.parent, prod.metrics, prod.recipe) == ("pirate@2", "pirate@1", {"train_loss": 1.25},
                                                                 {"method": "sft"})
    assert [v.ref for v in registry.lineage("pirate:prod")] == ["pirate@2", "pirate@1"]
    assert [(e.subject, e.value) for e in registry.evaluations("pirate@2")] == [("capitals:acc", 0.75)]
    assert [str(g) for g in registry.gates("pirate", "prod")] == ["capitals:acc>=0.5"]
    new = registry.register("pirate", {CONFIG_FILE: files[CONFIG_FILE], WEIGHTS_FILE: files[WEIGHTS_FILE]},
                            base_fingerprint="fp", template_hash="th", method="sft")
    assert new.ref == "pirate@3"
    registry.close()
    assert [v.ref for v in Registry(home).list_versions("pirate")] == ["pirate@1", "pirate@2", "pirate@3"]


@pytest.mark.parametrize("home", ["sqlite", "postgresql"], indirect=True)
def test_the_baseline_is_the_schema_of_main(home: Path, lora_dir: Path, backend: str) -> None:
    """What the migrations build (PostgreSQL) and what main built (SQLite, stamped) both match
    the tables the code uses, by Alembic's own comparison."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    if backend == "sqlite":
        _legacy_home(home, lora_dir)
    registry = Registry(home)
    with registry._engine.connect() as db:
        differences = compare_metadata(MigrationContext.configure(db), schema.metadata)
    # SQLite reports an INTEGER PRIMARY KEY (the rowid, never NULL) as nullable
    rowid = [("modify_nullable", None, "evaluations", "id")]
    differences = [d for d in differences if not (backend == "sqlite" and [d[0][:4]] == rowid)]
    assert differences == []
    assert schema.known_revisions()[-1] == schema.HEAD  # HEAD follows the newest script


@pytest.mark.parametrize("home", ["sqlite", "postgresql"], indirect=True)
def test_a_newer_schema_is_refused_with_what_to_do(home: Path) -> None:
    registry = Registry(home)
    registry.register("a", {CONFIG_FILE: b"{}", WEIGHTS_FILE: b"x"}, base_fingerprint="f",
                      template_hash="t", method="sft")
    engine = create_engine(registry.location.url)
    with engine.begin() as db:
        db.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    registry.close()
    with pytest.raises(RegistrySchemaError, match=r"revision '0042_from_the_future', which this adapterhub "
                       r"does not know \(it knows up to '0001'\): a newer adapterhub wrote it\. "
                       r"Upgrade adapterhub") as info:
        Registry(home)
    assert info.value.revision == "0042_from_the_future"
    with engine.begin() as db:  # refused without touching anything
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0042_from_the_future"
        assert db.execute(text("SELECT count(*) FROM versions")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("home", ["sqlite", "postgresql"], indirect=True)
def test_processes_opening_a_new_registry_at_once_migrate_it_once(home: Path) -> None:
    script = "import sys; from adapterhub.registry import Registry; Registry(sys.argv[1]).names()"
    openers = [subprocess.Popen([sys.executable, "-c", script, str(home)], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in openers]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    registry = Registry(home)
    with registry._engine.connect() as db:
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [schema.HEAD]
    started = time.perf_counter()
    Registry(home).names()  # a current database costs no migration
    assert time.perf_counter() - started < 5
