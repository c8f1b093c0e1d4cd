"""FastAPI dependencies as ``Annotated`` aliases: the service, the caller, the ready hub.

Routes declare what they need (``caller: InferenceCaller``, ``admin: AdminCaller``,
``jobs: JobsCaller``, ``service: ReadyService``, ``hub: HubDep``): each caller alias lets in the
keys whose route groups hold its group (``inference``, ``admin``, ``jobs``), 403 for the others) and never read ``app.state`` or headers themselves.
The ready ones resolve only once the base and engine are up (503 ``not_ready`` before), so a
route never checks for a missing hub. Tests may swap any of them with
``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapterhub.facade import Hub
from adapterhub_server.auth import Caller, KeyRates, KeyRing
from adapterhub_server.replica_service import ReplicaService
from adapterhub_server.service import InferenceService

_bearer = HTTPBearer(auto_error=False, description="An inference or admin API key.")


def get_service(request: Request) -> InferenceService:
    """The app's service (made by ``create_app``): our engine's, or the replica backend's
    :class:`ReplicaService`, which answers the same lifecycle, identity and ``ready().hub``."""
    service: InferenceService = request.app.state.service
    return service


def get_keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


def get_rates(request: Request) -> KeyRates:
    rates: KeyRates = request.app.state.rates
    return rates


ServiceDep = Annotated[InferenceService, Depends(get_service)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
RatesDep = Annotated[KeyRates, Depends(get_rates)]


def get_caller(
    request: Request, keys: KeysDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind ``Authorization: Bearer <key>``; 401 when missing or unknown. Kept on
    ``request.state.caller`` so that errors are answered as this key may see them."""
    caller = keys.authenticate(credentials.credentials if credentials else None)
    if caller is None:
        reason = "is missing" if credentials is None else "is not a valid key"
        raise HTTPException(
            401,
            f"the API key {reason}; send it as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.caller = caller
    return caller


AnyCaller = Annotated[Caller, Depends(get_caller)]


def _refuse(caller: Caller, group: str, needs: str) -> HTTPException:
    groups = ", ".join(sorted(caller.routes))
    return HTTPException(
        403, f"key {caller.name!r} may call the route groups [{groups}]; this route is in group "
             f"{group!r} and needs {needs}"
    )


def get_inference(caller: AnyCaller) -> Caller:
    """The caller, if its key may call the ``inference`` routes (``/v1/*``); 403 otherwise."""
    if not caller.may_call("inference"):
        raise _refuse(caller, "inference", "an inference or admin key, or routes: [inference]")
    return caller


InferenceCaller = Annotated[Caller, Depends(get_inference)]


def get_admin(caller: AnyCaller) -> Caller:
    """The caller, if it holds an admin key (route group ``admin``); 403 otherwise."""
    if not caller.is_admin:
        raise _refuse(caller, "admin", "an admin key, or routes: [admin]")
    return caller


AdminCaller = Annotated[Caller, Depends(get_admin)]


def get_jobs_caller(caller: AnyCaller) -> Caller:
    """The caller, if its key may call the job routes (route group ``jobs``); 403 otherwise."""
    if not caller.may_call("jobs"):
        raise _refuse(caller, "jobs", "an admin key, or routes: [jobs]")
    return caller


JobsCaller = Annotated[Caller, Depends(get_jobs_caller)]


def get_ready_service(service: ServiceDep) -> InferenceService:
    """The service once its engine is up; 503 while loading, after a failed load or stopping."""
    service.ready()
    return service


ReadyService = Annotated[InferenceService, Depends(get_ready_service)]


def get_hub(service: ServiceDep) -> Hub:
    """The hub, its base loaded; 503 while loading, after a failed load or stopping."""
    return service.ready().hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_replica_service(request: Request) -> ReplicaService:
    """The replica backend's service once started; 503 before, after a failed start or stopping."""
    service: ReplicaService = request.app.state.service
    service.ready()
    return service


ReplicaReady = Annotated[ReplicaService, Depends(get_replica_service)]
