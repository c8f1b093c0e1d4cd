"""Alembic's entry point: migrate the connection the registry hands over, inside its transaction.

There is no ``alembic.ini``: :func:`adapterhub.registry.schema.ensure_schema` builds the config and
puts its open connection in ``config.attributes["connection"]``; the registry holds the database's
write lock around the whole run, so the migration commits (or rolls back) with that transaction.
"""

from alembic import context

from adapterhub.registry.schema import metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


if getattr(context, "_proxy", None) is not None:  # run by Alembic (importing it does nothing)
    run_migrations()
