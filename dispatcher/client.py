"""A small synchronous client of the HTTP API (v1), for the CLI and for scripts.

Configured like the server, from the environment or a ``.env`` file in the working
directory (the environment wins):

* ``DISPATCHER_URL``: the API's base URL (default ``http://127.0.0.1:8000``);
* ``DISPATCHER_API_KEY``: a service's API key (one of the server's ``DISPATCHER_API_KEYS``);
* ``DISPATCHER_SERVICE``: that key's service, the first part of the ids it makes. Unset: looked
  up in ``DISPATCHER_API_KEYS`` when that is set here too (the server's own ``.env``).

Errors::

    ClientError            the request could not be made or was refused
    ├── ApiUnreachable     no answer from DISPATCHER_URL (or it is not a URL): configuration
    └── ApiRefused         the API answered 4xx/5xx; ``status``, ``code``, ``message``
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ApiRefused", "ApiUnreachable", "Client", "ClientError", "ClientSettings", "new_id"]


class ClientError(Exception):
    """The request could not be made, or the API refused it."""


class ApiUnreachable(ClientError):
    """``DISPATCHER_URL`` is not a URL, or nothing answers there."""


class ApiRefused(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status, self.code, self.message = status, code, message


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISPATCHER_", extra="ignore",
                                      env_file=".env", env_file_encoding="utf-8")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    service: str | None = None
    #: The server's keys, when this machine has them (to find the service of ``api_key``).
    api_keys: str | None = None
    api_timeout: float = Field(default=30.0, gt=0)

    def service_name(self) -> str | None:
        if self.service:
            return self.service
        for pair in (self.api_keys or "").split(","):
            service, _, key = pair.strip().partition(":")
            if key and key == self.api_key:
                return service
        return None


class Client:
    """``Client(url, api_key)``; every method returns the API's JSON or raises :class:`ClientError`."""

    def __init__(self, url: str, api_key: str | None, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiUnreachable(f"DISPATCHER_URL {url!r} is not an http(s) URL "
                                 "(e.g. http://127.0.0.1:8000)")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, notification: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/notifications``: ``{id, accepted}``."""
        return self._call("POST", "/v1/notifications", json=notification)

    def notification(self, notification_id: str) -> dict[str, Any]:
        """``GET /v1/notifications/{id}``: the header and ``counts`` per channel."""
        return self._call("GET", f"/v1/notifications/{quote(notification_id, safe='')}")

    def deliveries(self, notification_id: str, *, status: str | None = None, limit: int = 1000,
                   cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", f"/v1/notifications/{quote(notification_id, safe='')}/deliveries",
                          params=params)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"no answer from the API at {self.url} ({exc or type(exc).__name__}); "
                                 "is DISPATCHER_URL right and the server running?") from exc
        if response.status_code >= 400:
            raise _refused(response)
        body: dict[str, Any] = response.json()
        return body


def new_id(service: str) -> str:
    """A notification id: ``<service>#<uuid4>``."""
    return f"{service}#{uuid.uuid4()}"


def _refused(response: httpx.Response) -> ApiRefused:
    try:
        error = response.json()["error"]
        return ApiRefused(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiRefused(response.status_code, "http_error", response.text[:200] or response.reason_phrase)
