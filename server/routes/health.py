"""Liveness, readiness and Prometheus metrics.

``/health`` answers 200 as long as the process serves HTTP (liveness; no key needed).
``/ready`` answers 200 once the base and engine are loaded, else 503 with the phase and, after a
failed load, why (no key needed: a load balancer probes it). ``/metrics`` needs a key when keys
are configured, since its labels name adapters.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from adapterhub_server.deps import InferenceCaller, ServiceDep
from adapterhub_server.lifecycle import Phase
from adapterhub_server.metrics import CONTENT_TYPE
from adapterhub_server.schemas import ERROR_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: base and engine loaded",
            responses={503: {"description": "Still loading, failed to load, or stopping"}})
async def ready(service: ServiceDep) -> JSONResponse:
    body: dict[str, str | None] = {"status": service.phase.value}
    if service.phase is Phase.FAILED:
        body["error"] = service.failure
    if service.phase is Phase.READY:
        body["base"] = service.base_name
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={401: ERROR_RESPONSES[401], 403: ERROR_RESPONSES[403]})
async def metrics(_: InferenceCaller, service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
