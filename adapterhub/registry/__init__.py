"""The adapter registry: metadata in SQLite or PostgreSQL (SQLAlchemy, Alembic) plus
content-addressed blobs in a folder or object storage (fsspec). See :mod:`.store`."""

from adapterhub.registry.blobs import BlobStore
from adapterhub.registry.gates import Gate, GateCheck, parse_gates
from adapterhub.registry.location import RegistryLocation, RegistrySettings
from adapterhub.registry.store import Evaluation, Registry, Version, ensure_compatible

__all__ = [
    "BlobStore", "Evaluation", "Gate", "GateCheck", "Registry", "RegistryLocation", "RegistrySettings",
    "Version", "ensure_compatible", "parse_gates",
]
