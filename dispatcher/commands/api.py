"""The options shared by the commands that talk to the HTTP API, and the client they build."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from dispatcher.client import Client, ClientSettings

__all__ = ["ApiKey", "Url", "client_settings", "open_client"]

Url = Annotated[str | None, typer.Option(
    "--url", help="The API's base URL (DISPATCHER_URL; default http://127.0.0.1:8000).",
    show_default=False)]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", help="A service API key (DISPATCHER_API_KEY).", show_default=False)]


def client_settings(url: str | None, api_key: str | None, **more: str | None) -> ClientSettings:
    """The environment and ``.env``, the options given over them."""
    given = {"url": url, "api_key": api_key, **more}
    return ClientSettings().model_copy(update={k: v for k, v in given.items() if v is not None})


def open_client(settings: ClientSettings) -> Client:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # a line per poll is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not settings.api_key:
        raise typer.BadParameter("no API key: set DISPATCHER_API_KEY or give --api-key",
                                 param_hint="--api-key")
    return Client(settings.url, settings.api_key, timeout=settings.api_timeout)
