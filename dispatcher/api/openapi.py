"""The OpenAPI document as the API really behaves, and its pages (``/docs``, ``/redoc``) offline.

FastAPI writes the document from the routes; what it gets wrong for this API is mended
here, once, when the document is first asked for:

* every operation with parameters gets FastAPI's default 422 ``{"detail": [...]}``, which this
  API never sends. Operations that can answer 422 declare it with the error envelope
  (:func:`dispatcher.api.errors.error_responses`), so a default 422 still in the document marks
  one that cannot: it is removed, and so are the ``HTTPValidationError`` schemas;
* the headers every answer carries (``X-Request-ID``; ``WWW-Authenticate`` on a 401,
  ``Retry-After`` on a 503) are not in the routes: they are added;
* the pages load Swagger UI and ReDoc from a CDN: here they come from ``docs_assets/``
  (package data, copied from the npm registry; see the README there), so they work on a
  machine without internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "install_docs"]

#: Swagger UI and ReDoc, served under ``/docs/assets``.
ASSETS = Path(__file__).with_name("docs_assets")
_ASSETS_URL = "/docs/assets"
_DEFAULT_422 = "#/components/schemas/HTTPValidationError"


def install_docs(app: FastAPI) -> None:
    """Serve ``/openapi.json`` (mended), ``/docs`` and ``/redoc`` from the app alone. The app
    must be made with ``docs_url=None, redoc_url=None``."""
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
    app.mount(_ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _same_origin(get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title}: API",
            swagger_js_url=f"{_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS_URL}/favicon-32x32.png",
            # No badge fetched from validator.swagger.io; the token survives a reload.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True}))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _same_origin(get_redoc_html(
            openapi_url="/openapi.json", title=f"{app.title}: API reference",
            redoc_js_url=f"{_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{_ASSETS_URL}/favicon-32x32.png", with_google_fonts=False))


#: The pages may load nothing from another origin (ReDoc's bundle would fetch its logo from
#: cdn.redoc.ly; it hides the image when that fails). Their inline script and styles, and
#: ReDoc's search worker (a blob), stay allowed.
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:")


def _same_origin(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _CSP
    return page


def _document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        _drop_default_422(doc)
        _add_headers(doc)
        app.openapi_schema = doc
    return app.openapi_schema


_REQUEST_ID = {"description": "The caller's X-Request-ID when sane (1 to 128 of A-Z a-z 0-9 . _ : -), "
                              "else a generated one; the server's log lines for the request carry it",
               "required": True, "schema": {"type": "string", "maxLength": 128}}
_STATUS_HEADERS = {
    "401": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    "503": {"Retry-After": {"description": "Seconds to wait before trying again",
                            "schema": {"type": "integer"}}},
}


def _add_headers(doc: dict[str, Any]) -> None:
    """The headers the answers carry (``dispatcher.api.telemetry``, ``errors``)."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                response.setdefault("headers", {}).update(
                    {"X-Request-ID": _REQUEST_ID, **_STATUS_HEADERS.get(status, {})})


def _drop_default_422(doc: dict[str, Any]) -> None:
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            schema = (responses.get("422", {}).get("content", {}).get("application/json", {})
                      .get("schema", {}))
            if schema.get("$ref") == _DEFAULT_422:
                del responses["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
