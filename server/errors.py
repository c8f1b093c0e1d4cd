"""Every error the server answers, in OpenAI's shape, from the types of the errors.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` — the body the official
``openai`` client parses into ``openai.NotFoundError`` & co. Inside an SSE stream the same JSON
arrives as one ``data:`` event, then the stream ends.

Design choices:

* **Types, never text.** Each library error class declares its wire ``code``, ``http_status``
  and ``openai_type`` (:mod:`adapterhub.errors`; a class answers as its most specific declaring
  ancestor), and clients map the code back with :func:`adapterhub.errors.error_class`. The
  message is the library's own (it already names the field, shows the value and says how to fix
  it). This is the opposite of choosing a status by searching message text.
* **HTTP conditions** (401, 403, 404 route, 413, 503 not ready) are FastAPI ``HTTPException`` s
  whose code and type come from :data:`HTTP_CONDITIONS`.
* **No stack traces in responses.** Anything unexpected is logged with its traceback and answered
  as the root :class:`~adapterhub.errors.AdapterHubError` is (500 ``internal_error``), with a
  request id to find it in the log.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub.errors import (
    AdapterHubError,
    AdapterNotFoundError,
    CapacityError,
    IncompatibleAdapterError,
    describe_validation_error,
)
from adapterhub.registry.store import unknown_adapter

log = logging.getLogger("adapterhub.server")

HTTP_CONDITIONS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("invalid_api_key", "authentication_error"),
    403: ("insufficient_permissions", "permission_error"),
    404: ("not_found", "not_found_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
    503: ("not_ready", "service_unavailable"),
}
"""HTTP status -> wire code and OpenAI error type, for errors that are HTTP conditions rather
than library errors. Another status has no code and is ``invalid_request_error`` below 500,
``server_error`` from 500."""


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def retry_after_seconds(error: BaseException) -> int | None:
    """Whole seconds for ``Retry-After`` (CapacityError carries its own hint)."""
    if isinstance(error, CapacityError):
        return max(1, math.ceil(error.retry_after))
    return None


def library_error_response(error: AdapterHubError, caller: Any = None) -> JSONResponse:
    """The HTTP answer for one of our library errors, by the status, type and code its class
    declares. For a ``caller`` with an adapter allowlist, any not-found is answered as the plain
    unknown-adapter error (no close matches, no versions listed: see
    :mod:`adapterhub_server.tenants`)."""
    if isinstance(error, AdapterNotFoundError) and getattr(caller, "is_restricted", False):
        error = unknown_adapter(error.ref)
    if error.http_status >= 500:
        log.error("%s answered %d: %s", type(error).__name__, error.http_status, error)
    param = "model" if isinstance(error, AdapterNotFoundError | IncompatibleAdapterError) else None
    headers = {}
    retry = retry_after_seconds(error)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(
        error_body(str(error), error.openai_type, param=param, code=error.code), error.http_status,
        headers=headers,
    )


def sse_error_event(error: BaseException) -> str:
    """One SSE ``data:`` event carrying the error JSON (for errors after the stream started)."""
    if isinstance(error, AdapterHubError):
        body = error_body(str(error), error.openai_type, code=error.code)
    else:
        body = _unexpected_body(error)
    return f"data: {json.dumps(body)}\n\n"


def http_error_response(status: int, message: str, *, param: str | None = None,
                        headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped answer for an HTTP condition (auth, size, readiness ...), by
    :data:`HTTP_CONDITIONS`."""
    code, type_ = HTTP_CONDITIONS.get(status, (None, "invalid_request_error" if status < 500 else "server_error"))
    return JSONResponse(error_body(message, type_, param=param, code=code), status, headers=headers)


def describe_request_errors(error: RequestValidationError) -> tuple[str, str | None]:
    """Every problem of an invalid body in one message, and the first field's path as ``param``."""
    described = describe_validation_error(error.errors(), root="body")
    problems = [line for _, line in described]
    message = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
    return message, described[0][0] if described else None


def _unexpected_body(error: BaseException) -> dict[str, Any]:
    """The body for an error of no library type: answered as the root error is, naming only a
    request id under which the log holds the traceback."""
    request_id = uuid.uuid4().hex[:12]
    log.error("unexpected error, request %s", request_id, exc_info=error)
    message = f"internal server error (request {request_id}); the server log has the details"
    return error_body(message, AdapterHubError.openai_type, code=AdapterHubError.code)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can meet to an OpenAI-shaped JSON answer."""

    async def on_library_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, AdapterHubError)
        return library_error_response(error, getattr(request.state, "caller", None))

    async def on_invalid_request(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        message, param = describe_request_errors(error)
        return http_error_response(400, message, param=param)

    async def on_http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return http_error_response(error.status_code, str(error.detail), headers=dict(error.headers or {}))

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(_unexpected_body(error), AdapterHubError.http_status)

    app.add_exception_handler(AdapterHubError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
