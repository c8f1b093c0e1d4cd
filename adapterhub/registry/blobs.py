"""Content-addressed file storage: ``blobs/sha256/ab/cdef…``.

A blob is written to a temporary name in the same folder, fsynced, then renamed into place, so
a reader never sees a half-written blob and a crash leaves at most an orphaned ``.tmp-*`` file
(which ``adapterhub doctor`` removes). Reads verify the hash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapterhub.errors import CorruptBlobError


class BlobStore:
    """Immutable files named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "sha256"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists() and final.stat().st_size == len(data):
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return digest

    def get(self, digest: str, *, label: str = "") -> bytes:
        """Read a blob and check it still matches its hash.

        Raises:
            CorruptBlobError: missing, truncated or changed since it was written.
        """
        where = f" ({label})" if label else ""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise CorruptBlobError(
                f"blob {digest[:12]}…{where} is missing from {str(self.root)!r}; "
                "run `adapterhub doctor` to see what else is affected"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise CorruptBlobError(
                f"blob {digest[:12]}…{where} changed on disk: its sha256 is now {actual[:12]}…; "
                "it will not be used. Re-import or pull that version again, or delete it"
            )
        return data

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        """Every stored blob's name (not verified)."""
        for folder in self.root.iterdir():
            if folder.is_dir():
                for blob in folder.iterdir():
                    if not blob.name.startswith(".tmp-"):
                        yield folder.name + blob.name

    def temp_files(self) -> list[Path]:
        """Leftovers of interrupted writes."""
        return sorted(self.root.glob("*/.tmp-*"))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
