"""The replica backend (``adapterhub serve --engine vllm``): the same API, decoded elsewhere.

:class:`ReplicaService` takes the place of :class:`~adapterhub_server.service.InferenceService`
when ``backend="vllm"``. It keeps what the control plane owns — keys, refs and aliases, the
registry, metrics — and forwards ``/v1/chat/completions`` and ``/v1/completions`` to replicas
that speak vLLM's LoRA API (vLLM, SGLang, another ``adapterhub serve``), chosen by
:class:`~adapterhub_server.replicas.Router`.

Design choices:

* **``--launch-vllm``** starts one local ``vllm serve`` of the base as one more replica
  (:mod:`~adapterhub_server.vllm_launch`) and stops it in :meth:`ReplicaService.close`.
* **No base in memory.** The router reads the base's name and fingerprint from the hub home
  (``adapterhub init`` as for our engine) and never loads its weights; tokenizing, templates and
  sampling are the replica's.
* **Refs resolve here, once per request** (worker thread: the registry is SQLite). A version is
  exported into the replica cache under its digest name (:mod:`adapterhub.registry.export`)
  once per router process (hashing a large adapter's files on every request would cost more
  than routing), and checked against this hub's base first, so the errors (404 unknown ref, 409 another base)
  are those of our engine. A mix becomes a derived adapter there too; over
  ``replica_max_lora_rank`` it is a 409 naming the rank.
* **Bodies pass through.** The client's JSON goes to the replica as sent, with ``model`` set to
  the served name (or the replica's base id) and our own fields (``adapter_id``, ``mix``)
  removed; answers come back with ``model`` set to what the client asked for, and with our
  ``X-Adapter-Version`` header. A replica's error answer (already OpenAI's shape) passes through
  with its status.
* **Retry once where nothing was sent.** A failed connection or a 5xx before the first byte of
  the answer reaches the client is retried once on another replica (the first is taken out of
  routing on a failed connection). A 404 for an adapter the router thought loaded means the
  replica lost it (a restart): it is loaded again and the request retried once.
* **Streams** are read line by line; every ``data:`` event is re-encoded with the client's
  ``model``. ``stream_options.include_usage`` is always asked of the replica, so token metrics
  are exact; the usage event is dropped again when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from fastapi import HTTPException

from adapterhub.errors import AdapterHubError, ConfigError, ReplicaError
from adapterhub.registry.export import Exported, export_mix, export_version, served_name
from adapterhub.registry.store import ensure_compatible
from adapterhub_server.auth import RequestBudget
from adapterhub_server.errors import sse_error_event
from adapterhub_server.lifecycle import Phase, ServiceLifecycle
from adapterhub_server.metrics import ServerMetrics
from adapterhub_server.replicas import Lease, Router
from adapterhub_server.schemas import ChatCompletionRequest, CompletionRequest
from adapterhub_server.service import BASE_LABEL
from adapterhub_server.settings import ServerSettings
from adapterhub_server.vllm_launch import VllmProcess

if TYPE_CHECKING:
    from adapterhub.facade import Hub
    from adapterhub.models.base import BaseInfo

log = logging.getLogger("adapterhub.server")
_OUR_FIELDS = ("adapter_id", "mix")  # request fields of ours that a vLLM replica does not know


@dataclass(frozen=True)
class RouterLoaded:
    """What the replica backend has once started: the hub (registry, base info) and the router."""

    hub: Hub
    router: Router


@dataclass(eq=False)
class Forwarded:
    """A replica's answer whose status and headers have arrived (its body not yet, when streamed)."""

    lease: Lease
    response: httpx.Response
    lines: AsyncIterator[str] | None = None  # a stream's lines, the first already read into first_line
    first_line: str | None = None
    first_event: dict[str, Any] | None = None  # first_line's JSON, parsed once (None: not JSON)


class ReplicaService(ServiceLifecycle[RouterLoaded]):
    """Hub + router for one app, and forwarding requests to replicas."""

    starting_reason = "the router is still starting; retry shortly"
    failed_reason = "the router could not start"

    def __init__(self, settings: ServerSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``transport``: how to reach the replicas (httpx's default when None; tests pass one)."""
        super().__init__()
        self.settings = settings
        self._transport = transport
        self.budget = RequestBudget(settings.max_streams_per_key)
        self.metrics = ServerMetrics(None, replica_stats=self._replica_stats)
        self._tasks: list[asyncio.Task[None]] = []  # watchers, cancelled on close
        self._client: httpx.AsyncClient | None = None
        self._vllm: VllmProcess | None = None  # --launch-vllm
        self._exported: dict[str, Exported] = {}  # served name -> its folder, exported this run
        self._mixes: dict[tuple[tuple[str, ...], tuple[float, ...]], Exported] = {}  # (versions, weights) -> mix

    # ------------------------------------------------------------------ lifecycle (see lifecycle.py)

    async def _start(self) -> RouterLoaded:
        from adapterhub.facade import Hub

        s = self.settings
        hub = await anyio.to_thread.run_sync(lambda: Hub(s.home, registry=s.registry_url, blobs=s.blobs))
        await anyio.to_thread.run_sync(lambda: hub.base_info)  # raises BaseModelError with the fix
        urls = list(s.replicas)
        if s.launch_vllm:
            self._vllm = VllmProcess(s, hub.base_info, hub.home)
            urls.append(await self._vllm.start())
        headers = {}
        if s.replica_api_key is not None:
            headers["Authorization"] = f"Bearer {s.replica_api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            transport=self._transport, timeout=httpx.Timeout(s.replica_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        try:
            router = Router(urls, self._client, self.metrics, max_loras=s.replica_max_loras,
                            affinity_slack=s.affinity_slack, health_interval_s=s.replica_health_interval_s,
                            headers=headers)
            await router.check_all()
        except BaseException:  # a start that failed holds no vLLM (and its memory) until shutdown
            with anyio.CancelScope(shield=True):
                await self._release()
            raise
        return RouterLoaded(hub, router)

    def _on_ready(self, loaded: RouterLoaded) -> None:
        router = loaded.router
        self._tasks.append(asyncio.get_running_loop().create_task(router.watch()))
        if self._vllm is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_vllm(router, self._vllm)))
        log.info("ready: base %s over %d replicas (%d healthy)", self.base_name, len(router.replicas),
                 len(router.healthy()))

    async def _watch_vllm(self, router: Router, vllm: VllmProcess) -> None:
        """The launched vLLM ended before shutdown (a bad flag, out of memory): say so, for good."""
        status = await vllm.wait()
        if self.phase is Phase.STOPPING:
            return
        why = f"the launched vLLM exited with status {status}; its log {vllm.log_path} says why"
        log.error("%s", why)
        for replica in router.replicas:
            if replica.url == vllm.url:
                router.mark_gone(replica, why)

    def begin_drain(self, grace_s: float) -> None:
        self.phase = Phase.STOPPING

    async def close(self) -> None:
        self.phase = Phase.STOPPING
        tasks = [*self._tasks, *([self._starter] if self._starter is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
        await self._release()

    async def _release(self) -> None:
        """Close the replicas' client and stop the launched vLLM (each once)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self._vllm is not None:
            await self._vllm.stop()

    def _replica_stats(self) -> list[tuple[str, bool, int, int]]:
        return self._loaded.router.stats() if self._loaded is not None else []

    # ------------------------------------------------------------------ identity

    @property
    def base_info(self) -> BaseInfo:
        return self.loaded.hub.base_info

    @property
    def base_name(self) -> str:
        return self.base_info.name

    @property
    def max_model_len(self) -> int | None:
        lengths = [r.max_model_len for r in self.loaded.router.replicas if r.max_model_len]
        return min(lengths) if lengths else None

    # ------------------------------------------------------------------ request -> replica

    def check_limits(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        """The limits our engine's server applies before any work (``n``, ``max_tokens``)."""
        s = self.settings
        problems = []
        if body.n > s.max_n:
            problems.append(f"n={body.n} is over the server's max_n={s.max_n}; ask for fewer choices")
        if body.max_tokens is not None and body.max_tokens > s.max_tokens_limit:
            problems.append(f"max_tokens={body.max_tokens} is over the server's max_tokens_limit="
                            f"{s.max_tokens_limit}; ask for fewer")
        if problems:
            raise ConfigError(problems, source="request")

    async def adapter_for(self, body: ChatCompletionRequest | CompletionRequest) -> Exported | None:
        """The exported adapter a request needs (None for the base), resolved off the event loop.

        Raises:
            ConfigError: a mix with ``model`` naming an adapter.
            AdapterNotFoundError: an unknown ref.
            IncompatibleAdapterError: a version of another base, or a mix over the max rank.
        """
        hub = self.ready().hub
        base = self.base_name
        s = self.settings
        cache = s.replica_cache or hub.home / "replica-cache"
        info = self.base_info
        if body.mix is not None:
            if body.model != base:
                raise ConfigError(
                    f"model={body.model!r} with mix: a mix combines adapters over the base, so "
                    f"model must be the base {base!r}"
                )
            refs = [m.ref for m in body.mix]
            weights = [m.weight for m in body.mix]

            def mixed() -> Exported:
                versions = [hub.resolve(ref) for ref in refs]  # aliases may have moved: resolved each time
                key = (tuple(v.ref for v in versions), tuple(weights))
                exported = self._mixes.get(key)
                if exported is None:  # versions are immutable: checked and written once per process
                    for version in versions:
                        ensure_compatible(version, info.fingerprint, info.template_hash)
                    exported = self._mixes[key] = export_mix(hub.registry, versions, weights, cache,
                                                             max_rank=s.replica_max_lora_rank)
                return exported

            return await anyio.to_thread.run_sync(mixed)
        ref = body.adapter_id or body.model
        if ref == base:
            return None

        def one() -> Exported:
            version = hub.resolve(ref)
            ensure_compatible(version, info.fingerprint, info.template_hash)
            name = served_name(version)
            exported = self._exported.get(name)
            if exported is None:  # checked and written once per process; the name pins the weights
                exported = self._exported[name] = export_version(hub.registry, version, cache)
            return exported

        return await anyio.to_thread.run_sync(one)

    def payload(self, raw: dict[str, Any], served_model: str) -> dict[str, Any]:
        """The body a replica gets: the client's, ``model`` replaced, our fields removed,
        usage always asked for in a stream."""
        out = {k: v for k, v in raw.items() if k not in _OUR_FIELDS}
        out["model"] = served_model
        if out.get("stream"):
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        return out

    async def forward(self, path: str, raw: dict[str, Any], adapter: Exported | None,
                      stream: bool) -> Forwarded:
        """Send the request to a replica (retrying once, see the module docstring) and return
        once its status and headers (and a stream's first line) have arrived.

        Raises:
            ReplicaError: no healthy replica, or both tries failed before any answer.
        """
        router = self.ready().router
        tried: list[Any] = []
        reloaded = retried_load = False
        last: BaseException | None = None

        def failed_on(replica: Any, lease: Any, error: BaseException, label: str, status: str, *, broken: bool) -> bool:
            """One try failed on ``replica`` (``broken``: the connection, so it leaves the healthy
            set): release and count it; True when another replica gets a try."""
            nonlocal last, tried
            router.release(lease)
            if broken:
                router.mark_failed(replica, error)
            self.metrics.replica_requests.labels(replica.url, label, status).inc()
            last, tried = error, [*tried, replica]
            if len(tried) >= 2:
                return False
            self.metrics.replica_retries.labels(replica.url).inc()
            return True

        for _ in range(3):  # a first try, one retry elsewhere, and one reload after a 404
            try:
                lease = await router.lease(adapter, exclude=tried)
            except ReplicaError as e:
                others = [r for r in router.healthy() if r not in tried]
                if not retried_load and others:  # the load failed there (and took it out): once more
                    retried_load, last = True, e
                    continue
                if not tried:
                    raise
                break  # no other replica to retry on: say what failed first
            replica = lease.replica
            model = adapter.name if adapter is not None else replica.base_model or self.base_name
            request = router.client.build_request("POST", f"{replica.url}{path}", headers=router.headers,
                                                  json=self.payload(raw, model))
            label = adapter.metric_label if adapter is not None else BASE_LABEL
            try:
                response = await router.client.send(request, stream=True)
            except httpx.TransportError as e:
                if failed_on(replica, lease, e, label, "error", broken=True):
                    continue
                break
            except BaseException:  # cancelled: the client went away while the replica worked
                router.release(lease)
                raise
            if response.status_code == 404 and adapter is not None and not reloaded:
                await response.aclose()
                router.release(lease)
                router.forget(replica, adapter.name)
                reloaded = True
                continue
            if response.status_code >= 500 and not tried and len(router.healthy()) > 1:  # once, elsewhere
                await response.aread()
                await response.aclose()
                failed_on(replica, lease, ReplicaError(f"{replica.url} answered {response.status_code}"), label,
                          str(response.status_code), broken=False)
                continue
            forwarded = Forwarded(lease, response)
            if stream and response.status_code == 200:
                try:
                    forwarded.lines = response.aiter_lines()
                    forwarded.first_line = await _first_event(forwarded.lines)
                    forwarded.first_event = _parse_event(forwarded.first_line)
                except httpx.TransportError as e:
                    await response.aclose()
                    if failed_on(replica, lease, e, label, "error", broken=True):
                        continue
                    break
                except BaseException:
                    router.release(lease)
                    await response.aclose()
                    raise
            return forwarded
        raise ReplicaError(
            f"the request failed on {len(tried)} replica(s) ({', '.join(r.url for r in tried)}) before any "
            f"answer ({type(last).__name__}: {last}); retry, or check the replicas"
        ) from last

    def finish(self, forwarded: Forwarded, adapter: Exported | None, endpoint: str, outcome: str,
               usage: dict[str, Any] | None, started: float, spend: Callable[[int], None] | None = None) -> None:
        """Give the lease back and count the request (``spend`` is told its prompt + completion
        tokens: the key's tokens per minute)."""
        self.loaded.router.release(forwarded.lease)
        label = adapter.metric_label if adapter is not None else BASE_LABEL
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        url = forwarded.lease.replica.url
        self.metrics.replica_requests.labels(url, label, outcome).inc()
        self.metrics.replica_tokens.labels(url, label, "prompt").inc(prompt)
        self.metrics.replica_tokens.labels(url, label, "completion").inc(completion)
        self.metrics.request_done(label, endpoint, outcome, prompt, completion, time.perf_counter() - started)
        if spend is not None:
            spend(prompt + completion)

    async def events(self, forwarded: Forwarded, adapter: Exported | None, endpoint: str, model: str,
                     include_usage: bool, started: float,
                     spend: Callable[[int], None] | None = None) -> AsyncIterator[str]:
        """The replica's SSE events with the client's ``model``, ending with ``data: [DONE]``."""
        response = forwarded.response
        usage: dict[str, Any] | None = None
        outcome = "cancelled"
        finish: str | None = None  # the first choice's finish reason, the outcome as our engine counts it
        first_token = True
        parsed = forwarded.first_event  # the first line's, parsed in forward(): not again
        try:
            async for line in _lines(forwarded):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    outcome = outcome if outcome == "error" else finish or "stop"
                    break
                event, parsed = (parsed, None) if parsed is not None else (json.loads(data), None)
                if "error" in event:
                    outcome = "error"
                    yield f"data: {data}\n\n"
                    continue
                if event.get("usage"):
                    usage = event["usage"]
                    if not include_usage:
                        if not event.get("choices"):
                            continue
                        event.pop("usage")
                for choice in event.get("choices") or ():
                    if finish is None and choice.get("index", 0) == 0 and choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                if first_token and event.get("choices"):
                    first_token = False
                    self.metrics.first_tokens(started, 1)
                event["model"] = model
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
        except httpx.TransportError as e:
            outcome = "error"
            self.loaded.router.mark_failed(forwarded.lease.replica, e)
            yield sse_error_event(ReplicaError(
                f"replica {forwarded.lease.replica.url} failed mid-stream ({type(e).__name__}); the answer "
                "is cut short: retry the request"))
        except ValueError as e:
            outcome = "error"
            yield sse_error_event(ReplicaError(f"replica {forwarded.lease.replica.url} sent an event that is "
                                               f"not JSON ({e})"))
        finally:
            await response.aclose()
            self.finish(forwarded, adapter, endpoint, outcome, usage, started, spend)
        yield "data: [DONE]\n\n"

    async def answer(self, forwarded: Forwarded, adapter: Exported | None, endpoint: str, model: str,
                     started: float, spend: Callable[[int], None] | None = None) -> tuple[int, dict[str, Any]]:
        """A non-streamed answer's status and JSON with the client's ``model``.

        Raises:
            ReplicaError: the replica failed while answering, or answered no JSON.
        """
        response = forwarded.response
        replica = forwarded.lease.replica
        status = response.status_code
        body: Any = None
        try:
            await response.aread()
            body = response.json()
        except httpx.TransportError as e:
            self.loaded.router.mark_failed(replica, e)
            raise ReplicaError(f"replica {replica.url} failed while answering ({type(e).__name__}); "
                               "retry the request") from e
        except ValueError as e:
            raise ReplicaError(f"replica {replica.url} answered {status} with a body that is not JSON: "
                               f"{response.text[:200]!r}") from e
        finally:
            await response.aclose()
            ok = status == 200 and isinstance(body, dict)
            outcome = _finish_reason(body) if ok else str(status) if body is not None else "error"
            self.finish(forwarded, adapter, endpoint, outcome, body.get("usage") if ok else None, started, spend)
        if status == 200:
            body["model"] = model
        return status, body

    def count_refused(self, endpoint: str, error: BaseException) -> None:
        kind = type(error).__name__ if isinstance(error, AdapterHubError | HTTPException) else "internal"
        self.metrics.refused(endpoint, kind)


def _finish_reason(body: dict[str, Any]) -> str:
    choices = body.get("choices") or [{}]
    return str(choices[0].get("finish_reason") or "stop")


async def _first_event(lines: AsyncIterator[str]) -> str | None:
    """Read up to a stream's first ``data:`` line (None when it ends before one)."""
    async for line in lines:
        if line.startswith("data:"):
            return line
    return None


def _parse_event(line: str | None) -> dict[str, Any] | None:
    """A ``data:`` line's JSON object; None for ``[DONE]``, no line, or not a JSON object."""
    data = (line or "data: [DONE]")[5:].strip()
    if data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


async def _lines(forwarded: Forwarded) -> AsyncIterator[str]:
    """A stream's lines from its first ``data:`` line on."""
    if forwarded.first_line is not None:
        yield forwarded.first_line
    async for line in forwarded.lines or forwarded.response.aiter_lines():
        yield line
