"""Where a registry keeps its metadata (a database URL) and its files (a blob location).

Explicit arguments win, then the environment, then the hub home::

    url    ADAPTERHUB_REGISTRY_URL   sqlite:///HOME/registry.db   (or postgresql://user@host/db)
    blobs  ADAPTERHUB_BLOBS          blobs/ beside an SQLite file (or s3://bucket/prefix)

A PostgreSQL registry is shared by several machines, so its blobs must be shared too: it needs a
blob location and never falls back to a folder in one machine's home. ``postgresql://`` URLs use
psycopg 3 (the ``postgres`` extra) unless they name another driver (``postgresql+asyncpg://``…).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from adapterhub.errors import ConfigError, describe_validation_error

REGISTRY_URL_ENV = "ADAPTERHUB_REGISTRY_URL"
BLOBS_ENV = "ADAPTERHUB_BLOBS"
DB_FILE = "registry.db"
BLOBS_FOLDER = "blobs"
_SCHEMES = ("sqlite", "postgresql", "postgres")


class RegistrySettings(BaseModel):
    """A registry's location as a user gives it (arguments, CLI options or the environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    """Database URL: ``sqlite:///path/registry.db`` or ``postgresql://user:password@host:5432/db``;
    the hub home's ``registry.db`` when unset."""

    blobs: str | None = None
    """Blob location: a folder, or an object-storage URL such as ``s3://bucket/prefix``; the hub
    home's ``blobs`` folder when unset (required with PostgreSQL)."""

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = value.split("://", 1)[0].split("+", 1)[0] if "://" in value else ""
        if scheme not in _SCHEMES:
            raise ValueError(
                "a registry URL starts with sqlite:/// (a file) or postgresql:// (a server), "
                "e.g. postgresql://adapterhub@db.example/adapterhub"
            )
        return value.strip()

    @field_validator("blobs")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @classmethod
    def create(cls, url: str | None = None, blobs: str | Path | None = None) -> RegistrySettings:
        """Checked settings; every problem in one ConfigError."""
        try:
            return cls(url=url, blobs=None if blobs is None else str(blobs))
        except ValidationError as e:
            raise ConfigError([line for _, line in describe_validation_error(e.errors(), root="registry")],
                              source="registry") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RegistrySettings:
        """``ADAPTERHUB_REGISTRY_URL`` and ``ADAPTERHUB_BLOBS``."""
        env = os.environ if environ is None else environ
        return cls.create(env.get(REGISTRY_URL_ENV) or None, env.get(BLOBS_ENV) or None)


@dataclass(frozen=True)
class RegistryLocation:
    """A resolved location: the SQLAlchemy URL to connect to and the blob store's location."""

    url: str  # with its driver, e.g. postgresql+psycopg://...
    blobs: str
    home: Path | None
    db_path: Path | None  # the SQLite file; None for a server database

    @property
    def is_sqlite(self) -> bool:
        return self.db_path is not None

    @property
    def shown(self) -> str:
        """The URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    @classmethod
    def resolve(
        cls,
        home: Path | str | None = None,
        *,
        url: str | None = None,
        blobs: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> RegistryLocation:
        """Explicit ``url``/``blobs``, else the environment, else the hub ``home``'s own files.

        Raises:
            ConfigError: a URL of an unknown kind, or a server database without a blob location.
        """
        env = RegistrySettings.from_env(environ)
        given = RegistrySettings.create(url, blobs)
        chosen_url = given.url or env.url
        chosen_blobs = given.blobs or env.blobs
        folder = Path(home).expanduser() if home is not None else None
        if chosen_url is None:
            if folder is None:
                raise ConfigError("a registry needs a hub home or a URL (sqlite:///... or postgresql://...)",
                                  source="registry")
            chosen_url = f"sqlite:///{(folder / DB_FILE).absolute()}"
        return cls.of(chosen_url, chosen_blobs, home=folder)

    @classmethod
    def of(cls, url: str, blobs: str | Path | None = None, *, home: Path | None = None) -> RegistryLocation:
        """The location of database ``url`` with blobs at ``blobs`` (for SQLite, default: the
        ``blobs`` folder next to the database file). Reads no environment."""
        from sqlalchemy.engine import make_url

        settings = RegistrySettings.create(url, blobs)
        if settings.url is None:
            raise ConfigError("the registry URL is empty; write sqlite:///path or postgresql://...",
                              source="registry")
        parsed = make_url(settings.url)
        backend = parsed.get_backend_name()
        db_path: Path | None = None
        if backend == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise ConfigError(f"registry URL {url!r} names no file; write sqlite:///path/to/registry.db",
                                  source="registry")
            db_path = Path(parsed.database).expanduser().absolute()
            parsed = parsed.set(database=str(db_path))
        else:
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
        folder = home if home is not None else (db_path.parent if db_path is not None else None)
        chosen = settings.blobs
        if chosen is None:
            if db_path is None:
                raise ConfigError(
                    f"the registry at {parsed.render_as_string(hide_password=True)!r} is shared, so its "
                    f"blobs must be too: set {BLOBS_ENV}=s3://bucket/prefix (or a shared folder), or pass "
                    "--blobs", source="registry")
            chosen = str(db_path.parent / BLOBS_FOLDER)  # beside the database, as a home has them
        return cls(url=parsed.render_as_string(hide_password=False), blobs=chosen, home=folder,
                   db_path=db_path)


def location_of(text: str, blobs: str | Path | None = None) -> RegistryLocation:
    """A location a user typed: a database URL, or a hub home folder (its ``registry.db`` and
    ``blobs``). Reads no environment (``registry copy`` names both sides in full)."""
    if "://" in text:
        return RegistryLocation.of(text, blobs)
    home = Path(text).expanduser()
    return RegistryLocation.of(f"sqlite:///{(home / DB_FILE).absolute()}", blobs or home / BLOBS_FOLDER, home=home)
