"""Alembic migrations of the registry's schema; run by :func:`adapterhub.registry.schema.ensure_schema`."""
