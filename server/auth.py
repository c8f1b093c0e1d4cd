"""API keys with roles or tenant limits, checked in constant time; the keys file reloaded while
the server runs; per-key budgets (requests in flight, requests and tokens per minute).

Design choices:

* **Constant time.** A presented key is hashed once and compared with ``hmac.compare_digest``
  against the hash of *every* configured key, without stopping at a match, so neither the
  position of a key in the table nor the length of a common prefix shows in the timing.
* **Route groups.** A key may call the groups ``inference`` (``/v1/*``), ``jobs``
  (``/admin/jobs*``) and ``admin`` (the rest of ``/admin``). The two roles are shorthands:
  ``inference`` is ``[inference]``, ``admin`` all three, so a key without ``routes`` behaves as
  before. Missing or unknown key -> 401; a route outside the key's groups -> 403.
* **Adapter allowlists** (:meth:`Caller.may_use`): fnmatch globs over adapter names; the base is
  always allowed. What the routes do with them is in :mod:`adapterhub_server.tenants`.
* **Reloading** (:class:`KeyRing`): on a request, at most once a second, the keys file's
  ``stat`` is compared with the last one read; when it changed the file is read and checked
  whole, then the new table replaces the old one in one assignment (never half applied). An
  invalid file, or one that would leave a keyed server with no key at all (which would open it),
  is logged as an error and the old table stays. Env keys never change.
* **No keys = open server.** Every caller is the anonymous admin; :func:`settings.check_bind`
  allows that on loopback only.
* **Budget per key.** :class:`RequestBudget` counts generation requests in flight per key name;
  one beyond ``max_streams_per_key`` is a ``CapacityError`` (429 with ``Retry-After``).
* **Rates per key** (:class:`KeyRates`): a sliding 60 s window per key name of the generation
  requests it started and the tokens (prompt + completion) they used, counted when each ends. A
  request arriving when either is spent is a ``CapacityError`` whose ``retry_after`` is when the
  oldest entry leaves the window. The windows live in this process's memory: one server process
  enforces its own limits (several processes behind a balancer would each allow the full rate),
  and a restart forgets them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adapterhub.errors import CapacityError, ConfigError
from adapterhub_server.settings import ApiKey, Role, read_keys_file

ANONYMOUS = ApiKey(name="anonymous", secret="", role="admin")
WINDOW_S = 60.0
"""The length of the requests- and tokens-per-minute window."""
RELOAD_CHECK_S = 1.0
"""How often (at most) a request looks at the keys file's modification time."""
log = logging.getLogger("adapterhub.server")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name, role and tenant limits (never the secret).

    Attributes:
        routes: the route groups the key may call (``inference``, ``jobs``, ``admin``).
        adapters: fnmatch globs of the adapter names it may use; None: every adapter.
    """

    name: str
    role: Role
    routes: frozenset[str]
    adapters: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @classmethod
    def from_key(cls, key: ApiKey) -> Caller:
        return cls(key.name, key.role, key.route_groups, key.adapters, key.requests_per_minute,
                   key.tokens_per_minute)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.routes

    @property
    def is_restricted(self) -> bool:
        """Whether an adapter allowlist applies (then what it may not use is hidden)."""
        return self.adapters is not None

    def may_call(self, group: str) -> bool:
        return group in self.routes

    def may_use(self, name: str) -> bool:
        """Whether the adapter ``name`` (a name, not a ref) is on the key's list."""
        return self.adapters is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.adapters)


class KeyTable:
    """The accepted keys, stored as sha256 digests."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._entries = [(_digest(k.secret), Caller.from_key(k)) for k in keys]

    @property
    def is_open(self) -> bool:
        """True when no key is configured: every caller is the anonymous admin."""
        return not self._entries

    def authenticate(self, presented: str | None) -> Caller | None:
        """The caller a presented key belongs to, or None. Constant time over the whole table."""
        if self.is_open:
            return Caller.from_key(ANONYMOUS)
        if not presented:
            return None
        given = _digest(presented)
        found: Caller | None = None
        for digest, caller in self._entries:
            if hmac.compare_digest(given, digest) and found is None:
                found = caller
        return found


class KeyRing:
    """The key table of a server: env keys plus the keys file, re-read when the file changes.

    Args:
        fixed: keys that never change (the environment's).
        keys_file: the keys file, or None.
        initial: the keys the server started with (``fixed`` plus the file's, already read).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, fixed: tuple[ApiKey, ...], keys_file: Path | None, initial: tuple[ApiKey, ...],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fixed = fixed
        self.keys_file = keys_file
        self.table = KeyTable(initial)
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = clock()
        self._seen = self._stat()

    @property
    def is_open(self) -> bool:
        return self.table.is_open

    def authenticate(self, presented: str | None) -> Caller | None:
        """As :meth:`KeyTable.authenticate`, against the newest valid keys file."""
        self.reload_if_changed()
        return self.table.authenticate(presented)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.keys_file is None:
            return None
        try:
            st = os.stat(Path(self.keys_file).expanduser())
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Re-read the keys file if its ``stat`` changed (looked at once a second at most).

        Returns:
            Whether a new table was put in place.
        """
        if self.keys_file is None or self._clock() - self._checked < RELOAD_CHECK_S:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another request is already looking
        try:
            self._checked = self._clock()
            seen = self._stat()
            if seen == self._seen:
                return False
            self._seen = seen  # a bad file is reported once, not on every request
            try:
                keys = self.fixed + read_keys_file(self.keys_file)
            except ConfigError as e:
                log.error("keys file not reloaded, the previous keys stay in force: %s", e)
                return False
            if not keys and not self.table.is_open:
                log.error("keys file %r not reloaded: it has no key, which would open this server "
                          "to every client; the previous keys stay in force", str(self.keys_file))
                return False
            self.table = KeyTable(keys)  # one assignment: a request sees the old or the new table
            log.info("keys file %r reloaded: %d keys", str(self.keys_file), len(keys))
            return True
        finally:
            self._lock.release()


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


class KeyRates:
    """Requests and tokens per key name in a sliding 60 s window (in this process only).

    Used from the event loop and from worker threads, so a lock guards the windows.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def _trim(self, name: str, now: float) -> None:
        starts = self._requests.get(name)
        while starts and starts[0] <= now - WINDOW_S:
            starts.popleft()
        spent = self._tokens.get(name)
        while spent and spent[0][0] <= now - WINDOW_S:
            spent.popleft()

    def admit(self, caller: Caller) -> None:
        """Count one generation request of ``caller``, unless its window is spent.

        Raises:
            CapacityError: the key's requests or tokens for the last 60 s are spent;
                ``retry_after`` is the wait until enough of them leave the window.
        """
        rpm, tpm = caller.requests_per_minute, caller.tokens_per_minute
        if rpm is None and tpm is None:
            return
        with self._lock:
            now = self._clock()
            self._trim(caller.name, now)
            starts = self._requests.setdefault(caller.name, deque())
            spent = self._tokens.setdefault(caller.name, deque())
            if rpm is not None and len(starts) >= rpm:
                wait = starts[len(starts) - rpm] + WINDOW_S - now
                raise CapacityError(
                    f"key {caller.name!r} has started {len(starts)} requests in the last 60 s "
                    f"(requests_per_minute={rpm}); retry in {wait:.0f} s or ask for a higher limit",
                    retry_after=max(wait, 0.001),
                )
            used = sum(n for _, n in spent)
            if tpm is not None and used >= tpm:
                left, wait = used, 0.0
                for at, n in spent:  # the oldest entries leave first
                    left -= n
                    wait = at + WINDOW_S - now
                    if left < tpm:
                        break
                raise CapacityError(
                    f"key {caller.name!r} has used {used} tokens in the last 60 s "
                    f"(tokens_per_minute={tpm}); retry in {wait:.0f} s or ask for a higher limit",
                    retry_after=max(wait, 0.001),
                )
            if rpm is not None:
                starts.append(now)

    def spend(self, caller: Caller, tokens: int) -> None:
        """Count the prompt + completion tokens a finished generation of ``caller`` used."""
        if caller.tokens_per_minute is None or tokens <= 0:
            return
        with self._lock:
            self._tokens.setdefault(caller.name, deque()).append((self._clock(), tokens))

    def used(self, caller: Caller) -> tuple[int, int]:
        """(requests, tokens) of ``caller`` in the current window."""
        with self._lock:
            self._trim(caller.name, self._clock())
            return len(self._requests.get(caller.name, ())), sum(n for _, n in self._tokens.get(caller.name, ()))
