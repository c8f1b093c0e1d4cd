"""API keys with roles, checked in constant time, and the per-key in-flight request budget.

Design choices:

* **Constant time.** A presented key is hashed once and compared with ``hmac.compare_digest``
  against the hash of *every* configured key, without stopping at a match, so neither the
  position of a key in the table nor the length of a common prefix shows in the timing.
* **Roles.** ``inference`` keys call generation and listing routes; ``admin`` keys call those and
  the adapter-management routes. Missing or unknown key -> 401; inference key on an admin route
  -> 403.
* **No keys = open server.** Every caller is the anonymous admin; :func:`settings.check_bind`
  allows that on loopback only.
* **Budget per key.** :class:`RequestBudget` counts generation requests in flight per key name;
  one beyond ``max_streams_per_key`` is a ``CapacityError`` (429 with ``Retry-After``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from adapterhub.errors import CapacityError
from adapterhub_server.settings import ApiKey, Role

ANONYMOUS = ApiKey(name="anonymous", secret="", role="admin")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name and role (never the secret)."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyTable:
    """The accepted keys, stored as sha256 digests."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._entries = [(_digest(k.secret), Caller(k.name, k.role)) for k in keys]

    @property
    def is_open(self) -> bool:
        """True when no key is configured: every caller is the anonymous admin."""
        return not self._entries

    def authenticate(self, presented: str | None) -> Caller | None:
        """The caller a presented key belongs to, or None. Constant time over the whole table."""
        if self.is_open:
            return Caller(ANONYMOUS.name, ANONYMOUS.role)
        if not presented:
            return None
        given = _digest(presented)
        found: Caller | None = None
        for digest, caller in self._entries:
            if hmac.compare_digest(given, digest) and found is None:
                found = caller
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class RequestBudget:
    """Generation requests in flight per key; the event loop is its only user (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def acquire(self, caller: Caller) -> None:
        """Count one more request for ``caller``; pair with :meth:`release`.

        Raises:
            CapacityError: the key already has ``limit`` requests in flight.
        """
        count = self._in_flight.get(caller.name, 0)
        if count >= self.limit:
            raise CapacityError(
                f"key {caller.name!r} already has {count} requests in flight "
                f"(max_streams_per_key={self.limit}); wait for one to finish or raise "
                "ADAPTERHUB_MAX_STREAMS_PER_KEY",
                retry_after=1.0,
            )
        self._in_flight[caller.name] = count + 1

    def release(self, caller: Caller) -> None:
        left = self._in_flight.get(caller.name, 1) - 1
        if left > 0:
            self._in_flight[caller.name] = left
        else:
            self._in_flight.pop(caller.name, None)

    @contextmanager
    def hold(self, caller: Caller) -> Iterator[None]:
        """:meth:`acquire` for the duration of the block."""
        self.acquire(caller)
        try:
            yield
        finally:
            self.release(caller)
