"""The blob store on a local folder and on S3 (moto's server on loopback), one code path.

What is checked on both: a blob is only ever visible whole (a writer SIGKILLed mid-upload leaves at
most a ``.tmp-*`` object, never a published blob); a store that gives back other bytes than were
written publishes nothing; a tampered or missing object is refused on read; leftovers are listed
for ``doctor`` and removable.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.errors import ConfigError, CorruptBlobError
from adapterhub.registry import BlobStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "s3":
        return BlobStore(request.getfixturevalue("s3_blobs"))
    return BlobStore(tmp_path / "blobs")


def test_put_get_and_dedupe(store: BlobStore) -> None:
    digest = store.put(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.put(b"hello") == digest  # stored once
    assert store.get(digest) == b"hello"
    assert store.exists(digest, 5) and not store.exists(digest, 6)
    assert list(store.digests()) == [digest]
    assert store.temp_files() == []
    store.delete(digest)
    assert list(store.digests()) == [] and not store.exists(digest)


def test_tampered_and_missing_objects_are_refused(store: BlobStore) -> None:
    digest = store.put(b"the real weights")
    store.fs.pipe_file(store.key(digest), b"the real weightz")
    with pytest.raises(CorruptBlobError, match="changed on disk: its sha256 is now"):
        store.get(digest, label="a@1/adapter_model.safetensors")
    store.fs.rm_file(store.key(digest))
    with pytest.raises(CorruptBlobError, match="is missing"):
        store.get(digest)


def test_a_store_that_returns_other_bytes_publishes_nothing(
        store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.fs.cat_file
    monkeypatch.setattr(store.fs, "cat_file", lambda key, *a, **kw: real(key, *a, **kw) + b"!")
    with pytest.raises(CorruptBlobError, match="it was not published"):
        store.put(b"payload")
    monkeypatch.setattr(store.fs, "cat_file", real)
    assert list(store.digests()) == [] and store.temp_files() == []  # the temporary object went too


_UPLOADER = r"""
import hashlib, os, sys
from adapterhub.registry import BlobStore
store = BlobStore(sys.argv[1])
size = int(sys.argv[2])
if sys.argv[3] == "die-before-publish":  # a kill between upload and publish, every time
    def die(tmp, final):
        print("uploaded", flush=True)
        os.kill(os.getpid(), 9)
    store._publish = die
    store.put(os.urandom(size))
i = 0
while True:
    data = os.urandom(size) + i.to_bytes(4, "big")
    print("start", hashlib.sha256(data).hexdigest(), flush=True)
    store.put(data)
    print("done", flush=True)
    i += 1
"""


def _uploader(store: BlobStore, size: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _UPLOADER, store.location, str(size), mode],
                            stdout=subprocess.PIPE, text=True)


def test_kill_between_upload_and_publish_leaves_no_published_blob(store: BlobStore) -> None:
    uploader = _uploader(store, 2_000_000, "die-before-publish")
    assert uploader.wait(timeout=120) == -signal.SIGKILL
    assert list(store.digests()) == []  # nothing published
    leftovers = store.temp_files()
    assert len(leftovers) == 1  # the whole upload sits under its temporary key
    store.remove_temp(leftovers[0])
    assert store.temp_files() == []
    with pytest.raises(ConfigError):
        store.remove_temp(store.key("ab" * 32))  # only temporary objects


def test_sigkill_at_random_points_during_uploads(store: BlobStore) -> None:
    """Every blob that is visible is whole; the one being written is absent or whole."""
    rng = __import__("random").Random(7)
    for _ in range(4):
        uploader = _uploader(store, 3_000_000, "loop")
        assert uploader.stdout is not None
        started = uploader.stdout.readline().split()[1]
        time.sleep(rng.uniform(0.0, 0.3))
        uploader.send_signal(signal.SIGKILL)
        uploader.wait()
        for digest in store.digests():
            store.get(digest)  # raises CorruptBlobError if a blob were published half-written
        if store.exists(started):
            assert hashlib.sha256(store.get(started)).hexdigest() == started
    for key in store.temp_files():
        store.remove_temp(key)
    assert store.temp_files() == []


def test_a_local_store_keeps_the_layout_of_a_hub_home(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"x")
    assert store.path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest[2:]
    assert store.path(digest).read_bytes() == b"x"
    assert os.stat(store.path(digest)).st_size == 1


def test_an_unknown_protocol_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder or a storage URL"):
        BlobStore("nosuchproto://bucket/prefix")
