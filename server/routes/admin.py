"""Admin routes: adapter residency (load, pin, unload, list) and registry reads/writes.

Every route here needs an admin key (:data:`~adapterhub_server.deps.AdminCaller`); an inference
key gets 403. Blocking calls (the engine's admin queue, SQLite) run in worker threads. Shapes
are the library's wire schemas in :mod:`adapterhub.protocol`, which the TUI's HTTP backend
parses too. vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` are here as well,
answering plain text as vLLM does.

A key with an adapter allowlist (:mod:`adapterhub_server.tenants`) names only those adapters
here too (others answer as unknown, 404), and the lists leave the others out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

import adapterhub
from adapterhub.core.refs import validate_name
from adapterhub.errors import AdapterNotFoundError, ConfigError
from adapterhub.protocol import (
    DeleteResponse,
    LoadAdapterRequest,
    PinAdapterRequest,
    ResidencyResponse,
    ResidentAdapterInfo,
    ServerInfo,
    TagRequest,
    UnloadAdapterRequest,
    UnloadResponse,
    VersionInfo,
    VersionList,
    VllmLoadLoraRequest,
    VllmUnloadLoraRequest,
)
from adapterhub_server.deps import AdminCaller, HubDep, ReadyService
from adapterhub_server.schemas import ERROR_RESPONSES, json_error_responses
from adapterhub_server.tenants import check_ref

router = APIRouter(tags=["admin"], responses={**ERROR_RESPONSES, 403: ERROR_RESPONSES[401] | {
    "description": "An inference key on an admin route"}})
registry_router = APIRouter(tags=["admin"], responses=router.responses)
"""The registry's routes: the same with our engine and with replicas (``--engine vllm``)."""
# vLLM's routes answer text/plain; their errors are still OpenAI JSON
_PLAIN_TEXT_ROUTE_ERRORS = json_error_responses({s: r["description"] for s, r in router.responses.items()})


@router.get("/admin/info", response_model=ServerInfo, summary="The base this server serves")
async def info(_: AdminCaller, service: ReadyService, hub: HubDep) -> ServerInfo:
    base = hub.base
    return ServerInfo(
        base_name=base.info.name, base_fingerprint=base.info.fingerprint,
        template_hash=base.info.template_hash, precision=base.precision,
        max_model_len=service.max_model_len, home=str(hub.home), version=adapterhub.__version__,
    )


@router.get("/admin/adapters", response_model=ResidencyResponse,
            summary="Adapters in slots, cache counters, queue")
async def residency(caller: AdminCaller, service: ReadyService) -> ResidencyResponse:
    stats = await anyio.to_thread.run_sync(service.ready().engine.stats)
    resident = [r for r in stats.resident if caller.may_use(r.ref.partition("@")[0])]
    return ResidencyResponse(
        max_slots=stats.max_slots, slots_used=len(stats.resident),
        resident=[ResidentAdapterInfo.from_resident(r) for r in resident],
        cached_adapters=stats.cached_adapters, loads_in_flight=stats.loads_in_flight,
        cache_hits=stats.cache_hits, cache_misses=stats.cache_misses,
        queue_depth=stats.queue_depth, running_rows=stats.running_rows, max_rows=stats.max_rows,
    )


@router.post("/admin/adapters/load", response_model=ResidentAdapterInfo,
             summary="Warm an adapter into a slot (optionally pinned)")
async def load(body: LoadAdapterRequest, caller: AdminCaller, service: ReadyService) -> ResidentAdapterInfo:
    check_ref(caller, body.ref)
    engine = service.ready().engine
    resident = await anyio.to_thread.run_sync(lambda: engine.load_adapter(body.ref, pin=body.pin))
    return ResidentAdapterInfo.from_resident(resident)


@router.post("/admin/adapters/pin", response_model=ResidentAdapterInfo,
             summary="Pin (loading if needed) or unpin an adapter")
async def pin(body: PinAdapterRequest, caller: AdminCaller, service: ReadyService) -> ResidentAdapterInfo:
    check_ref(caller, body.ref)
    engine = service.ready().engine
    resident = await anyio.to_thread.run_sync(lambda: engine.pin_adapter(body.ref, body.pinned))
    return ResidentAdapterInfo.from_resident(resident)


@router.post("/admin/adapters/unload", response_model=UnloadResponse,
             summary="Drop an adapter from its slot and the cache")
async def unload(body: UnloadAdapterRequest, caller: AdminCaller, service: ReadyService) -> UnloadResponse:
    check_ref(caller, body.ref)
    engine = service.ready().engine
    version = await anyio.to_thread.run_sync(engine.resolve, body.ref)  # once, off the event loop
    unloaded = await anyio.to_thread.run_sync(engine.unload_adapter, version)
    return UnloadResponse(ref=version.ref, unloaded=unloaded)


# ---------------------------------------------------------------------------- vLLM shapes


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=_PLAIN_TEXT_ROUTE_ERRORS,
             summary="vLLM-compatible: load a registered ref, or a local PEFT folder (imported unless the latest version of that name has its files)")
async def vllm_load(body: VllmLoadLoraRequest, caller: AdminCaller, service: ReadyService, hub: HubDep) -> str:
    check_ref(caller, body.lora_name)
    engine = service.ready().engine
    ref = body.lora_name
    if body.lora_path is not None:
        name = validate_name(body.lora_name, field="lora_name")
        path = Path(body.lora_path)
        if not path.is_absolute():
            raise ConfigError(f"lora_path={body.lora_path!r} must be an absolute path on the server")
        version = await anyio.to_thread.run_sync(lambda: hub.import_or_reuse_adapter(path, name))
        ref = version.ref
    resident = await anyio.to_thread.run_sync(lambda: engine.load_adapter(ref))
    return f"Success: LoRA adapter '{body.lora_name}' added successfully ({resident.ref} in slot {resident.slot})."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=_PLAIN_TEXT_ROUTE_ERRORS,
             summary="vLLM-compatible: unload an adapter")
async def vllm_unload(body: VllmUnloadLoraRequest, caller: AdminCaller, service: ReadyService) -> str:
    check_ref(caller, body.lora_name)
    engine = service.ready().engine
    unloaded = await anyio.to_thread.run_sync(lambda: engine.unload_adapter(body.lora_name))
    if not unloaded:
        raise AdapterNotFoundError(
            f"adapter {body.lora_name!r} is not loaded; GET /admin/adapters lists what is",
            ref=body.lora_name,
        )
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


# ---------------------------------------------------------------------------- registry


@registry_router.get("/admin/versions", response_model=VersionList, summary="Every registered version, oldest first")
async def versions(caller: AdminCaller, hub: HubDep) -> VersionList:
    def read() -> list[VersionInfo]:
        return [VersionInfo.from_version(v, hub.evaluations(v, latest=True)) for v in hub.list()
                if caller.may_use(v.name)]

    return VersionList(data=await anyio.to_thread.run_sync(read))


@registry_router.get("/admin/versions/{ref}", response_model=VersionInfo, summary="One version's metadata")
async def version(ref: str, caller: AdminCaller, hub: HubDep) -> VersionInfo:
    check_ref(caller, ref)

    def read() -> VersionInfo:
        found = hub.resolve(ref)
        return VersionInfo.from_version(found, hub.evaluations(found, latest=True))

    return await anyio.to_thread.run_sync(read)


@registry_router.get("/admin/versions/{ref}/lineage", response_model=VersionList,
            summary="A version and its parent chain, newest first")
async def lineage(ref: str, caller: AdminCaller, hub: HubDep) -> VersionList:
    check_ref(caller, ref)
    chain = await anyio.to_thread.run_sync(hub.lineage, ref)
    return VersionList(data=[VersionInfo.from_version(v) for v in chain if caller.may_use(v.name)])


@registry_router.get("/admin/versions/{ref}/step_log", summary="Progress events recorded while the version trained")
async def step_log(ref: str, caller: AdminCaller, hub: HubDep) -> list[dict[str, Any]]:
    check_ref(caller, ref)
    events = await anyio.to_thread.run_sync(hub.step_log, ref)
    return [event.to_dict() for event in events]


@registry_router.post("/admin/versions/{ref}/tag", response_model=VersionInfo, summary="Point name:alias at a version")
async def tag(ref: str, body: TagRequest, caller: AdminCaller, hub: HubDep) -> VersionInfo:
    check_ref(caller, ref)

    def move() -> VersionInfo:  # the server reads recorded evaluations; it never runs one here
        tagged = hub.tag(ref, body.alias, gates=body.gates, evaluate_missing=False)
        return VersionInfo.from_version(tagged, hub.evaluations(tagged, latest=True))

    return await anyio.to_thread.run_sync(move)


@registry_router.delete("/admin/versions/{ref}", response_model=DeleteResponse,
               summary="Delete a version (refused while another names it as parent)")
async def delete(ref: str, caller: AdminCaller, hub: HubDep) -> DeleteResponse:
    check_ref(caller, ref)
    gone = await anyio.to_thread.run_sync(hub.delete, ref)
    return DeleteResponse(deleted=[v.ref for v in gone])
