"""The adapter registry: SQLite metadata plus content-addressed blobs. See :mod:`.store`."""

from adapterhub.registry.blobs import BlobStore
from adapterhub.registry.gates import Gate, GateCheck, parse_gates
from adapterhub.registry.store import Evaluation, Registry, Version, ensure_compatible

__all__ = [
    "BlobStore", "Evaluation", "Gate", "GateCheck", "Registry", "Version", "ensure_compatible",
    "parse_gates",
]
