"""Real servers for the registry's shared backends (loaded through ``pytest_plugins``).

* ``postgres_server``: a PostgreSQL server started for the session from the system's own binaries
  (``initdb``/``pg_ctl``/``postgres``, found on ``PATH``, through ``pg_config --bindir`` or in
  ``/usr/lib/postgresql/*/bin``) in a temporary folder, on a free loopback port, TCP only. initdb
  refuses to run as root, so as root the server runs as the ``postgres`` user (else ``nobody``)
  through ``subprocess``'s ``user=``/``group=``, in a folder that user owns. ``fsync`` is off: the
  tests kill clients, never the server, and the machine has few cores. Each test that asks for
  ``postgres_url`` gets a database of its own. Skipped, saying why, only where no server binary
  exists.
* ``s3_server``: moto's S3-compatible server (``ThreadedMotoServer``, what s3fs tests against) on a
  free loopback port. ``s3_blobs`` gives a test a bucket of its own and sets the usual variables
  (``AWS_ENDPOINT_URL``, keys, region) so that s3fs, and subprocesses, find it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_counter = itertools.count()


def postgres_bindir() -> Path | None:
    """A folder with ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in _SERVER_BINARIES):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running test server; ``create_database`` makes a fresh database and returns its URL."""

    port: int
    user: str = "adapterhub"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as() -> dict[str, int]:
    """``subprocess`` arguments that drop root (initdb refuses it); none when not root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid}
    raise RuntimeError("running as root and there is no unprivileged user (postgres, nobody) to run initdb as")


@contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server from the binaries in ``bindir``, stopped and deleted afterwards
    (also used by ``bench/registry_bench.py``)."""
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="adapterhub-pg-"))  # /tmp: reachable by that user
    data, log = root / "data", root / "server.log"
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    server = PostgresServer(port=free_port())
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", server.user, "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True,
                       env=env, cwd=root, **as_user)
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories='' "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
                   "-c max_connections=400 -c shared_buffers=32MB")
        started = subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                  "-t", "60", "-o", options, "start"], capture_output=True, text=True,
                                 env=env, cwd=root, **as_user)
        if started.returncode != 0:
            detail = log.read_text() if log.exists() else started.stderr
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{detail}")
        yield server
    finally:
        if data.exists():
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, env=env, cwd=root, **as_user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb, pg_ctl, postgres) on PATH, from "
                    "`pg_config --bindir` or in /usr/lib/postgresql/*/bin; install the Debian "
                    "package postgresql to run the PostgreSQL half of the registry tests")
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]

    def create_bucket(self) -> str:
        import boto3

        name = f"blobs-{os.getpid()}-{next(_counter)}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        return name


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port (also used by ``bench/registry_bench.py``)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        yield S3Server(endpoint, env)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
    with running_s3() as server:
        yield server


@pytest.fixture
def s3_blobs(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<a new bucket>/blobs``, with the environment pointing s3fs at the test server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return f"s3://{s3_server.create_bucket()}/blobs"


def tamper(registry, digest: str, data: bytes | None) -> None:  # type: ignore[no-untyped-def]
    """Overwrite a stored blob with ``data``, or remove it (None), on any blob store."""
    key = registry.blobs.key(digest)
    if data is None:
        registry.blobs.fs.rm_file(key)
    else:
        registry.blobs.fs.pipe_file(key, data)
