"""Errors as ``{"error": {"code": ..., "message": ...}}``, for every failure the API answers."""

from __future__ import annotations

import logging

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "ERROR_RESPONSES", "ErrorOut", "install_error_handlers"]

log = logging.getLogger("dispatcher.api")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
          413: "payload_too_large", 422: "invalid", 503: "unavailable"}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error the API answers: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


#: The error answers every route may give, for the OpenAPI document (422 replaces FastAPI's
#: default ``{"detail": [...]}`` schema, which this API never sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description} for status, description in (
        (400, "Bad request (e.g. an id outside the policy, a bad cursor)"),
        (401, "Missing or invalid API key or user token"),
        (403, "Not allowed for this caller"),
        (404, "Not found"),
        (408, "The request did not arrive in time (DISPATCHER_REQUEST_READ_TIMEOUT)"),
        (409, "Conflicts with the current state"),
        (413, "The body is larger than DISPATCHER_MAX_BODY_BYTES"),
        (422, "Invalid request (the message names the field)"),
        (503, "The store or the queue is unavailable"))}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(DBAPIError)
    async def _store_down(request: Request, exc: DBAPIError) -> JSONResponse:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc.orig)
        return error_response(503, "unavailable", "the store is unavailable; retry later")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    return "; ".join(parts)
