"""The ``push`` channel over Firebase Cloud Messaging HTTP v1.

One :class:`FcmProvider` holds one long-lived HTTP/1.1 connection pool and sends each message
as ``POST {endpoint}/v1/projects/{project}/messages:send``; many requests are in flight at
once on that pool. Its OAuth2 access token comes from an :class:`AccessTokenSource`: a
service-account key signed into a JWT by google-auth, exchanged at the token endpoint, cached,
and refreshed shortly before it expires (never per message; concurrent callers share one
refresh).

Error mapping (FCM v1 answers ``{"error": {"code", "status", "message", "details": [...]}}``;
the code is the ``google.firebase.fcm.v1.FcmError`` detail's ``errorCode``, else ``status``)::

    HTTP       code                                   raises
    200        -                                      Receipt(name)
    404        UNREGISTERED                           UnregisteredDevice  (device deactivated)
    403        SENDER_ID_MISMATCH                     UnregisteredDevice  (another project's token)
    400        INVALID_ARGUMENT about message.token   UnregisteredDevice  (token can never work)
    400        INVALID_ARGUMENT about the payload     PermanentError
    401        THIRD_PARTY_AUTH_ERROR                 PermanentError      (the project's APNs or
                                                                           web push credentials)
    401        UNAUTHENTICATED (our access token)     TransientError, token invalidated first so
                                                      that the retry re-authenticates
    403        PERMISSION_DENIED, other 4xx           PermanentError
    404        without UNREGISTERED (wrong project)   PermanentError      (device left alone)
    408, 429   QUOTA_EXCEEDED                         TransientError(retry_after=Retry-After)
    5xx        UNAVAILABLE, INTERNAL, proxy pages     TransientError(retry_after=Retry-After)
    -          connection error, timeout              TransientError
    token      endpoint unreachable, retryable error  TransientError
    token      key refused (invalid_grant)            PermanentError

The adapter never retries: the worker's retry policy does (``dispatcher.retry``). google-auth
itself retries a failing token request a few times (its own backoff, in the refresh thread).

pyfcm (2.1.1, in the stack) is not used. Its transport, measured side by side with this one
in one run against the same local FCM server (``python -m bench.fcm_transport``, 100
concurrent, 4,000 messages, median of 3, 2 cores; figures in docs/FCM.md)::

    FcmProvider, one shared aiohttp session        11,020 msg/s   0.09 ms client CPU/msg
                (since 2026-11-30 it uses transport.pool, lighter than aiohttp: docs/BENCHMARKS.md)
    pyfcm notify() in 100 threads (requests)        1,193 msg/s   0.91 ms
    pyfcm notify() in 8 threads                     1,189 msg/s   0.83 ms
    pyfcm async_notify_multiple_devices(100 each)   3,634 msg/s   0.26 ms; but a new connection
                                                                  per message and a token request
                                                                  per call (no TLS locally: far
                                                                  costlier against Google)

Beyond speed: it fetches a token per thread (and per async call), its lazy set-up fails when
threads make their first call together, it sleeps in the calling thread on ``Retry-After`` and
retries 502/503 itself (a second retry policy), and it maps errors by HTTP status alone (every
404 is "not registered"; ``errorCode`` and ``Retry-After`` are lost). Its payload builder is a
dict literal behind a credentialed client object, and its error classes carry nothing we need.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from channels.base import (
    ChannelError,
    Message,
    PermanentError,
    Receipt,
    TransientError,
    UnregisteredDevice,
)
from transport.http import parse_retry_after
from transport.pool import HttpClient, HttpTransportError

__all__ = ["FCM_SCOPE", "AccessTokenSource", "FcmProvider", "build_request", "error_for"]

log = logging.getLogger("dispatcher.channels.fcm")

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
#: Refresh a token this long before it expires (at most half its lifetime, see below).
REFRESH_MARGIN = 300.0
#: google-auth's requests transport waits 120 s by default; a stuck token endpoint must not
#: hold every send that long.
TOKEN_REQUEST_TIMEOUT = 30.0
#: APNs refuses an ``apns-collapse-id`` longer than 64 bytes.
APNS_COLLAPSE_ID_MAX = 64
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
#: Distinct messages but for the device token whose JSON is kept; a bulk has one.
_BODIES_KEPT = 64


class _TokenRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with a bounded default timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        # google-auth is untyped (hence the ignores on its calls in this module)
        return super().__call__(  # type: ignore[no-untyped-call]
            url, method, body, headers, timeout or self._timeout, **kwargs)


class AccessTokenSource:
    """OAuth2 access tokens for the FCM scope, from a service account, cached.

    A token is reused until ``REFRESH_MARGIN`` (5 minutes) before it expires, or until half
    its lifetime has passed when it lives less than twice the margin (otherwise a short-lived
    token would be "due" at once and every send would refresh). google-auth's refresh is
    blocking, so it runs in a thread. Concurrent callers share one refresh: the first starts
    it as a task and everyone awaits that task, so a failed refresh is also one request, and a
    caller cancelled while waiting does not cancel it for the others.
    """

    def __init__(self, credentials: service_account.Credentials, *,
                 refresh_margin: float = REFRESH_MARGIN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._margin = refresh_margin
        self._clock = clock
        self._request = _TokenRequest(TOKEN_REQUEST_TIMEOUT)
        self._token: str | None = None
        self._refresh_at = 0.0
        self._refreshing: asyncio.Task[str] | None = None
        self.refreshes = 0

    @classmethod
    def from_file(cls, path: Path) -> AccessTokenSource:
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(path), scopes=[FCM_SCOPE])
        return cls(credentials)

    @property
    def project_id(self) -> str | None:
        """The project named in the service-account file."""
        project: str | None = self._credentials.project_id
        return project

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        if self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        return await asyncio.shield(self._refreshing)

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (FCM answered 401 to it).

        A token already replaced is left alone: a burst of 401s from the requests that were in
        flight with the old token costs one refresh, not one each.
        """
        if token == self._token:
            self._token = None

    def close(self) -> None:
        self._request.session.close()

    async def _refresh(self) -> str:
        try:
            token, lifetime = await asyncio.to_thread(self._refresh_blocking)
        finally:
            self._refreshing = None
        self.refreshes += 1
        self._token = token
        self._refresh_at = self._clock() + lifetime - min(self._margin, lifetime / 2)
        return token

    def _refresh_blocking(self) -> tuple[str, float]:
        """Fetch a token (in a worker thread); returns it and its remaining lifetime in s."""
        try:
            self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"FCM token endpoint unreachable: {exc}") from exc
        except google.auth.exceptions.RefreshError as exc:
            if exc.retryable:
                raise TransientError(f"FCM token endpoint failed: {exc}") from exc
            raise PermanentError(f"FCM credentials refused: {exc}") from exc
        token = str(self._credentials.token)  # set by a successful refresh
        expiry: datetime | None = self._credentials.expiry  # naive UTC, google-auth's habit
        if expiry is None:
            return token, 2 * self._margin
        now = datetime.now(UTC).replace(tzinfo=None)
        return token, max(0.0, (expiry - now).total_seconds())


class FcmProvider:
    """Sends push notifications through FCM HTTP v1; one message per device token."""

    channel: ClassVar[str] = "push"
    name: ClassVar[str] = "fcm"

    def __init__(self, http: HttpClient, tokens: AccessTokenSource, *,
                 project_id: str, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0) -> None:
        self._http = http
        self._tokens = tokens
        url = f"{endpoint.rstrip('/')}/v1/projects/{quote(project_id, safe='')}/messages:send"
        self._origin = http.origin(url)
        self._target = urlsplit(url).path
        self._timeout = timeout
        self._owns_http = False
        self._bodies: dict[tuple[Any, ...], str] = {}

    @classmethod
    async def from_service_account(cls, path: Path, *, project_id: str | None,
                                   endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0,
                                   pool_size: int = 100) -> FcmProvider:
        """A provider owning its connection pool; ``project_id`` defaults to the file's."""
        tokens = await asyncio.to_thread(AccessTokenSource.from_file, path)
        project = project_id or tokens.project_id
        if not project:
            raise ValueError(f"no FCM project id given and none in {path}")
        http = HttpClient(limit=pool_size)
        provider = cls(http, tokens, project_id=project, endpoint=endpoint, timeout=timeout)
        provider._owns_http = True
        return provider

    async def send(self, message: Message) -> Receipt:
        token = await self._tokens.token()
        payload = self.body(message)
        try:
            response = await self._origin.request(
                "POST", self._target,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                payload, timeout=self._timeout)
        except HttpTransportError as exc:
            raise TransientError(f"FCM unreachable: {exc}") from exc
        status, headers, body = response.status, response.headers, _parse_json(response.body)
        if status == HTTPStatus.OK:
            return _receipt(body)
        error = error_for(status, body, headers)
        if status == HTTPStatus.UNAUTHORIZED and isinstance(error, TransientError):
            self._tokens.invalidate(token)
        raise error

    def body(self, message: Message) -> bytes:
        """``build_request(message)`` as the JSON bytes sent, the same bytes ``json.dumps`` gives.

        Every device of a bulk gets the same message but for its token: the rest (notification,
        Android, APNs and web push blocks, data) is encoded once per distinct content and kept,
        and only the token is encoded per message (``json.dumps`` of the whole request was a
        third of this method's CPU on a push bulk: docs/BENCHMARKS.md)."""
        parts, data = message.parts, message.data
        key = (message.notification_id, message.category, parts.get("title"), parts.get("body"),
               tuple(data.items()) if data else ())
        rest = self._bodies.get(key)
        if rest is None:
            request = build_request(message)["message"]
            del request["token"]  # the first key: the rest follows it in the same order
            rest = json.dumps(request, separators=(",", ":"))[1:-1]
            if len(self._bodies) >= _BODIES_KEPT:
                self._bodies.clear()
            self._bodies[key] = rest
        return f'{{"message":{{"token":{json.dumps(message.to)},{rest}}}}}'.encode()

    async def aclose(self) -> None:
        """Closes the pool and token transport only if :meth:`from_service_account` made them."""
        if self._owns_http:
            await self._http.close()
            self._tokens.close()


def build_request(message: Message) -> dict[str, Any]:
    """The ``messages:send`` body for one device token."""
    body: dict[str, Any] = {
        "token": message.to,
        "notification": {k: message.parts[k] for k in ("title", "body") if message.parts.get(k)},
        "android": _android(message),
        "apns": _apns(message),
        "webpush": _webpush(message),
    }
    if message.data:
        body["data"] = dict(message.data)
    return {"message": body}


# The notification id is the tag/collapse key on every platform: an update of the same
# notification (installing -> completed) replaces the entry in the device's tray instead of
# stacking a second one. The category picks the Android channel (the manifest's default
# channel is used when the app has not created one by that name) and the iOS thread.
def _android(message: Message) -> dict[str, Any]:
    return {"priority": "high",
            "notification": {"channel_id": message.category, "tag": message.notification_id}}


def _apns(message: Message) -> dict[str, Any]:
    return {"headers": {"apns-priority": "10",
                        "apns-collapse-id": _collapse_id(message.notification_id)},
            "payload": {"aps": {"thread-id": message.category}}}


def _webpush(message: Message) -> dict[str, Any]:
    return {"headers": {"Urgency": "high"}, "notification": {"tag": message.notification_id}}


def _collapse_id(notification_id: str) -> str:
    if len(notification_id.encode()) <= APNS_COLLAPSE_ID_MAX:
        return notification_id
    return hashlib.sha256(notification_id.encode()).hexdigest()  # 64 hex characters


def error_for(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> ChannelError:
    """The channel error for a non-200 FCM answer (the table in the module docstring)."""
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    code = _error_code(error)
    text = f"FCM {status} {code or '-'}: {error.get('message') or body.get('text', '')}".strip()
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return UnregisteredDevice(text)
    if code == "INVALID_ARGUMENT" and _concerns_token(error):
        return UnregisteredDevice(text)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return PermanentError(text)
    if status == HTTPStatus.UNAUTHORIZED:
        return TransientError(text)
    if status in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS) or status >= 500:
        return TransientError(text, retry_after=parse_retry_after(headers.get("Retry-After")))
    return PermanentError(text)


def _error_code(error: Mapping[str, Any]) -> str | None:
    """FCM's own ``errorCode`` when given (it is more precise), else the google.rpc status."""
    for detail in _details(error):
        if detail.get("@type") == _FCM_ERROR_TYPE and detail.get("errorCode"):
            return str(detail["errorCode"])
    status = error.get("status")
    return str(status) if status else None


def _concerns_token(error: Mapping[str, Any]) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than the payload."""
    for detail in _details(error):
        if detail.get("@type") == _BAD_REQUEST_TYPE:
            fields = {v.get("field") for v in detail.get("fieldViolations", []) if isinstance(v, dict)}
            if "message.token" in fields:
                return True
    # FCM's usual answer carries no field: "The registration token is not a valid FCM
    # registration token".
    return "registration token" in str(error.get("message", "")).lower()


def _details(error: Mapping[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _parse_json(raw: bytes) -> dict[str, Any]:
    """The JSON object of a response; a proxy's HTML error page becomes ``{"text": …}``."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"text": raw[:200].decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else {"text": str(parsed)[:200]}


def _receipt(body: Mapping[str, Any]) -> Receipt:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        # FCM accepted the message (200); refusing the receipt would only make us send it again.
        log.warning("FCM answered 200 without a message name: %r", body)
        return Receipt("")
    return Receipt(name)
