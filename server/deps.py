"""FastAPI dependencies as ``Annotated`` aliases: the service, the caller, the ready hub.

Routes declare what they need (``caller: InferenceCaller``, ``admin: AdminCaller``,
``service: ReadyService``, ``hub: HubDep``) and never read ``app.state`` or headers themselves.
The ready ones resolve only once the base and engine are up (503 ``not_ready`` before), so a
route never checks for a missing hub. Tests may swap any of them with
``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapterhub.facade import Hub
from adapterhub_server.auth import Caller, KeyTable
from adapterhub_server.replica_service import ReplicaService
from adapterhub_server.service import InferenceService

_bearer = HTTPBearer(auto_error=False, description="An inference or admin API key.")


def get_service(request: Request) -> InferenceService:
    """The app's service (made by ``create_app``): our engine's, or the replica backend's
    :class:`ReplicaService`, which answers the same lifecycle, identity and ``ready().hub``."""
    service: InferenceService = request.app.state.service
    return service


def get_keys(request: Request) -> KeyTable:
    keys: KeyTable = request.app.state.keys
    return keys


ServiceDep = Annotated[InferenceService, Depends(get_service)]
KeysDep = Annotated[KeyTable, Depends(get_keys)]


def get_caller(
    keys: KeysDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The caller behind ``Authorization: Bearer <key>``; 401 when missing or unknown."""
    caller = keys.authenticate(credentials.credentials if credentials else None)
    if caller is None:
        reason = "is missing" if credentials is None else "is not a valid key"
        raise HTTPException(
            401,
            f"the API key {reason}; send it as `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


InferenceCaller = Annotated[Caller, Depends(get_caller)]


def get_admin(caller: InferenceCaller) -> Caller:
    """The caller, if it holds an admin key; 403 for an inference key."""
    if not caller.is_admin:
        raise HTTPException(
            403, f"key {caller.name!r} has role 'inference'; this route needs an admin key"
        )
    return caller


AdminCaller = Annotated[Caller, Depends(get_admin)]


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
