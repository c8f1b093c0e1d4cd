"""The registry's tables (SQLAlchemy Core) and how a database is brought to them (Alembic).

One :class:`~sqlalchemy.MetaData` describes the tables on every database SQLAlchemy speaks; the
Alembic scripts in ``migrations/versions`` create and change them. Revision ``0001`` is exactly
the schema that ``CREATE TABLE IF NOT EXISTS`` built before migrations existed, so a home made by
that code (tables, no ``alembic_version``) is recognised, stamped ``0001`` and upgraded in place.

Opening a registry costs a look at its tables and one query when the database is current: its
revision is compared with :data:`HEAD`, which a test keeps equal to Alembic's head. Only a
database behind it loads Alembic.
A revision this code does not know was written by a newer adapterhub and is refused
(:class:`~adapterhub.errors.RegistrySchemaError`): older code never writes into a newer schema.

Bringing a database up to date holds the database's write lock (SQLite ``BEGIN IMMEDIATE``,
a PostgreSQL advisory lock in the migrating transaction), so processes opening one new registry at
once migrate it once; both databases run the DDL inside that transaction.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    REAL,
    Column,
    Connection,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    inspect,
    text,
)

from adapterhub.errors import RegistrySchemaError

HEAD = "0001"
"""The newest schema revision this code knows (``migrations/versions``)."""
BASELINE = "0001"
"""The revision of a registry made before migrations existed."""
_MIGRATIONS = Path(__file__).with_name("migrations")
WRITE = "adapterhub_write"
"""Execution option of a connection whose transactions write: SQLite begins them IMMEDIATE."""
_LOCK_KEY = 0x61646870  # "adhp": the PostgreSQL advisory lock migrations hold

metadata = MetaData()
Real = Float().with_variant(REAL(), "sqlite")
"""A double: FLOAT (8 bytes) on PostgreSQL, REAL (SQLite's only float) as main declared it."""

versions = Table(
    "versions", metadata,
    Column("name", Text, nullable=False),
    Column("number", Integer, nullable=False, autoincrement=False),
    Column("created_at", Real, nullable=False),
    Column("method", Text, nullable=False),
    Column("base_fingerprint", Text, nullable=False),
    Column("template_hash", Text, nullable=False),
    Column("recipe", Text, nullable=False, server_default="{}"),
    Column("dataset_fingerprint", Text),
    Column("parent", Text),
    Column("metrics", Text, nullable=False, server_default="{}"),
    Column("source", Text, nullable=False, server_default="{}"),
    PrimaryKeyConstraint("name", "number"),  # distinct numbers, whoever writes
    Index("versions_by_parent", "parent"),
)

files = Table(
    "files", metadata,
    Column("name", Text, nullable=False),
    Column("number", Integer, nullable=False, autoincrement=False),
    Column("filename", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size", Integer, nullable=False),
    PrimaryKeyConstraint("name", "number", "filename"),
    ForeignKeyConstraint(["name", "number"], ["versions.name", "versions.number"], ondelete="CASCADE"),
    Index("files_by_hash", "sha256"),
)

aliases = Table(
    "aliases", metadata,
    Column("name", Text, nullable=False),
    Column("alias", Text, nullable=False),
    Column("number", Integer, nullable=False),
    PrimaryKeyConstraint("name", "alias"),
    ForeignKeyConstraint(["name", "number"], ["versions.name", "versions.number"], ondelete="CASCADE"),
)

evaluations = Table(
    "evaluations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("task", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("value", Real, nullable=False),
    Column("stderr", Real),
    Column("samples", Integer),
    Column("harness", Text, nullable=False),
    Column("created_at", Real, nullable=False),
    Column("setup", Text, nullable=False, server_default="{}"),
    ForeignKeyConstraint(["name", "number"], ["versions.name", "versions.number"], ondelete="CASCADE"),
    Index("evaluations_by_version", "name", "number", "task", "metric"),
    sqlite_autoincrement=True,
)

gates = Table(
    "gates", metadata,
    Column("name", Text, nullable=False),
    Column("alias", Text, nullable=False),
    Column("position", Integer, nullable=False, autoincrement=False),
    Column("rule", Text, nullable=False),
    PrimaryKeyConstraint("name", "alias", "position"),
)


def current_revision(db: Connection) -> str | None:
    """The database's revision: ``alembic_version``'s row, :data:`BASELINE` for a registry made
    before migrations (its tables, no version table), None for an empty database."""
    revision, _ = _state(db)
    return revision


def _state(db: Connection) -> tuple[str | None, bool]:
    """(revision, whether ``alembic_version`` records it)."""
    tables = set(inspect(db).get_table_names())
    if "alembic_version" in tables:
        row = db.execute(text("SELECT version_num FROM alembic_version")).first()
        return (None if row is None else str(row[0])), True
    return (BASELINE if "versions" in tables else None), False


def known_revisions() -> list[str]:
    """Every revision in ``migrations/versions``, oldest first (loads Alembic)."""
    script = _script_directory()
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def ensure_schema(db: Connection, where: str) -> None:
    """Bring the database behind ``db`` (no transaction begun) to :data:`HEAD`, or refuse it.

    Raises:
        RegistrySchemaError: the database has a revision this code does not know.
    """
    with db.begin():
        if _state(db) == (HEAD, True):
            return
    db.execution_options(**{WRITE: True})  # SQLite: hold the write lock from the start
    with db.begin():
        if db.dialect.name == "postgresql":
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        revision, stamped = _state(db)  # again, under the lock: another process may have migrated
        if (revision, stamped) == (HEAD, True):
            return
        if revision is not None and revision not in known_revisions():
            raise RegistrySchemaError(
                f"the registry at {where} has schema revision {revision!r}, which this adapterhub "
                f"does not know (it knows up to {HEAD!r}): a newer adapterhub wrote it. Upgrade "
                "adapterhub (`pip install -U adapterhub`) to use it; nothing was changed",
                revision=revision,
            )
        from alembic import command

        config = _alembic_config(db)
        if revision is not None and not stamped:
            command.stamp(config, BASELINE)  # made before migrations: it has the baseline's tables
        command.upgrade(config, "head")


def _alembic_config(db: Connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = db
    return config


def _script_directory():  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)  # type: ignore[arg-type]
    return ScriptDirectory.from_config(config)
