"""The registry's suite runs on every backend: ``home`` is parametrised.

``sqlite``         the embedded default: ``HOME/registry.db`` and ``HOME/blobs``
``postgresql``     a database of its own on the session's PostgreSQL server, blobs in ``HOME/blobs``
``postgresql+s3``  the same database kind, blobs in a bucket of their own on the S3 test server

The two shared backends are chosen the way a user chooses them, through
``ADAPTERHUB_REGISTRY_URL`` and ``ADAPTERHUB_BLOBS``, so ``Registry(home)`` in a test and in its
subprocesses (writers, the real ``adapterhub doctor``) opens the same registry. A test that is about
one backend only says so with ``@pytest.mark.parametrize("home", ["sqlite"], indirect=True)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["sqlite", "postgresql", "postgresql+s3"]


@pytest.fixture(params=BACKENDS)
def home(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh hub home (also ADAPTERHUB_HOME), its registry on the backend of this run."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ADAPTERHUB_HOME", str(path))
    if request.param.startswith("postgresql"):
        monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", request.getfixturevalue("postgres_url"))
        blobs = request.getfixturevalue("s3_blobs") if request.param.endswith("+s3") else str(path / "blobs")
        monkeypatch.setenv("ADAPTERHUB_BLOBS", blobs)
    return path


@pytest.fixture
def backend(request: pytest.FixtureRequest, home: Path) -> str:
    """Which backend this run of the test uses (one of :data:`BACKENDS`)."""
    return str(request.node.callspec.params["home"])
