"""The adapter registry: immutable versions, mutable aliases, lineage, metrics and evaluations.

Metadata lives in a database that SQLAlchemy (Core) speaks: SQLite by default (the hub home's
``registry.db``, WAL mode, so a trainer can write while a server reads) or PostgreSQL, shared by
several machines (see :mod:`.location`; tables and migrations in :mod:`.schema`). Files live in a
content-addressed :class:`BlobStore` (a folder or object storage). Publishing a version is two
steps: blobs are written and verified first, then one transaction picks the next number and
inserts the rows. A process killed at any point therefore leaves either no version or a whole
one; the worst leftover is an unreferenced blob.

Distinct numbers for concurrent writers: ``(name, number)`` is the primary key. On SQLite a write
transaction starts with ``BEGIN IMMEDIATE``, which serialises writers across processes; on
PostgreSQL two writers may both pick the next number, the unique key refuses the second insert, and
that writer retries with the number after (its blobs are already stored). Aliases move with one
``INSERT … ON CONFLICT DO UPDATE``, in the transaction that checks their gates.

Connections come from one pool per registry: reused, with SQLite's PRAGMAs set once per
connection. A database failure (disk full, locked past the timeout, server gone) becomes a
:class:`~adapterhub.errors.RegistryError` that says nothing changed.

A version never changes once published; what is learnt about it later is recorded next to it:
evaluations (:class:`Evaluation`, one row per task and metric, newest wins) and, per alias, the
promotion gates (:mod:`.gates`) checked in the same transaction that moves the alias.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import (
    AdapterNotFoundError,
    ConfigError,
    CorruptBlobError,
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
from adapterhub.registry import schema
from adapterhub.registry.blobs import BlobStore
from adapterhub.registry.gates import Gate, GateCheck, parse_gates
from adapterhub.registry.location import RegistryLocation
from adapterhub.registry.schema import aliases as aliases_t
from adapterhub.registry.schema import evaluations as evaluations_t
from adapterhub.registry.schema import files as files_t
from adapterhub.registry.schema import gates as gates_t
from adapterhub.registry.schema import versions as versions_t

_NUMBER_TRIES = 200  # PostgreSQL: how often a writer that lost the race for a number tries again
_SAFE_FILENAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def unknown_adapter(ref: str, close_matches: Sequence[str] = ()) -> AdapterNotFoundError:
    """The error for a ref whose name no version has. A server answers a key the same way for a
    name outside the key's allowlist, without close matches, so the two cannot be told apart."""
    return AdapterNotFoundError(f"adapter {ref!r} does not exist; see `adapterhub list`.", ref=ref,
                                close_matches=close_matches)


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
    """Turn a storage failure (disk full, read-only, I/O, store unreachable) into a
    RegistryError that says so."""
    try:
        yield
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise RegistryError(
            f"could not store a new version of {name!r}: {reason}; nothing was registered and "
            "earlier versions are intact. Free disk space (`adapterhub doctor --repair` removes "
            "leftovers) and try again"
        ) from e


class _NumberTaken(Exception):
    """Another writer committed this version number first (PostgreSQL); pick the next one."""


class Registry:
    """Versions and aliases of adapters, in one database and one blob store.

    Safe to use from several threads (a pool of connections) and several processes or machines.

    Args:
        home: a hub home; its ``registry.db`` and ``blobs`` unless ``url``/``blobs`` or the
            environment say otherwise (see :mod:`.location`). A URL string here is taken as ``url``.
        url: ``sqlite:///path/registry.db`` or ``postgresql://user@host/db``.
        blobs: a folder or an object-storage URL (``s3://bucket/prefix``).
        storage_options: passed to the blob store's fsspec filesystem.

    Raises:
        ConfigError: a bad URL, or a server database without a blob location.
        RegistrySchemaError: the database was written by a newer adapterhub.
        RegistryError: the database cannot be reached or opened.
    """

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        url: str | None = None,
        blobs: str | Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(home, str) and "://" in home and url is None:
            home, url = None, home
        self.location = RegistryLocation.resolve(home, url=url, blobs=blobs)
        self.home = self.location.home
        self.db_path = self.location.db_path
        self.url = self.location.shown
        if self.db_path is not None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.location.blobs, storage_options=storage_options)
        self._engine = self._create_engine()
        self._pid = os.getpid()
        with self._errors(), self._engine.connect() as db:
            schema.ensure_schema(db, repr(self.url))

    def __repr__(self) -> str:
        return f"Registry({self.url!r}, blobs={self.blobs.location!r})"

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        self._engine.dispose()

    # ------------------------------------------------------------------ plumbing

    def _create_engine(self) -> Engine:
        if self.db_path is None:
            return create_engine(self.location.url, pool_pre_ping=True, pool_size=4, max_overflow=16)
        # SQLite has no server to run out of connections: a thread never waits for one (the
        # server resolves refs from many worker threads at once); 8 stay open between calls.
        engine = create_engine(self.location.url, pool_size=8, max_overflow=-1,
                               connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _once_per_connection(dbapi: sqlite3.Connection, _record: object) -> None:
            dbapi.isolation_level = None  # transactions are begun below, not by the driver
            dbapi.execute("PRAGMA journal_mode=WAL")
            dbapi.execute("PRAGMA synchronous=FULL")
            dbapi.execute("PRAGMA foreign_keys=ON")
            # Connections stay open now, so no last close checkpoints the log: copy each commit
            # into the database file at once and let the next writer start the log afresh, as
            # before. The log then holds at most the latest transaction (what a truncated log or
            # a full disk can cost), and the database file is whole on its own.
            dbapi.execute("PRAGMA wal_autocheckpoint=1")
            dbapi.execute("PRAGMA journal_size_limit=0")

        @event.listens_for(engine, "begin")
        def _begin(db: Connection) -> None:
            # A writer takes the write lock at its start, so its reads see what it writes over.
            write = db.get_execution_options().get(schema.WRITE, False)
            db.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The database's own failures (disk full, I/O error, locked past the timeout, server
        unreachable) become a ``RegistryError`` that says nothing changed and what to do."""
        try:
            yield
        except DBAPIError as e:
            reason = str(e.orig).strip() if e.orig is not None else str(e)
            if self.db_path is not None:
                where, advice = repr(str(self.db_path)), (
                    "If the disk is full, free space (`adapterhub doctor --repair` removes "
                    "leftovers) and try again")
            else:
                where, advice = repr(self.url), (
                    "Check that the server is up and reachable and the URL "
                    "(ADAPTERHUB_REGISTRY_URL or --registry) is right, then try again")
            raise RegistryError(f"the registry database {where} failed: {reason}; nothing was changed. "
                                f"{advice}") from e

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction on a pooled connection, committed when the block ends normally."""
        if os.getpid() != self._pid:  # a forked child must not share its parent's connections
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        with self._errors(), self._engine.connect() as db:
            if write:
                db.execution_options(**{schema.WRITE: True})
            with db.begin():
                yield db

    def _versions(self, db: Connection, keys: list[tuple[str, int]] | None = None,
                  name: str | None = None) -> list[Version]:
        """Versions with their files and aliases, in three queries: those of ``keys``, else every
        version (of ``name``), ordered by name and number."""
        query = select(versions_t)
        file_query = select(files_t.c.name, files_t.c.number, files_t.c.filename, files_t.c.sha256)
        alias_query = select(aliases_t.c.name, aliases_t.c.number, aliases_t.c.alias)
        if keys is not None and len(keys) == 1:
            (key_name, key_number), = keys
            query = query.where(versions_t.c.name == key_name, versions_t.c.number == key_number)
            file_query = file_query.where(files_t.c.name == key_name, files_t.c.number == key_number)
            alias_query = alias_query.where(aliases_t.c.name == key_name, aliases_t.c.number == key_number)
        elif name is not None or keys is not None:
            names = [name] if name is not None else sorted({k[0] for k in keys or []})
            query = query.where(versions_t.c.name.in_(names))
            file_query = file_query.where(files_t.c.name.in_(names))
            alias_query = alias_query.where(aliases_t.c.name.in_(names))
        rows = db.execute(query.order_by(versions_t.c.name, versions_t.c.number)).mappings().all()
        wanted = None if keys is None else set(keys)
        files_of: dict[tuple[str, int], dict[str, str]] = {}
        for r in db.execute(file_query.order_by(files_t.c.filename)):
            files_of.setdefault((r.name, r.number), {})[r.filename] = r.sha256
        aliases_of: dict[tuple[str, int], list[str]] = {}
        for r in db.execute(alias_query.order_by(aliases_t.c.alias)):
            aliases_of.setdefault((r.name, r.number), []).append(r.alias)
        found = []
        for row in rows:
            key = (row["name"], row["number"])
            if wanted is not None and key not in wanted:
                continue
            columns = {k: row[k] for k in _VERSION_FIELDS.intersection(row.keys())}
            columns.update({k: json.loads(row[k]) for k in _JSON_COLUMNS})
            found.append(Version(**columns, files=files_of.get(key, {}),
                                 aliases=tuple(aliases_of.get(key, ()))))
        return found

    def _version(self, db: Connection, name: str, number: int) -> Version:
        found = self._versions(db, [(name, number)])
        if not found:
            raise AdapterNotFoundError(
                f"adapter {name}@{number} does not exist", ref=f"{name}@{number}"
            )
        return found[0]

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

        # 1. Blobs first: durable and verified before anything points at them.
        stored: dict[str, tuple[str, int]] = {}
        with _nothing_registered_on_failure(name):
            for filename, content in files.items():
                data = Path(content).read_bytes() if isinstance(content, Path) else bytes(content)
                stored[filename] = (self.blobs.put(data), len(data))

        # 2. One transaction publishes the version.
        row = {
            "name": name, "created_at": time.time(), "method": method,
            "base_fingerprint": base_fingerprint, "template_hash": template_hash,
            "recipe": _json(recipe), "dataset_fingerprint": dataset_fingerprint,
            "parent": parent_ref, "metrics": _json(metrics), "source": _json(source),
        }
        return self._publish(row, stored, number, evaluations or [])

    def _publish(self, row: dict[str, Any], stored: Mapping[str, tuple[str, int]], number: int | None,
                 evaluations: list[Evaluation]) -> Version:
        """Insert one version (next free number when ``number`` is None), retrying a lost race."""
        name = row["name"]
        for attempt in range(_NUMBER_TRIES):
            try:
                with _nothing_registered_on_failure(name), self._transaction(write=True) as db:
                    chosen = number
                    if chosen is None:
                        latest = db.execute(
                            select(func.coalesce(func.max(versions_t.c.number), 0))
                            .where(versions_t.c.name == name)).scalar_one()
                        chosen = int(latest) + 1
                    elif db.execute(select(versions_t.c.number).where(
                            versions_t.c.name == name, versions_t.c.number == chosen)).first():
                        raise VersionExistsError(
                            f"{name}@{chosen} already exists and versions are immutable; "
                            "register without a number to get the next one"
                        )
                    try:
                        db.execute(insert(versions_t).values(**row, number=chosen))
                    except IntegrityError:
                        raise _NumberTaken from None
                    db.execute(insert(files_t), [
                        {"name": name, "number": chosen, "filename": fn, "sha256": digest, "size": size}
                        for fn, (digest, size) in stored.items()
                    ])
                    self._insert_evaluations(db, [replace(e, name=name, number=chosen) for e in evaluations])
                    return self._version(db, name, chosen)
            except _NumberTaken:
                if number is not None:
                    raise VersionExistsError(
                        f"{name}@{number} already exists and versions are immutable; "
                        "register without a number to get the next one"
                    ) from None
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))
        raise RegistryError(
            f"could not get a version number for {name!r} after {_NUMBER_TRIES} tries: other "
            "writers keep taking them; nothing was registered. Try again"
        )

    def restore(self, version: Version, sizes: Mapping[str, int],
                evaluations: list[Evaluation] | None = None) -> Version:
        """Publish ``version`` exactly as given (number, time, parent, metadata), its blobs
        already in this registry's store: how ``registry copy`` moves a version.

        Args:
            sizes: filename -> size in bytes of each of its files.

        Raises:
            VersionExistsError: this registry has that number already.
            CorruptBlobError: a blob is not in this registry's store.
        """
        for filename, digest in version.files.items():
            if not self.blobs.exists(digest, sizes[filename]):
                raise CorruptBlobError(f"{version.ref}/{filename}: blob {digest[:12]}… is not in "
                                       f"{self.blobs.location!r}; store it first")
        row = {
            "name": version.name, "created_at": version.created_at, "method": version.method,
            "base_fingerprint": version.base_fingerprint, "template_hash": version.template_hash,
            "recipe": _json(version.recipe), "dataset_fingerprint": version.dataset_fingerprint,
            "parent": version.parent, "metrics": _json(version.metrics), "source": _json(version.source),
        }
        stored = {fn: (digest, sizes[fn]) for fn, digest in version.files.items()}
        return self._publish(row, stored, version.number, evaluations or [])

    def restore_alias(self, name: str, alias: str, number: int, gates: list[Gate]) -> None:
        """Point ``name:alias`` at ``name@number`` with exactly ``gates``, checking nothing (the
        state of another registry, copied)."""
        with self._transaction(write=True) as db:
            db.execute(delete(gates_t).where(gates_t.c.name == name, gates_t.c.alias == alias))
            if gates:
                db.execute(insert(gates_t), [{"name": name, "alias": alias, "position": i, "rule": str(g)}
                                             for i, g in enumerate(gates)])
            _move_alias(db, name, alias, number)

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
        with self._transaction(write=True) as db:
            if rules is not None:
                db.execute(delete(gates_t).where(gates_t.c.name == version.name, gates_t.c.alias == alias))
                if rules:
                    db.execute(insert(gates_t), [
                        {"name": version.name, "alias": alias, "position": i, "rule": str(rule)}
                        for i, rule in enumerate(rules)
                    ])
            checks = self._check_gates(db, version, self._gates(db, version.name, alias))
            failed = [c for c in checks if not c.passed]
            if failed:
                lines = "\n".join(f"  - {c}" for c in failed)
                raise GateError(
                    f"{version.name}:{alias} is gated and {version.ref} does not pass "
                    f"{len(failed)} of {len(checks)} rule(s); the alias did not move:\n{lines}",
                    checks=checks,
                )
            _move_alias(db, version.name, alias, version.number)
            return self._version(db, version.name, version.number)

    def gates(self, name: str, alias: str) -> list[Gate]:
        """The rules alias ``name:alias`` holds (none for an ungated or unknown alias)."""
        with self._transaction() as db:
            return self._gates(db, name, alias)

    def check_gates(self, ref: str | Version, gates: list[Gate]) -> list[GateCheck]:
        """How version ``ref`` fares against ``gates``, without moving anything."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        with self._transaction() as db:
            return self._check_gates(db, version, gates)

    def _gates(self, db: Connection, name: str, alias: str) -> list[Gate]:
        rows = db.execute(select(gates_t.c.rule).where(gates_t.c.name == name, gates_t.c.alias == alias)
                          .order_by(gates_t.c.position))
        return [Gate.parse(r.rule) for r in rows]

    def _check_gates(self, db: Connection, version: Version, gates: list[Gate]) -> list[GateCheck]:
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

    def _measure(self, db: Connection, name: str, number: int, gate: Gate) -> float | None:
        """The number a rule reads for one version: its newest evaluation, or a training metric."""
        if gate.task is None:
            metrics = db.execute(select(versions_t.c.metrics).where(
                versions_t.c.name == name, versions_t.c.number == number)).scalar()
            value = json.loads(metrics).get(gate.metric) if metrics is not None else None
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        e = evaluations_t.c
        value = db.execute(
            select(e.value).where(e.name == name, e.number == number, e.task == gate.task,
                                  e.metric == gate.metric)
            .order_by(e.created_at.desc(), e.id.desc()).limit(1)
        ).scalar()
        return None if value is None else float(value)

    # ------------------------------------------------------------------ evaluations

    def record_evaluations(self, evaluations: list[Evaluation]) -> list[Evaluation]:
        """Store evaluations of existing versions, all or none.

        Raises:
            AdapterNotFoundError: one names a version that does not exist.
            ConfigError: a value is not a finite number.
        """
        with self._transaction(write=True) as db:
            for e in evaluations:
                self._version(db, e.name, e.number)  # raises AdapterNotFoundError
            self._insert_evaluations(db, evaluations)
        return self.evaluations(evaluations[0].ref) if evaluations else []

    def _insert_evaluations(self, db: Connection, evaluations: list[Evaluation]) -> None:
        bad = [f"{e.subject}={e.value!r}" for e in evaluations if not _finite(e.value)]
        if bad:
            raise ConfigError(f"evaluation values {bad} are not finite numbers; nothing was recorded")
        if not evaluations:
            return
        db.execute(insert(evaluations_t), [
            {"name": e.name, "number": e.number, "task": e.task, "metric": e.metric,
             "value": float(e.value),
             "stderr": e.stderr if e.stderr is not None and _finite(e.stderr) else None,
             "samples": e.samples, "harness": e.harness, "created_at": e.created_at or time.time(),
             "setup": _json(e.setup)}
            for e in evaluations
        ])

    def evaluations(self, ref: str | Version, *, latest: bool = False) -> list[Evaluation]:
        """A version's evaluations, oldest first; with ``latest``, the newest per task and metric."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        e = evaluations_t.c
        with self._transaction() as db:
            rows = db.execute(
                select(evaluations_t).where(e.name == version.name, e.number == version.number)
                .order_by(e.created_at, e.id)
            ).mappings().all()
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
        with self._transaction(write=True) as db:
            removed = db.execute(delete(aliases_t).where(aliases_t.c.name == name, aliases_t.c.alias == alias))
            db.execute(delete(gates_t).where(gates_t.c.name == name, gates_t.c.alias == alias))
            if removed.rowcount == 0:
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
        digests = {d for v in targets for d in v.files.values()}
        v = versions_t.c
        with self._transaction(write=True) as db:
            children = [
                (r.name, r.number, r.parent)
                for r in db.execute(select(v.name, v.number, v.parent).where(v.parent.in_(sorted(doomed))))
                if f"{r.name}@{r.number}" not in doomed
            ]
            if children and not force:
                named = ", ".join(f"{n}@{k} (parent {p})" for n, k, p in children)
                raise RegistryError(
                    f"cannot delete {ref!r}: {named} name it as parent; delete those first or pass --force"
                )
            for target in targets:
                db.execute(delete(versions_t).where(v.name == target.name, v.number == target.number))
            live = set(db.execute(select(files_t.c.sha256).distinct()
                                  .where(files_t.c.sha256.in_(sorted(digests)))).scalars())
        # Blobs go after the commit: a crash here leaves unreferenced blobs, never a dangling row.
        for digest in digests - live:
            self.blobs.delete(digest)
        return targets

    # ------------------------------------------------------------------ read

    def resolve(self, ref: str | AdapterRef) -> Version:
        """Turn ``name``, ``name@N`` or ``name:alias`` into a version.

        Raises:
            AdapterNotFoundError: with close matches when the name is unknown.
        """
        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        with self._transaction() as db:
            number: int | None
            if parsed.version is not None:
                number = parsed.version
            elif parsed.alias is not None:
                number = db.execute(select(aliases_t.c.number).where(
                    aliases_t.c.name == parsed.name, aliases_t.c.alias == parsed.alias)).scalar()
            else:
                number = db.execute(select(func.max(versions_t.c.number))
                                    .where(versions_t.c.name == parsed.name)).scalar()
            found = self._versions(db, [(parsed.name, number)]) if number is not None else []
        if not found:
            raise self._not_found(parsed)
        return found[0]

    def _not_found(self, parsed: AdapterRef) -> AdapterNotFoundError:
        names = self.names()
        if parsed.name in names:
            versions = [v.ref for v in self.list_versions(parsed.name)]
            return AdapterNotFoundError(
                f"adapter {str(parsed)!r} does not exist; {parsed.name!r} has versions {versions}",
                ref=str(parsed),
            )
        return unknown_adapter(str(parsed), difflib.get_close_matches(parsed.name, names, n=3, cutoff=0.6))

    def lookup(self, name: str, number: int) -> Version | None:
        """Version ``name@number``, or None (cheaper than :meth:`resolve` when it may be absent)."""
        with self._transaction() as db:
            found = self._versions(db, [(name, number)])
        return found[0] if found else None

    def names(self) -> list[str]:
        with self._transaction() as db:
            return list(db.execute(select(versions_t.c.name).distinct().order_by(versions_t.c.name)).scalars())

    def list_versions(self, name: str | None = None) -> list[Version]:
        """Every version, or every version of ``name``, oldest first."""
        with self._transaction() as db:
            return self._versions(db, name=name)

    def aliases(self) -> list[tuple[str, str, int, list[Gate]]]:
        """Every alias as ``(name, alias, number, gates)``, ordered by name and alias."""
        with self._transaction() as db:
            rows = db.execute(select(aliases_t).order_by(aliases_t.c.name, aliases_t.c.alias)).all()
            return [(r.name, r.alias, r.number, self._gates(db, r.name, r.alias)) for r in rows]

    def sizes(self, version: Version) -> dict[str, int]:
        """filename -> size in bytes, as recorded when ``version`` was registered."""
        with self._transaction() as db:
            rows = db.execute(select(files_t.c.filename, files_t.c.size).where(
                files_t.c.name == version.name, files_t.c.number == version.number))
            return {r.filename: int(r.size) for r in rows}

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
        try:
            return self.blobs.get(digest, label=f"{version.ref}/{filename}")
        except OSError as e:  # the store itself failed (unreachable, refused)
            raise RegistryError(f"could not read {version.ref}/{filename} from "
                                f"{self.blobs.location!r}: {e}; check the blob store and try again") from e

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


def _move_alias(db: Connection, name: str, alias: str, number: int) -> None:
    """Insert the alias or move it, in one statement (SQLAlchemy's dialect-specific upsert)."""
    if db.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    statement = upsert(aliases_t).values(name=name, alias=alias, number=number)
    db.execute(statement.on_conflict_do_update(index_elements=["name", "alias"],
                                               set_={"number": statement.excluded.number}))


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(value or {}), sort_keys=True, default=str)


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
