"""Which replica serves a request, and making sure it holds the request's adapter first.

The router (``adapterhub serve --engine vllm``) keeps, per replica, the adapter names it has
loaded there (least recently used first), the loads under way and the requests in flight. It
speaks vLLM's LoRA API to replicas: ``POST /v1/load_lora_adapter`` with ``{"lora_name",
"lora_path"}``, ``POST /v1/unload_lora_adapter`` with ``{"lora_name"}``, ``GET /health`` and
``GET /v1/models`` (the base first) — what vLLM documents, and what ``adapterhub serve`` answers.

Design choices:

* **Affinity first, unless much busier.** A request for an adapter goes to the least busy
  replica that holds it (or is loading it), unless that one has more than ``affinity_slack``
  requests in flight beyond the least busy healthy replica; then the least busy one loads it (a
  routing miss). Base requests go to the least busy replica.
* **One load per adapter and replica.** A load is an ``asyncio`` future per (replica, name):
  however many requests wait for the adapter, one ``load_lora_adapter`` call is made, and they
  all wait on it. A failed load is forgotten, so the next request tries again.
* **Room by LRU.** A replica holds at most ``max_loras`` names; before one more is loaded the
  least recently used name that no request is using is unloaded. Names in use are never
  unloaded (the replica's own cache then holds one more for a while).
* **Health.** Every replica's ``/health`` is probed each ``health_interval_s``; a failed probe or
  a failed connection on the request path takes it out of routing until a probe succeeds. A
  replica that comes back may have restarted, so what the router thought it held is forgotten
  (loading a name it still holds is answered as loaded, see :meth:`Router._load`).
* The event loop is the only user of this state: no locks besides the load futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from adapterhub.errors import AdapterHubError, ReplicaError, error_class
from adapterhub.registry.export import Exported
from adapterhub_server.metrics import ServerMetrics

log = logging.getLogger("adapterhub.server")


@dataclass(eq=False)
class Replica:
    """What the router knows of one replica."""

    url: str
    healthy: bool = False
    base_model: str | None = None  # the id the replica serves its base under
    max_model_len: int | None = None
    in_flight: int = 0
    loaded: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    using: Counter[str] = field(default_factory=Counter)  # requests holding each name now
    last_error: str | None = None
    gone: bool = False  # it will not come back (a launched vLLM that exited): never probed again

    def holds(self, name: str) -> bool:
        return name in self.loaded or name in self.loading


@dataclass(eq=False)
class Lease:
    """A request's hold on a replica (and on its adapter there); give it back with
    :meth:`Router.release`."""

    replica: Replica
    adapter: Exported | None
    hit: bool
    released: bool = False


class Router:
    """Replicas, their adapters, and the choice of one per request."""

    def __init__(self, urls: Iterable[str], client: httpx.AsyncClient, metrics: ServerMetrics, *,
                 max_loras: int, affinity_slack: int, health_interval_s: float,
                 headers: dict[str, str] | None = None) -> None:
        self.replicas = [Replica(url) for url in urls]
        self.client = client
        self.metrics = metrics
        self.max_loras = max_loras
        self.affinity_slack = affinity_slack
        self.health_interval_s = health_interval_s
        self.headers = headers or {}

    # ------------------------------------------------------------------ choosing

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def pick(self, adapter: Exported | None, exclude: Iterable[Replica] = ()) -> tuple[Replica, bool]:
        """The replica for a request, and whether it already held the adapter.

        Raises:
            ReplicaError: no healthy replica (beyond ``exclude``).
        """
        skip = set(exclude)
        candidates = [r for r in self.replicas if r.healthy and r not in skip]
        if not candidates:
            states = "; ".join(f"{r.url}: {'excluded after failing' if r in skip else r.last_error or 'not checked yet'}"
                               for r in self.replicas)
            raise ReplicaError(
                f"no healthy replica can take this request ({states}); check that the replicas run "
                "and answer GET /health, then retry"
            )
        least = min(candidates, key=lambda r: r.in_flight)
        if adapter is None:
            return least, False
        holders = [r for r in candidates if r.holds(adapter.name)]
        if holders:
            best = min(holders, key=lambda r: r.in_flight)
            if best.in_flight <= least.in_flight + self.affinity_slack:
                return best, True
        return least, False

    async def lease(self, adapter: Exported | None, exclude: Iterable[Replica] = ()) -> Lease:
        """Pick a replica, count the request on it, and load the adapter there if needed.

        Raises:
            ReplicaError: no healthy replica, or the load failed on the one picked.
            AdapterHubError: the replica refused the adapter with a library error (an
                ``adapterhub serve`` replica's 409 for another base, for instance).
        """
        replica, hit = self.pick(adapter, exclude)
        lease = Lease(replica, adapter, hit)
        replica.in_flight += 1
        if adapter is None:
            self.metrics.routing.labels(replica.url, "base").inc()
            return lease
        replica.using[adapter.name] += 1  # from here on the LRU leaves it alone
        self.metrics.routing.labels(replica.url, "hit" if hit else "miss").inc()
        try:
            await self.ensure_loaded(replica, adapter)
        except BaseException:
            self.release(lease)
            raise
        return lease

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        replica = lease.replica
        replica.in_flight -= 1
        if lease.adapter is not None:
            replica.using[lease.adapter.name] -= 1
            if replica.using[lease.adapter.name] <= 0:
                del replica.using[lease.adapter.name]

    # ------------------------------------------------------------------ loading

    async def ensure_loaded(self, replica: Replica, adapter: Exported) -> None:
        """Load ``adapter`` into ``replica`` unless it is there; one load at a time per name."""
        name = adapter.name
        if name in replica.loaded:
            replica.loaded.move_to_end(name)
            return
        pending = replica.loading.get(name)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._load(replica, adapter))
            replica.loading[name] = pending
            pending.add_done_callback(lambda task: _settled(replica, name, task))
        await asyncio.shield(pending)  # a waiter that is cancelled leaves the load to the others

    async def _load(self, replica: Replica, adapter: Exported) -> None:
        await self._make_room(replica, keep=adapter.name)
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self.client.post(
                f"{replica.url}/v1/load_lora_adapter", headers=self.headers,
                json={"lora_name": adapter.name, "lora_path": str(adapter.path)},
            )
            if response.status_code != 200 and not await self._lists(replica, adapter.name):
                # vLLM answers 400 to a second load of a name; one it lists is loaded
                outcome = str(response.status_code)
                raise replica_error(response, f"replica {replica.url} could not load {adapter.label} "
                                              f"(as {adapter.name!r})")
            outcome = "loaded"
        except httpx.TransportError as e:
            self.mark_failed(replica, e)
            raise ReplicaError(
                f"replica {replica.url} failed while loading {adapter.label} ({type(e).__name__}: {e})"
            ) from e
        finally:
            self.metrics.replica_loads.labels(replica.url, adapter.metric_label, outcome).inc()
        self.metrics.replica_load_seconds.labels(replica.url).observe(time.perf_counter() - started)
        replica.loaded[adapter.name] = None
        log.info("loaded %s into %s as %s in %.0f ms", adapter.label, replica.url, adapter.name,
                 1000 * (time.perf_counter() - started))

    async def _lists(self, replica: Replica, name: str) -> bool:
        """Whether the replica's ``/v1/models`` lists ``name``."""
        try:
            response = await self.client.get(f"{replica.url}/v1/models", headers=self.headers)
            return response.status_code == 200 and any(
                m.get("id") == name for m in response.json().get("data", []))
        except (httpx.HTTPError, ValueError):
            return False

    async def _make_room(self, replica: Replica, keep: str) -> None:
        """Unload least recently used names no request uses until one more fits."""
        while len(replica.loaded) + len(replica.loading) > self.max_loras:
            victim = next((n for n in replica.loaded if n != keep and not replica.using[n]), None)
            if victim is None:
                log.warning("replica %s: every one of its %d adapters is in use; loading one more",
                            replica.url, len(replica.loaded))
                return
            del replica.loaded[victim]
            self.metrics.replica_unloads.labels(replica.url).inc()
            with contextlib.suppress(httpx.HTTPError):
                await self.client.post(f"{replica.url}/v1/unload_lora_adapter", headers=self.headers,
                                       json={"lora_name": victim})

    def forget(self, replica: Replica, name: str) -> None:
        """The replica no longer has ``name`` (it answered 404 for it): load it again next time."""
        replica.loaded.pop(name, None)

    # ------------------------------------------------------------------ health

    def mark_gone(self, replica: Replica, why: str) -> None:
        """The replica will not come back: out of routing for good, ``why`` its last error."""
        self.mark_failed(replica, why)
        replica.gone = True

    def mark_failed(self, replica: Replica, error: BaseException | str) -> None:
        if replica.healthy:
            log.warning("replica %s taken out of routing: %s", replica.url, error)
        replica.healthy = False
        replica.last_error = str(error) or type(error).__name__
        replica.loaded.clear()  # it may come back restarted, holding nothing

    async def check(self, replica: Replica) -> bool:
        """Probe ``/health`` (and learn the base's id and context from ``/v1/models`` once)."""
        if replica.gone:
            return False
        try:
            response = await self.client.get(f"{replica.url}/health", headers=self.headers, timeout=5.0)
            if response.status_code != 200:
                raise ReplicaError(f"GET /health answered {response.status_code}")
            if replica.base_model is None or not replica.healthy:
                models = await self.client.get(f"{replica.url}/v1/models", headers=self.headers, timeout=10.0)
                if models.status_code != 200:
                    raise ReplicaError(f"GET /v1/models answered {models.status_code}: {models.text[:200]}")
                base = models.json()["data"][0]
                replica.base_model = str(base["id"])
                replica.max_model_len = base.get("max_model_len")
        except (httpx.HTTPError, ValueError, KeyError, IndexError, ReplicaError) as e:
            self.mark_failed(replica, e)
            return False
        if not replica.healthy:
            log.info("replica %s is healthy (base %s)", replica.url, replica.base_model)
        replica.healthy = True
        replica.last_error = None
        return True

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    async def watch(self) -> None:
        """Probe every replica forever, each ``health_interval_s``."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.check_all()

    def stats(self) -> list[tuple[str, bool, int, int]]:
        return [(r.url, r.healthy, r.in_flight, len(r.loaded)) for r in self.replicas]

    def describe(self) -> list[dict[str, Any]]:
        """Each replica's state, for ``GET /admin/replicas``."""
        return [
            {"url": r.url, "healthy": r.healthy, "base_model": r.base_model, "max_model_len": r.max_model_len,
             "in_flight": r.in_flight, "loaded": list(r.loaded), "loading": sorted(r.loading),
             "last_error": r.last_error}
            for r in self.replicas
        ]


def _settled(replica: Replica, name: str, task: asyncio.Future[None]) -> None:
    """A load ended: forget it (a failed one is tried again by the next request); its error is
    its waiters' to raise, and is read here so that a load nobody waits for any more is quiet."""
    replica.loading.pop(name, None)
    if not task.cancelled():
        task.exception()


def replica_error(response: httpx.Response, what: str) -> AdapterHubError:
    """The library error a replica's error answer stands for: the class its wire ``code`` names
    (an ``adapterhub serve`` replica), else :class:`ReplicaError` with the replica's message."""
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error.get("code") or "")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:300], ""
    cls = error_class(code) if code else None
    if cls is not None and cls is not ReplicaError:
        try:
            return cls(f"{what}: {message}")
        except TypeError:  # a class whose constructor wants more than a message
            pass
    return ReplicaError(f"{what}: {response.status_code} {message}")
