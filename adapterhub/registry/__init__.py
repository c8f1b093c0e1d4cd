"""The adapter registry: SQLite metadata plus content-addressed blobs. See :mod:`.store`."""

from adapterhub.registry.blobs import BlobStore
from adapterhub.registry.store import Registry, Version, ensure_compatible

__all__ = ["BlobStore", "Registry", "Version", "ensure_compatible"]
