"""Content-addressed file storage through fsspec: ``ROOT/sha256/ab/cdef…``.

``ROOT`` is a local folder (the default, ``HOME/blobs``) or an object-storage URL such as
``s3://bucket/prefix`` (s3fs, the ``s3`` extra; endpoint and credentials come from the usual
settings: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``), so any S3-compatible store works. Every store takes one path:

1. the bytes go to a temporary key ``sha256/ab/.tmp-<random>`` next to the final one (on a local
   disk written and fsynced);
2. the temporary object is read back and its sha256 checked against the name it is to get;
3. only then is it moved to its final key (a rename on a disk, with the folder fsynced; a
   server-side copy on S3, which makes the whole object appear at once).

A reader therefore never sees a half-written blob, and a process killed at any point leaves at
most a ``.tmp-*`` object (which ``adapterhub doctor --repair`` removes). Reads verify the hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from adapterhub.errors import ConfigError, CorruptBlobError

_TMP = ".tmp-"


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names an fsspec protocol (``s3://…``) rather than a local folder."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


class BlobStore:
    """Immutable files named by their sha256, in a local folder or an object store.

    Args:
        location: a folder, or a URL (``s3://bucket/prefix``, ``file:///path``, any fsspec URL).
        storage_options: passed to the fsspec filesystem (e.g. ``{"endpoint_url": ...}``); the
            environment's settings when empty.
    """

    def __init__(self, location: Path | str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.location = str(location)
        if is_url(location):
            protocol = str(location).split("://", 1)[0]
            options = dict(storage_options or {})
            if protocol in ("s3", "s3a"):
                # Another machine writes the same bucket: never answer from a stale listing.
                options.setdefault("use_listings_cache", False)
            options.setdefault("skip_instance_cache", True)
            try:
                self.fs, root = fsspec.url_to_fs(str(location), **options)
            except ImportError as e:
                raise ConfigError(
                    f"blob location {self.location!r} needs {getattr(e, 'name', None) or e!s}, which is "
                    "not installed: pip install 'adapterhub[s3]'"
                ) from e
            except ValueError as e:  # fsspec knows no such protocol
                raise ConfigError(
                    f"blob location {self.location!r} is not a folder or a storage URL fsspec knows "
                    f"({e}); write a folder or s3://bucket/prefix"
                ) from e
            self._root = root.rstrip("/") + "/sha256"
        else:
            folder = Path(str(location).removeprefix("file://")).expanduser()
            self.fs = LocalFileSystem()
            self._root = str(folder.absolute() / "sha256")
            Path(self._root).mkdir(parents=True, exist_ok=True)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = Path(self._root) if self.is_local else self._root

    def key(self, digest: str) -> str:
        """Where blob ``digest`` lives in the filesystem (a path for a local store)."""
        return f"{self._root}/{digest[:2]}/{digest[2:]}"

    def path(self, digest: str) -> Path:
        """The local file of blob ``digest`` (local stores only; see :meth:`key`)."""
        if not self.is_local:
            raise ConfigError(f"blobs at {self.location!r} are not local files; use key()")
        return Path(self.key(digest))

    def exists(self, digest: str, size: int | None = None) -> bool:
        """Whether blob ``digest`` is stored (with ``size`` bytes, when given); not verified."""
        try:
            info = self.fs.info(self.key(digest))
        except FileNotFoundError:
            return False
        return size is None or int(info.get("size", -1)) == size

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its sha256.

        Raises:
            CorruptBlobError: the store gave back other bytes than were written (nothing is
                published).
            OSError: the store failed (disk full, unreachable); nothing is published.
        """
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest, len(data)):
            return digest
        final = self.key(digest)
        tmp = f"{final.rsplit('/', 1)[0]}/{_TMP}{uuid.uuid4().hex}"
        try:
            self._write(tmp, data)
            written = hashlib.sha256(self.fs.cat_file(tmp)).hexdigest()
            if written != digest:
                raise CorruptBlobError(
                    f"blob {digest[:12]}… was stored as {written[:12]}… in {self.location!r}; "
                    "it was not published. Check the storage and try again"
                )
            self._publish(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise
        return digest

    def _write(self, key: str, data: bytes) -> None:
        if self.is_local:
            folder = Path(key).parent
            folder.mkdir(parents=True, exist_ok=True)
            with open(key, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:
            self.fs.pipe_file(key, data)

    def _publish(self, tmp: str, final: str) -> None:
        if self.is_local:
            os.replace(tmp, final)
            _fsync_dir(Path(final).parent)
        else:
            self.fs.mv(tmp, final)  # S3: a server-side copy, then the temporary object goes

    def _discard(self, key: str) -> None:
        """Remove a temporary object after a failure; a second failure must not hide the first."""
        with contextlib.suppress(OSError):
            self.fs.rm_file(key)

    def get(self, digest: str, *, label: str = "") -> bytes:
        """Read a blob and check it still matches its hash.

        Raises:
            CorruptBlobError: missing, truncated or changed since it was written.
        """
        where = f" ({label})" if label else ""
        try:
            data = self.fs.cat_file(self.key(digest))
        except FileNotFoundError:
            raise CorruptBlobError(
                f"blob {digest[:12]}…{where} is missing from {self._root!r}; "
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
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(digest))

    def _keys(self) -> Iterator[str]:
        try:
            found = self.fs.find(self._root)
        except FileNotFoundError:
            return
        prefix = self._root.rstrip("/") + "/"
        for key in found:
            key = str(key)
            if self.is_local or key.startswith(prefix):
                yield key
            else:  # some filesystems list without the protocol's root; normalise
                yield prefix + key.split("/sha256/", 1)[-1]

    def digests(self) -> Iterator[str]:
        """Every stored blob's name (not verified)."""
        for key in self._keys():
            folder, _, name = key.rpartition("/")
            if not name.startswith(_TMP) and len(folder.rpartition("/")[2]) == 2:
                yield folder.rpartition("/")[2] + name

    def temp_files(self) -> list[str]:
        """Leftovers of interrupted writes: their keys (local paths for a local store)."""
        return sorted(k for k in self._keys() if k.rpartition("/")[2].startswith(_TMP))

    def remove_temp(self, key: str) -> None:
        """Remove one leftover that :meth:`temp_files` listed."""
        if not key.rpartition("/")[2].startswith(_TMP):
            raise ConfigError(f"{key!r} is not a temporary blob")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(key)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
