"""Baseline: the schema a registry had before migrations (versions, files, aliases, evaluations, gates).

A registry created by that code has exactly these tables and indexes, and no ``alembic_version``;
it is stamped with this revision instead of running it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_REAL = sa.Float().with_variant(sa.REAL(), "sqlite")  # SQLite's REAL, PostgreSQL's 8-byte FLOAT
_KEY = ["name", "number"]
_VERSION = ["versions.name", "versions.number"]


def upgrade() -> None:
    op.create_table(
        "versions",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("number", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("created_at", _REAL, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("base_fingerprint", sa.Text, nullable=False),
        sa.Column("template_hash", sa.Text, nullable=False),
        sa.Column("recipe", sa.Text, nullable=False, server_default="{}"),
        sa.Column("dataset_fingerprint", sa.Text),
        sa.Column("parent", sa.Text),
        sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
        sa.Column("source", sa.Text, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("name", "number"),
    )
    op.create_table(
        "files",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("number", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("name", "number", "filename"),
        sa.ForeignKeyConstraint(_KEY, _VERSION, ondelete="CASCADE"),
    )
    op.create_table(
        "aliases",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("alias", sa.Text, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("name", "alias"),
        sa.ForeignKeyConstraint(_KEY, _VERSION, ondelete="CASCADE"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("value", _REAL, nullable=False),
        sa.Column("stderr", _REAL),
        sa.Column("samples", sa.Integer),
        sa.Column("harness", sa.Text, nullable=False),
        sa.Column("created_at", _REAL, nullable=False),
        sa.Column("setup", sa.Text, nullable=False, server_default="{}"),
        sa.ForeignKeyConstraint(_KEY, _VERSION, ondelete="CASCADE"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "gates",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("alias", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", "alias", "position"),
    )
    op.create_index("files_by_hash", "files", ["sha256"])
    op.create_index("evaluations_by_version", "evaluations", ["name", "number", "task", "metric"])
    op.create_index("versions_by_parent", "versions", ["parent"])


def downgrade() -> None:
    for index, table in (("versions_by_parent", "versions"), ("evaluations_by_version", "evaluations"),
                         ("files_by_hash", "files")):
        op.drop_index(index, table_name=table)
    for table in ("gates", "evaluations", "aliases", "files", "versions"):
        op.drop_table(table)
