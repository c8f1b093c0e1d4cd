"""The adapter registry: immutable versions, mutable aliases, lineage, metrics and evaluations.

Metadata lives in SQLite (WAL mode, so a trainer can write while a server reads); files live in a
content-addressed :class:`BlobStore`. Publishing a version is two steps: blobs are written and
fsynced first, then one ``BEGIN IMMEDIATE`` transaction picks the next number and inserts the rows.
A process killed at any point therefore leaves either no version or a whole one; the worst
leftover is an unreferenced blob. ``BEGIN IMMEDIATE`` also serialises writers across processes,
so two processes registering the same name at once get distinct numbers.

A version never changes once published; what is learnt about it later is recorded next to it:
evaluations (:class:`Evaluation`, one row per task and metric, newest wins) and, per alias, the
promotion gates (:mod:`.gates`) checked in the same transaction that moves the alias.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import (
    AdapterNotFoundError,
    ConfigError,
    GateError,
    IncompatibleAdapterError,
    RegistryError,
    VersionExistsError,
)
from adapterhub.models.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraAdapter,
    LoraLimits,
    load_lora_bytes,
)
from adapterhub.registry.blobs import BlobStore
from adapterhub.registry.gates import Gate, GateCheck, parse_gates

_SCHEMA = """
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
_SAFE_FILENAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class Version:
    """One immutable registered build of an adapter."""

    name: str
    number: int
    created_at: float
    method: str
    base_fingerprint: str
    template_hash: str
    files: Mapping[str, str]  # filename -> sha256
    recipe: Mapping[str, Any] = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    parent: str | None = None  # a ref "name@N" of the version this one started from
    metrics: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"hub": repo, "commit": sha}
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ``ref`` and every field (mappings as dicts, aliases as a list)."""
        data: dict[str, Any] = {"ref": self.ref}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
        return data


_VERSION_FIELDS = frozenset(f.name for f in fields(Version))
_JSON_COLUMNS = ("recipe", "metrics", "source")  # stored as JSON text in the versions table


@dataclass(frozen=True)
class Evaluation:
    """One measured number of a version: a task's metric, as the evaluation harness reported it."""

    name: str
    number: int
    task: str  # the harness's task name, e.g. "adapterhub_capitals"
    metric: str  # e.g. "acc", or "exact_match,strict-match" for a filtered metric
    value: float
    stderr: float | None = None
    samples: int | None = None  # how many documents were scored
    harness: str = ""  # e.g. "lm-eval 0.4.13"
    created_at: float = 0.0
    setup: Mapping[str, Any] = field(default_factory=dict)  # engine, dtype, limit, task source

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"

    @property
    def subject(self) -> str:
        return f"{self.task}:{self.metric}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "task": self.task, "metric": self.metric, "value": self.value,
            "stderr": self.stderr, "samples": self.samples, "harness": self.harness,
            "created_at": self.created_at, "setup": dict(self.setup),
        }


@contextmanager
def _nothing_registered_on_failure(name: str) -> Iterator[None]:
    """Turn a storage failure (disk full, read-only, I/O) into a RegistryError that says so."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise RegistryError(
            f"could not store a new version of {name!r}: {reason}; nothing was registered and "
            "earlier versions are intact. Free disk space (`adapterhub doctor --repair` removes "
            "leftovers) and try again"
        ) from e


class Registry:
    """Versions and aliases of adapters under one hub home.

    Safe to use from several threads (one connection per call) and several processes.
    """

    def __init__(self, home: Path | str) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "registry.db"
        self.blobs = BlobStore(self.home / "blobs")
        with self._connect() as db:
            db.executescript(_SCHEMA)

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call. SQLite's own failures (disk full, I/O error, locked past
        the timeout) become a ``RegistryError`` that says nothing changed and what to do."""
        try:
            db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
                yield db
            finally:
                db.close()
        except sqlite3.OperationalError as e:
            raise RegistryError(
                f"the registry database {str(self.db_path)!r} failed: {e}; nothing was changed. "
                "If the disk is full, free space (`adapterhub doctor --repair` removes leftovers) "
                "and try again"
            ) from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the database's write lock from its start."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself after some errors (full disk)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _version(self, db: sqlite3.Connection, name: str, number: int) -> Version:
        row = db.execute(
            "SELECT * FROM versions WHERE name=? AND number=?", (name, number)
        ).fetchone()
        if row is None:
            raise AdapterNotFoundError(
                f"adapter {name}@{number} does not exist", ref=f"{name}@{number}"
            )
        files = {
            r["filename"]: r["sha256"]
            for r in db.execute(
                "SELECT filename, sha256 FROM files WHERE name=? AND number=? ORDER BY filename",
                (name, number),
            )
        }
        aliases = tuple(
            r["alias"]
            for r in db.execute(
                "SELECT alias FROM aliases WHERE name=? AND number=? ORDER BY alias", (name, number)
            )
        )
        columns = {key: row[key] for key in _VERSION_FIELDS.intersection(row.keys())}
        columns.update({key: json.loads(row[key]) for key in _JSON_COLUMNS})
        return Version(**columns, files=files, aliases=aliases)

    # ------------------------------------------------------------------ write

    def register(
        self,
        name: str,
        files: Mapping[str, bytes | Path],
        *,
        base_fingerprint: str,
        template_hash: str,
        method: str,
        recipe: Mapping[str, Any] | None = None,
        dataset_fingerprint: str | None = None,
        parent: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        number: int | None = None,
        evaluations: list[Evaluation] | None = None,
    ) -> Version:
        """Publish a new immutable version of ``name`` and return it.

        Args:
            files: filename -> contents (bytes or a path to read). Must include the PEFT pair
                ``adapter_config.json`` and ``adapter_model.safetensors``.
            parent: ref of the version this one was trained from (resolved to ``name@N``).
            number: an explicit version number; the next free one when None.
            evaluations: measured elsewhere (a pulled version's), recorded on the new version in
                the same transaction; their ``name`` and ``number`` are ignored.

        Raises:
            ConfigError: bad name or filenames.
            VersionExistsError: ``number`` is already taken.
            AdapterNotFoundError: ``parent`` does not resolve.
        """
        validate_name(name, field="adapter name")
        bad = [f for f in files if not f or not set(f) <= _SAFE_FILENAME_CHARS or f.startswith(".")]
        if bad:
            raise ConfigError(
                f"file names {bad!r} are not allowed; use letters, digits, '.', '_', '-'"
            )
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if f not in files]
        if missing:
            raise ConfigError(f"a version needs {missing!r}; got {sorted(files)!r}")
        parent_ref = self.resolve(parent).ref if parent else None

        # 1. Blobs first: durable before anything points at them.
        stored: dict[str, tuple[str, int]] = {}
        with _nothing_registered_on_failure(name):
            for filename, content in files.items():
                data = Path(content).read_bytes() if isinstance(content, Path) else bytes(content)
                stored[filename] = (self.blobs.put(data), len(data))

        # 2. One transaction publishes the version.
        with _nothing_registered_on_failure(name), self._write() as db:
            if number is None:
                (latest,) = db.execute(
                    "SELECT COALESCE(MAX(number), 0) FROM versions WHERE name=?", (name,)
                ).fetchone()
                number = latest + 1
            elif db.execute(
                "SELECT 1 FROM versions WHERE name=? AND number=?", (name, number)
            ).fetchone():
                raise VersionExistsError(
                    f"{name}@{number} already exists and versions are immutable; "
                    "register without a number to get the next one"
                )
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    number,
                    time.time(),
                    method,
                    base_fingerprint,
                    template_hash,
                    json.dumps(dict(recipe or {}), sort_keys=True, default=str),
                    dataset_fingerprint,
                    parent_ref,
                    json.dumps(dict(metrics or {}), sort_keys=True, default=str),
                    json.dumps(dict(source or {}), sort_keys=True, default=str),
                ),
            )
            db.executemany(
                "INSERT INTO files VALUES (?,?,?,?,?)",
                [(name, number, fn, digest, size) for fn, (digest, size) in stored.items()],
            )
            self._insert_evaluations(db, [replace(e, name=name, number=number) for e in evaluations or []])
            return self._version(db, name, number)

    def tag(self, ref: str, alias: str, *, gates: list[str] | None = None) -> Version:
        """Point ``name:alias`` at the version ``ref`` resolves to (moving it if it exists).

        An alias with gates moves only to a version that passes every rule, checked in the
        same transaction that moves it (:mod:`.gates`).

        Args:
            gates: rules the alias holds from now on, replacing its old ones (``[]`` removes
                them); None keeps them.

        Raises:
            GateError: a rule fails or lacks its number; the alias and its rules are unchanged.
            ConfigError: a bad alias or rule.
        """
        validate_name(alias, field="alias")
        rules = parse_gates(gates) if gates is not None else None
        version = self.resolve(ref)
        with self._write() as db:
            if rules is not None:
                db.execute("DELETE FROM gates WHERE name=? AND alias=?", (version.name, alias))
                db.executemany(
                    "INSERT INTO gates VALUES (?,?,?,?)",
                    [(version.name, alias, i, str(rule)) for i, rule in enumerate(rules)],
                )
            checks = self._check_gates(db, version, self._gates(db, version.name, alias))
            failed = [c for c in checks if not c.passed]
            if failed:
                lines = "\n".join(f"  - {c}" for c in failed)
                raise GateError(
                    f"{version.name}:{alias} is gated and {version.ref} does not pass "
                    f"{len(failed)} of {len(checks)} rule(s); the alias did not move:\n{lines}",
                    checks=checks,
                )
            db.execute(
                "INSERT INTO aliases VALUES (?,?,?) ON CONFLICT (name, alias) DO UPDATE SET number=excluded.number",
                (version.name, alias, version.number),
            )
            return self._version(db, version.name, version.number)

    def gates(self, name: str, alias: str) -> list[Gate]:
        """The rules alias ``name:alias`` holds (none for an ungated or unknown alias)."""
        with self._connect() as db:
            return self._gates(db, name, alias)

    def check_gates(self, ref: str | Version, gates: list[Gate]) -> list[GateCheck]:
        """How version ``ref`` fares against ``gates``, without moving anything."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        with self._connect() as db:
            return self._check_gates(db, version, gates)

    def _gates(self, db: sqlite3.Connection, name: str, alias: str) -> list[Gate]:
        rows = db.execute(
            "SELECT rule FROM gates WHERE name=? AND alias=? ORDER BY position", (name, alias)
        )
        return [Gate.parse(r["rule"]) for r in rows]

    def _check_gates(
        self, db: sqlite3.Connection, version: Version, gates: list[Gate]
    ) -> list[GateCheck]:
        parent = None
        if version.parent and any(g.relative for g in gates):
            parent = AdapterRef.parse(version.parent)
        checks = []
        for gate in gates:
            value = self._measure(db, version.name, version.number, gate)
            bound: float | None = gate.number
            missing = ""
            if value is None:
                missing = _missing(gate, version.ref)
            if gate.relative:
                if parent is None:
                    missing = missing or (f"{version.ref} has no parent to compare with; "
                                          "give this alias a fixed bound instead")
                else:
                    parent_value = self._measure(db, parent.name, parent.version or 0, gate)
                    bound = None if parent_value is None else parent_value + gate.offset
                    if bound is None:
                        missing = missing or _missing(gate, version.parent or "")
            checks.append(GateCheck(gate, version.ref, value, bound, version.parent, missing))
        return checks

    def _measure(self, db: sqlite3.Connection, name: str, number: int, gate: Gate) -> float | None:
        """The number a rule reads for one version: its newest evaluation, or a training metric."""
        if gate.task is None:
            row = db.execute("SELECT metrics FROM versions WHERE name=? AND number=?", (name, number)).fetchone()
            value = json.loads(row["metrics"]).get(gate.metric) if row else None
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        row = db.execute(
            "SELECT value FROM evaluations WHERE name=? AND number=? AND task=? AND metric=? "
            "ORDER BY created_at DESC, id DESC LIMIT 1",
            (name, number, gate.task, gate.metric),
        ).fetchone()
        return None if row is None else float(row["value"])

    # ------------------------------------------------------------------ evaluations

    def record_evaluations(self, evaluations: list[Evaluation]) -> list[Evaluation]:
        """Store evaluations of existing versions, all or none.

        Raises:
            AdapterNotFoundError: one names a version that does not exist.
            ConfigError: a value is not a finite number.
        """
        with self._write() as db:
            for e in evaluations:
                self._version(db, e.name, e.number)  # raises AdapterNotFoundError
            self._insert_evaluations(db, evaluations)
        return self.evaluations(evaluations[0].ref) if evaluations else []

    def _insert_evaluations(self, db: sqlite3.Connection, evaluations: list[Evaluation]) -> None:
        bad = [f"{e.subject}={e.value!r}" for e in evaluations if not _finite(e.value)]
        if bad:
            raise ConfigError(f"evaluation values {bad} are not finite numbers; nothing was recorded")
        db.executemany(
            "INSERT INTO evaluations (name, number, task, metric, value, stderr, samples, "
            "harness, created_at, setup) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (e.name, e.number, e.task, e.metric, float(e.value),
                 e.stderr if e.stderr is not None and _finite(e.stderr) else None, e.samples,
                 e.harness, e.created_at or time.time(), json.dumps(dict(e.setup), sort_keys=True, default=str))
                for e in evaluations
            ],
        )

    def evaluations(self, ref: str | Version, *, latest: bool = False) -> list[Evaluation]:
        """A version's evaluations, oldest first; with ``latest``, the newest per task and metric."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM evaluations WHERE name=? AND number=? ORDER BY created_at, id",
                (version.name, version.number),
            ).fetchall()
        found = [
            Evaluation(
                name=r["name"], number=r["number"], task=r["task"], metric=r["metric"],
                value=r["value"], stderr=r["stderr"], samples=r["samples"], harness=r["harness"],
                created_at=r["created_at"], setup=json.loads(r["setup"]),
            )
            for r in rows
        ]
        if latest:
            newest = {e.subject: e for e in found}  # later rows replace earlier ones
            found = sorted(newest.values(), key=lambda e: e.subject)
        return found

    def untag(self, name: str, alias: str) -> None:
        """Remove an alias, and its gates.

        Raises:
            AdapterNotFoundError: no such alias.
        """
        with self._write() as db:
            cursor = db.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))
            db.execute("DELETE FROM gates WHERE name=? AND alias=?", (name, alias))
            if cursor.rowcount == 0:
                raise AdapterNotFoundError(
                    f"alias {name}:{alias} does not exist", ref=f"{name}:{alias}"
                )

    def delete(self, ref: str, *, force: bool = False) -> list[Version]:
        """Delete the version ``ref`` resolves to (a bare name deletes every version).

        Raises:
            RegistryError: another version names it as parent and ``force`` is False.
        """
        parsed = AdapterRef.parse(ref)
        targets = (
            self.list_versions(parsed.name)
            if parsed.version is None and parsed.alias is None
            else [self.resolve(parsed)]
        )
        if not targets:
            raise self._not_found(parsed)
        doomed = {v.ref for v in targets}
        with self._write() as db:
            children = [
                (r["name"], r["number"], r["parent"])
                for r in db.execute(
                    f"SELECT name, number, parent FROM versions WHERE parent IN ({','.join('?' * len(doomed))})",
                    sorted(doomed),
                )
                if f"{r['name']}@{r['number']}" not in doomed
            ]
            if children and not force:
                named = ", ".join(f"{n}@{k} (parent {p})" for n, k, p in children)
                raise RegistryError(
                    f"cannot delete {ref!r}: {named} name it as parent; delete those first or pass --force"
                )
            for v in targets:
                db.execute("DELETE FROM versions WHERE name=? AND number=?", (v.name, v.number))
            live = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM files")}
        # Blobs go after the commit: a crash here leaves unreferenced blobs, never a dangling row.
        for digest in {d for v in targets for d in v.files.values()} - live:
            self.blobs.delete(digest)
        return targets

    # ------------------------------------------------------------------ read

    def resolve(self, ref: str | AdapterRef) -> Version:
        """Turn ``name``, ``name@N`` or ``name:alias`` into a version.

        Raises:
            AdapterNotFoundError: with close matches when the name is unknown.
        """
        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        with self._connect() as db:
            if parsed.version is not None:
                number = parsed.version
            elif parsed.alias is not None:
                row = db.execute(
                    "SELECT number FROM aliases WHERE name=? AND alias=?",
                    (parsed.name, parsed.alias),
                ).fetchone()
                number = row["number"] if row else None
            else:
                row = db.execute(
                    "SELECT MAX(number) AS n FROM versions WHERE name=?", (parsed.name,)
                ).fetchone()
                number = row["n"]
            if number is None:
                raise self._not_found(parsed, db)
            try:
                return self._version(db, parsed.name, number)
            except AdapterNotFoundError:
                raise self._not_found(parsed, db) from None

    def _not_found(
        self, parsed: AdapterRef, db: sqlite3.Connection | None = None
    ) -> AdapterNotFoundError:
        names = self.names()
        if parsed.name in names:
            versions = [v.ref for v in self.list_versions(parsed.name)]
            return AdapterNotFoundError(
                f"adapter {str(parsed)!r} does not exist; {parsed.name!r} has versions {versions}",
                ref=str(parsed),
            )
        return AdapterNotFoundError(
            f"adapter {str(parsed)!r} does not exist; see `adapterhub list`.",
            ref=str(parsed),
            close_matches=difflib.get_close_matches(parsed.name, names, n=3, cutoff=0.6),
        )

    def names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def list_versions(self, name: str | None = None) -> list[Version]:
        """Every version, or every version of ``name``, oldest first."""
        with self._connect() as db:
            keys = db.execute(
                "SELECT name, number FROM versions WHERE (? IS NULL OR name=?) ORDER BY name, number",
                (name, name),
            ).fetchall()
            return [self._version(db, k["name"], k["number"]) for k in keys]

    def lineage(self, ref: str | AdapterRef) -> list[Version]:
        """The version and its parent chain, newest first (stops at a deleted parent)."""
        chain = [self.resolve(ref)]
        while chain[-1].parent and len(chain) < 100:
            try:
                chain.append(self.resolve(chain[-1].parent))
            except AdapterNotFoundError:
                break
        return chain

    def read_file(self, version: Version, filename: str) -> bytes:
        """A version's file, checked against its recorded sha256.

        Raises:
            AdapterNotFoundError: the version has no such file.
            CorruptBlobError: the stored bytes changed.
        """
        digest = version.files.get(filename)
        if digest is None:
            raise AdapterNotFoundError(
                f"{version.ref} has no file {filename!r}; it has {sorted(version.files)!r}",
                ref=version.ref,
            )
        return self.blobs.get(digest, label=f"{version.ref}/{filename}")

    def load_adapter(self, ref: str | Version, *, limits: LoraLimits = LoraLimits()) -> LoraAdapter:
        """Read and validate a version's LoRA weights (checksums verified)."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        return load_lora_bytes(
            self.read_file(version, CONFIG_FILE),
            self.read_file(version, WEIGHTS_FILE),
            ref=version.ref,
            limits=limits,
        )

    def export(self, ref: str | Version, dest: Path | str) -> Path:
        """Write a version's files (verified) into folder ``dest``, creating it."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        for filename in version.files:
            (folder / filename).write_bytes(self.read_file(version, filename))
        return folder


def _missing(gate: Gate, ref: str) -> str:
    if gate.task is None:
        return f"{ref} has no training metric {gate.metric!r}"
    return (f"{ref} has no evaluation of {gate.subject}; run "
            f"`adapterhub eval {ref} --task {gate.task}` (or tag from the library, which runs it)")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


def ensure_compatible(version: Version, base_fingerprint: str, base_template_hash: str) -> None:
    """Refuse a version trained on another base or chat template than the one loaded.

    Raises:
        IncompatibleAdapterError: says which fingerprint was expected and which was found.
    """
    if version.base_fingerprint != base_fingerprint:
        raise IncompatibleAdapterError(
            f"{version.ref} was trained on base {version.base_fingerprint[:12]}… but the loaded base "
            f"is {base_fingerprint[:12]}…; serve it with the base it was trained on, or retrain it"
        )
    if version.template_hash != base_template_hash:
        raise IncompatibleAdapterError(
            f"{version.ref} was trained with chat template {version.template_hash[:12]}… but the "
            f"loaded base renders with {base_template_hash[:12]}…; a template mismatch gives "
            "fluent nonsense, so it is refused. Retrain it on this base's template"
        )
