"""Every error the server answers, in OpenAI's shape, from ONE table of types.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` — the body the official
``openai`` client parses into ``openai.NotFoundError`` & co. Inside an SSE stream the same JSON
arrives as one ``data:`` event, then the stream ends.

Design choices:

* **Types, never text.** Each library exception type travels under one code
  (:data:`adapterhub.protocol.ERROR_CODES`, shared with clients; the most specific class in the
  exception's MRO wins) and :data:`ERROR_TABLE` gives each code a status and an OpenAI error type. The message is the
  library's own (it already names the field, shows the value and says how to fix it). This is
  the opposite of choosing a status by searching message text.
* **HTTP conditions** (401, 403, 404 route, 413, 503 not ready) are FastAPI ``HTTPException`` s
  rendered through :data:`STATUS_TYPES`.
* **No stack traces in responses.** Anything unexpected is logged with its traceback and answered
  500 with a request id to find it in the log.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
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
)
from adapterhub.protocol import error_code
from adapterhub_server.settings import short_repr

log = logging.getLogger("adapterhub.server")


@dataclass(frozen=True)
class ErrorSpec:
    """How one library error type is answered."""

    status: int
    type: str
    code: str


ERROR_TABLE: dict[str, tuple[int, str]] = {
    "model_not_found": (404, "not_found_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "invalid_value": (400, "invalid_request_error"),
    "incompatible_adapter": (409, "invalid_request_error"),
    "unsafe_adapter": (422, "invalid_request_error"),
    "version_exists": (409, "invalid_request_error"),
    "corrupt_adapter": (500, "server_error"),
    "registry_conflict": (409, "invalid_request_error"),
    "gate_failed": (409, "invalid_request_error"),
    "capacity_exceeded": (429, "rate_limit_error"),
    "base_unavailable": (503, "service_unavailable"),
    "engine_unavailable": (503, "service_unavailable"),
    "hub_unavailable": (502, "server_error"),
    "training_failed": (500, "server_error"),
    "internal_error": (500, "server_error"),
}
"""Error code (:data:`adapterhub.protocol.ERROR_CODES`) -> HTTP status and OpenAI error type."""

STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}
"""HTTP status -> OpenAI error type, for errors that are HTTP conditions rather than ours."""

def spec_for(error: BaseException) -> ErrorSpec:
    """How ``error`` is answered: its code's row of :data:`ERROR_TABLE`."""
    code = error_code(error)
    status, type_ = ERROR_TABLE[code]
    return ErrorSpec(status, type_, code)


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def retry_after_seconds(error: BaseException) -> int | None:
    """Whole seconds for ``Retry-After`` (CapacityError carries its own hint)."""
    if isinstance(error, CapacityError):
        return max(1, math.ceil(error.retry_after))
    return None


def library_error_response(error: AdapterHubError) -> JSONResponse:
    """The HTTP answer for one of our library errors, by :data:`ERROR_TABLE`."""
    spec = spec_for(error)
    if spec.status >= 500:
        log.error("%s answered %d: %s", type(error).__name__, spec.status, error)
    param = "model" if isinstance(error, AdapterNotFoundError | IncompatibleAdapterError) else None
    headers = {}
    retry = retry_after_seconds(error)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(
        error_body(str(error), spec.type, param=param, code=spec.code), spec.status, headers=headers
    )


def sse_error_event(error: BaseException) -> str:
    """One SSE ``data:`` event carrying the error JSON (for errors after the stream started)."""
    if isinstance(error, AdapterHubError):
        spec = spec_for(error)
        body = error_body(str(error), spec.type, code=spec.code)
    else:
        request_id = _log_unexpected(error)
        body = error_body(_internal_message(request_id), "server_error", code="internal_error")
    return f"data: {json.dumps(body)}\n\n"


def http_error_response(status: int, message: str, *, code: str | None = None,
                        param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped answer for an HTTP condition (auth, size, readiness ...)."""
    return JSONResponse(
        error_body(message, STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
                   param=param, code=code),
        status,
        headers=headers,
    )


def describe_request_errors(error: RequestValidationError) -> tuple[str, str | None]:
    """Every problem of an invalid body in one message, and the first field's path as ``param``."""
    problems, params = [], []
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        if item.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # a message's role
            loc.append(str(item.get("ctx", {}).get("discriminator", "")).strip("'"))
        where = ".".join(loc) or "body"
        params.append(where)
        got = item.get("input")
        shown = "" if item.get("type") == "missing" or got is None or isinstance(got, dict) \
            else f" (got {short_repr(got)})"
        problems.append(f"{where}: {item.get('msg', 'invalid')}{shown}")
    message = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
    return message, params[0] if params else None


def _internal_message(request_id: str) -> str:
    return f"internal server error (request {request_id}); the server log has the details"


def _log_unexpected(error: BaseException) -> str:
    request_id = uuid.uuid4().hex[:12]
    log.error("unexpected error, request %s", request_id, exc_info=error)
    return request_id


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can meet to an OpenAI-shaped JSON answer."""

    async def on_library_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, AdapterHubError)
        return library_error_response(error)

    async def on_invalid_request(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        message, param = describe_request_errors(error)
        return http_error_response(400, message, code="invalid_request", param=param)

    async def on_http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = {401: "invalid_api_key", 403: "insufficient_permissions", 404: "not_found",
                405: "method_not_allowed", 413: "request_too_large", 503: "not_ready"}.get(error.status_code)
        return http_error_response(error.status_code, str(error.detail), code=code,
                                   headers=dict(error.headers or {}))

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        return http_error_response(500, _internal_message(_log_unexpected(error)), code="internal_error")

    app.add_exception_handler(AdapterHubError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
