"""The HTTP API (v1): the gateway for services and the feed for end users.

``create_app`` builds a FastAPI app around a :class:`~dispatcher.runtime.Runtime`. It runs no
worker loop: ``dispatcher serve`` delivers in worker processes of its own
(:mod:`dispatcher.worker_processes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from dispatcher.api import feed, notifications, providers, suppressions, templates, unsubscribe, users, webhooks
from dispatcher.api.auth import Authenticator
from dispatcher.api.errors import ApiError, error_responses, install_error_handlers
from dispatcher.api.limits import BodyLimit, ReadDeadline
from dispatcher.api.openapi import install_docs
from dispatcher.api.schemas import HealthOut
from dispatcher.api.telemetry import RequestTelemetry, metrics_router
from dispatcher.pages import routes as pages
from dispatcher.runtime import Runtime

__all__ = ["create_app"]

_DESCRIPTION = """Send notifications to users over in-app, email, SMS and push, and follow each
delivery in a durable ledger. Services authenticate with an API key, end users (their feed,
devices, preferences) with a JWT: both as `Authorization: Bearer …`. Every error is
`{"error": {"code": …, "message": …}}`."""


def create_app(runtime: Runtime, *, owns_runtime: bool = False,
               stop_workers: Callable[[], Awaitable[None]] | None = None,
               workers_started: Callable[[], None] | None = None) -> FastAPI:
    """``owns_runtime``: close the runtime at shutdown (the server's signal handling may not
    return to the caller). ``stop_workers``: stops ``dispatcher serve``'s worker processes
    at shutdown, before the runtime closes (they finish the chunks in progress).
    ``workers_started``: raises until they have all started (``/readyz`` answers 503)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if stop_workers is not None:
                await stop_workers()
            if owns_runtime:
                await runtime.close()

    app = FastAPI(title="Notification dispatcher", version="1", lifespan=lifespan,
                  description=_DESCRIPTION, docs_url=None, redoc_url=None,
                  # operationId = the route function's name (send_notification, …): what a
                  # generated client calls its methods. The names are unique (FastAPI warns).
                  generate_unique_id_function=lambda route: route.name)
    install_docs(app)
    settings = runtime.settings
    auth = Authenticator(settings.service_keys(), settings.user_token_secret or "",
                         max_lifetime=settings.user_token_max_lifetime)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ReadDeadline, seconds=settings.request_read_timeout)
    app.include_router(metrics_router(runtime.queue, settings.metrics_token))
    sender = notifications.SendNotification(runtime)
    app.include_router(notifications.router(runtime, auth, sender))
    for module in (users, feed, templates, suppressions, webhooks):
        app.include_router(module.router(runtime, auth))
    # The people's pages (preference centre, inbox) and their files: see dispatcher.pages.
    page_set = pages.build_pages(runtime)
    app.include_router(pages.router(runtime, auth, page_set))
    if settings.cors_origins:  # the embeddable inbox on an app's own origin
        app.add_middleware(CORSMiddleware, allow_origins=sorted(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                           max_age=600)
    ses_events = providers.SesEvents(runtime)
    app.include_router(providers.router(ses_events))
    app.add_middleware(RequestTelemetry)  # outermost but the lanes: it sees the 408s and 413s too
    # Outermost: the two requests that come by the thousand skip the general stack, each lane
    # doing for its request what that stack would: a service's notifications
    # (dispatcher.api.notifications) and SES events, one per email sent, arriving while the
    # sends go on (dispatcher.api.providers).
    app.add_middleware(notifications.SendLane, send=sender, auth=auth,
                       max_bytes=settings.max_body_bytes, read_timeout=settings.request_read_timeout)
    app.add_middleware(providers.SesEventsLane, events=ses_events,
                       read_timeout=settings.request_read_timeout)
    if runtime.links is not None:
        # Pages (text/html), an invalid link included: a person follows it.
        page = {"text/html": {"schema": {"type": "string"}}}
        app.include_router(unsubscribe.router(runtime, runtime.links, page_set), responses={
            200: {"content": page},
            **error_responses(422, page=True),
            404: {"description": "Not a valid link (a page saying so)", "content": page},
            409: {"description": "The link has no effect (a page saying why)",
                  "content": {"text/html": {"schema": {"type": "string"}}}}})

    @app.get("/healthz", tags=["health"], response_model=HealthOut)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=HealthOut,
             responses=error_responses())
    async def readyz() -> dict[str, Any]:
        try:
            await runtime.ready()
            if workers_started is not None:
                workers_started()
        except Exception as exc:
            raise ApiError(503, f"not ready: {type(exc).__name__}: {exc}") from None
        return {"status": "ready"}

    return app
