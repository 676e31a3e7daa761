"""Errors as ``{"error": {"code": ..., "message": ...}}``, for every failure the API answers.

The one place where the core's error tree (``dispatcher.errors``) meets HTTP: :data:`STATUS`
maps each kind to a status and a code, most specific first. Routers raise the core's errors
(or :class:`ApiError` for what only HTTP knows: credentials, a missing user) and never pick a
status by reading a message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.errors import (
    DispatcherError,
    ForeignNotification,
    InvalidContact,
    InvalidCursor,
    InvalidLink,
    InvalidNotificationId,
    InvalidRequest,
    NotFound,
    NotificationCancelled,
    TemplateError,
    Unavailable,
    UntrustedMessage,
)
from dispatcher.store import STORE_UNAVAILABLE

__all__ = ["ANY_REQUEST", "ApiError", "ErrorOut", "STATUS", "error_responses", "install_error_handlers",
           "response_for"]

log = logging.getLogger("dispatcher.api")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
          413: "payload_too_large", 422: "invalid", 503: "unavailable"}

#: The core's errors as (status, code), most specific first.
STATUS: tuple[tuple[type[DispatcherError], int, str], ...] = (
    (ForeignNotification, 403, "forbidden"),
    (InvalidNotificationId, 400, "invalid_id"),
    (InvalidCursor, 400, "invalid_cursor"),
    (InvalidLink, 404, "invalid_link"),
    (InvalidContact, 422, "invalid_contact"),
    (TemplateError, 422, "template_error"),
    (InvalidRequest, 422, "invalid"),
    (NotFound, 404, "not_found"),
    (NotificationCancelled, 409, "cancelled"),
    (Unavailable, 503, "unavailable"),
    (UntrustedMessage, 403, "untrusted_message"),
)

#: What a 503 tells the caller to wait before sending the same request again.
RETRY_AFTER_SECONDS = 5


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error the API answers: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Bad request: an id outside the policy (`<service>#<uuid>`), a bad cursor",
    401: "Missing or invalid API key or user token (`WWW-Authenticate: Bearer`)",
    403: "Not allowed for this caller (a user token on a service operation, another user's data, "
         "another service's notification, a critical category)",
    404: "Not found",
    408: "The request did not arrive in time (DISPATCHER_REQUEST_READ_TIMEOUT)",
    409: "Conflicts with the current state",
    413: "The body is larger than DISPATCHER_MAX_BODY_BYTES (any request)",
    422: "Invalid request (the message names the field)",
    503: "The store or the queue is unavailable (`Retry-After` says when to try again)",
}

#: What any request may get, whatever its operation: a slow or oversized request, a store down.
ANY_REQUEST = (408, 413, 503)


def error_responses(*statuses: int, page: bool = False) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an operation that answers ``statuses`` (and
    :data:`ANY_REQUEST`), every one in the one error envelope. An operation that does not list
    422 never answers it (FastAPI's default ``{"detail": [...]}`` 422 is dropped from the
    document: :mod:`dispatcher.api.openapi`). ``page``: the operation answers HTML when it
    succeeds (its errors are still JSON, which FastAPI would otherwise document as HTML)."""
    shape: dict[str, Any] = ({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
                             if page else {"model": ErrorOut})
    return {status: {**shape, "description": _DESCRIPTIONS[status]}
            for status in sorted({*statuses, *ANY_REQUEST})}


class ApiError(Exception):
    """An error only HTTP knows about (credentials, a missing resource): status and message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = ({"WWW-Authenticate": "Bearer"} if status == 401 else
               {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None)
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def status_of(exc: DispatcherError) -> tuple[int, str, str]:
    """(status, code, message) for one of the core's errors."""
    for kind, status, code in STATUS:
        if isinstance(exc, kind):
            message = str(exc)
            if isinstance(exc, InvalidRequest) and not isinstance(exc, InvalidContact | InvalidLink):
                message = f"{exc.field}: {exc.message}"
            return status, code, message
    return 500, "internal", "internal error; the server log has the details"


def response_for(exc: Exception, where: str) -> JSONResponse:
    """The answer to an error a route raised (``where``: method and path, for the log): its
    own status for an :class:`ApiError` or one of the core's errors, 503 when the store is
    away, 500 (logged with its traceback) for anything else."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, DispatcherError):
        status, code, message = status_of(exc)
        if status == 503:
            log.error("%s: %s", where, exc)
        elif status >= 500:
            log.error("unmapped %s on %s: %s", type(exc).__name__, where, exc)
        return error_response(status, code, message)
    if isinstance(exc, STORE_UNAVAILABLE):
        log.error("store error on %s: %s", where, exc)
        return error_response(503, "unavailable", "the store is unavailable; retry later")
    log.exception("unhandled error on %s", where, exc_info=exc)
    return error_response(500, "internal", "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    async def _raised(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc, f"{request.method} {request.url.path}")

    for kind in (ApiError, DispatcherError, *STORE_UNAVAILABLE, Exception):
        app.add_exception_handler(kind, _raised)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    return "; ".join(parts)
