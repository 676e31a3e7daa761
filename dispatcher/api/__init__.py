"""The HTTP API (v1): the gateway for services and the feed for end users.

``create_app`` builds a FastAPI app around a :class:`~dispatcher.runtime.Runtime`. With
``workers=True`` (``dispatcher serve``) the same process also runs the queue workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from dispatcher.api import feed, notifications, providers, suppressions, templates, unsubscribe, users, webhooks
from dispatcher.api.auth import Authenticator
from dispatcher.api.errors import ERROR_RESPONSES, ApiError, install_error_handlers
from dispatcher.api.limits import BodyLimit, ReadDeadline
from dispatcher.pages import routes as pages
from dispatcher.runtime import Runtime

__all__ = ["create_app"]


def create_app(runtime: Runtime, *, workers: int = 0, owns_runtime: bool = False,
               children: Sequence[subprocess.Popen[bytes]] = ()) -> FastAPI:
    """``workers``: worker loops to run inside this process (0: API only). ``owns_runtime``:
    close the runtime at shutdown (the server's signal handling may not return to the caller)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        loops = [asyncio.create_task(runtime.worker().run(stop)) for _ in range(workers)]
        if workers:  # the process that delivers also sends the webhooks (dispatcher.webhooks)
            loops.append(asyncio.create_task(runtime.webhook_sender().run(stop)))
        try:
            yield
        finally:
            stop.set()
            for child in children:  # worker processes of `dispatcher serve`
                child.terminate()
            await asyncio.gather(*loops, return_exceptions=True)
            for child in children:
                await asyncio.to_thread(child.wait)
            if owns_runtime:
                await runtime.close()

    app = FastAPI(title="Notification dispatcher", version="1", lifespan=lifespan)
    settings = runtime.settings
    auth = Authenticator(settings.service_keys(), settings.user_token_secret or "",
                         max_lifetime=settings.user_token_max_lifetime)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ReadDeadline, seconds=settings.request_read_timeout)
    for module in (notifications, users, feed, templates, suppressions, webhooks):
        app.include_router(module.router(runtime, auth), responses=ERROR_RESPONSES)
    # The people's pages (preference centre, inbox) and their files: see dispatcher.pages.
    page_set = pages.build_pages(runtime)
    app.include_router(pages.router(runtime, auth, page_set), responses=ERROR_RESPONSES)
    if settings.cors_origins:  # the embeddable inbox on an app's own origin
        app.add_middleware(CORSMiddleware, allow_origins=sorted(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           max_age=600)
    app.include_router(providers.router(runtime), responses=ERROR_RESPONSES)
    if runtime.links is not None:
        # Pages (text/html), an invalid link included: a person follows it.
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        page = {"text/html": {"schema": {"type": "string"}}}
        app.include_router(unsubscribe.router(runtime, runtime.links, page_set), responses={
            404: {"description": "Not a valid link (a page saying so)", "content": page},
            409: {"description": "The link has no effect (a page saying why)",
                  "content": {"text/html": {"schema": {"type": "string"}}}},
            422: {"description": "Invalid request", "content": error}})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, Any]:
        try:
            await runtime.ready()
        except Exception as exc:
            raise ApiError(503, f"not ready: {type(exc).__name__}: {exc}") from None
        return {"status": "ready"}

    return app
