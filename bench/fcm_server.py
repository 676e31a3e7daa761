"""A local FCM-compatible server: Google's OAuth2 token endpoint and FCM HTTP v1 ``messages:send``.

It speaks the real protocol, so the real client stack (google-auth signing a JWT assertion,
aiohttp posting messages) runs against it unchanged:

* ``POST /token``: ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>``.
  The RS256 signature is checked against the public half of a key this server generated
  (:meth:`FcmServer.write_service_account`), as are ``iss``, ``aud`` (google-auth always signs
  for ``https://oauth2.googleapis.com/token``; the file's own ``token_uri`` is accepted too),
  ``exp`` and the FCM scope. Answers ``{"access_token", "expires_in", "token_type"}``.
* ``POST /v1/projects/{project}/messages:send``: needs ``Authorization: Bearer <a live token it
  issued>`` for that project (else 401 UNAUTHENTICATED / 403 PERMISSION_DENIED), checks the
  body roughly as FCM does (400 INVALID_ARGUMENT), then answers ``{"name": ...}``.

Every error is in FCM v1's shape: ``{"error": {"code", "message", "status", "details"}}``.
It runs in a background thread with its own event loop, so sync and async tests (and
benchmarks) can use it alike; ``stop()`` then ``start()`` brings it back on the same port.

It lives in ``bench/`` because both sides use it: ``bench.stack`` and ``bench.fcm_transport``
run against it, and the tests (``tests/channels``, ``tests/e2e``) import it from here. Tests
may import ``bench``; ``bench`` never imports ``tests`` (one module name for one server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["FCM_SCOPE", "FcmServer", "Scripted", "fcm_error", "rpc_error"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
#: Data keys FCM refuses (https://firebase.google.com/docs/cloud-messaging/concept-options).
RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")

#: A scripted answer: (HTTP status, JSON body, response headers).
Scripted = tuple[int, dict[str, Any], dict[str, str]]

#: FCM errorCode -> (HTTP status, google.rpc status, FCM's usual message).
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}


def rpc_error(code: int, status: str, message: str,
              details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Google API error body."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def fcm_error(error_code: str, message: str | None = None, *, field: str | None = None,
              headers: dict[str, str] | None = None) -> Scripted:
    """An FCM error answer for :meth:`FcmServer.script`, e.g. ``fcm_error("QUOTA_EXCEEDED",
    headers={"Retry-After": "7"})``; ``field`` adds a BadRequest field violation."""
    code, status, default_message = FCM_ERRORS[error_code]
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}]
    if field is not None:
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [
            {"field": field, "description": message or default_message}]})
    return code, rpc_error(code, status, message or default_message, details), headers or {}


@dataclass(frozen=True)
class _Account:
    email: str
    project_id: str
    public_key: rsa.RSAPublicKey


@dataclass(frozen=True)
class _Grant:
    account: _Account
    expires_at: float  # time.monotonic()


class FcmServer:
    """See the module docstring. Attributes are safe to read from any thread."""

    def __init__(self, *, expires_in: int = 3600, keep_messages: bool = True) -> None:
        #: ``expires_in`` of the tokens it issues from now on (small values force refreshes).
        self.expires_in = expires_in
        #: Seconds each send waits before answering (to provoke client timeouts).
        self.delay = 0.0
        self.received: list[dict[str, Any]] = []
        self.token_requests = 0
        self.send_requests = 0
        self._keep = keep_messages
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}  # by private_key_id (the JWT's kid)
        self._grants: dict[str, _Grant] = {}      # by access token
        self._scripts: dict[str, deque[Scripted]] = {}
        self._unregistered: set[str] = set()
        self._ids = itertools.count(1)
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FcmServer is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self) -> FcmServer:
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fcm-server",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("FcmServer did not start")
        if self._failure is not None:
            raise RuntimeError("FcmServer failed to start") from self._failure
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FcmServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # reported to start(), which is waiting on ``ready``
            self._failure = exc
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self._port).start()
            self._port = runner.addresses[0][1]
            self._stopping = asyncio.Event()
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- what tests arrange -----------------------------------------------------------------

    def write_service_account(self, path: Path, project_id: str = "test-project") -> Path:
        """Write a service-account JSON (fresh RSA key, ``token_uri`` here) and trust its key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = uuid.uuid4().hex
        email = f"fcm-sender@{project_id}.iam.gserviceaccount.com"
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        with self._lock:
            self._accounts[key_id] = _Account(email, project_id, key.public_key())
        path.write_text(json.dumps({
            "type": "service_account", "project_id": project_id, "private_key_id": key_id,
            "private_key": pem, "client_email": email, "client_id": str(uuid.uuid4().int)[:21],
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }, indent=2))
        return path

    def script(self, token: str, responses: list[Scripted]) -> None:
        """Answer the next sends to ``token`` with ``responses``, in order, then succeed."""
        with self._lock:
            self._scripts.setdefault(token, deque()).extend(responses)

    def unregister(self, token: str) -> None:
        """``token`` answers 404 UNREGISTERED from now on."""
        with self._lock:
            self._unregistered.add(token)

    def revoke_tokens(self) -> None:
        """Every access token issued so far stops working (401 UNAUTHENTICATED)."""
        with self._lock:
            self._grants.clear()

    # -- token endpoint ---------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        with self._lock:
            self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        try:
            account = self._verify_assertion(str(form.get("assertion", "")))
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            return _oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        access_token = f"ya29.local-{secrets.token_urlsafe(24)}"
        expires_in = self.expires_in
        with self._lock:
            self._grants[access_token] = _Grant(account, time.monotonic() + expires_in)
        return web.json_response({"access_token": access_token, "expires_in": expires_in,
                                  "token_type": "Bearer"})

    def _verify_assertion(self, assertion: str) -> _Account:
        with self._lock:
            account = self._accounts[jwt.get_unverified_header(assertion)["kid"]]
        claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                            audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri], issuer=account.email,
                            options={"require": ["iss", "aud", "exp", "iat"]})
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            raise ValueError(f"scope does not include {FCM_SCOPE}")
        return account

    # -- messages:send ----------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        with self._lock:
            self.send_requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        refused = self._check_auth(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _json(*_invalid("Invalid JSON payload received.", None))
        problem = _invalid_message(body)
        if problem is not None:
            return _json(*problem)
        return self._answer(request.match_info["project"], body)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            grant = self._grants.get(token) if scheme == "Bearer" else None
        if grant is None or grant.expires_at <= time.monotonic():
            reason = "ACCESS_TOKEN_EXPIRED" if grant is not None else "CREDENTIALS_MISSING"
            return _json(401, rpc_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                "OAuth 2 access token, login cookie or other valid authentication credential.",
                [{"@type": ERROR_INFO_TYPE, "reason": reason, "domain": "googleapis.com"}]))
        if grant.account.project_id != request.match_info["project"]:
            return _json(403, rpc_error(
                403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied on "
                f"resource '//cloudresourcemanager.googleapis.com/projects/"
                f"{request.match_info['project']}' (or it may not exist)."))
        return None

    def _answer(self, project: str, body: dict[str, Any]) -> web.Response:
        message = body["message"]
        token = message["token"]
        with self._lock:
            script = self._scripts.get(token)
            scripted = script.popleft() if script else None
            unregistered = token in self._unregistered
        if scripted is not None:
            return _json(*scripted)
        if unregistered:
            return _json(*fcm_error("UNREGISTERED"))
        number = next(self._ids)
        if not body.get("validate_only"):
            with self._lock:
                if self._keep:
                    self.received.append(message)
        return web.json_response({"name": f"projects/{project}/messages/0:{number}%local"})


def _invalid_message(body: Any) -> Scripted | None:
    """FCM's 400 for a malformed body, roughly as strict as FCM; None when it is fine."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        return _invalid("Invalid value at 'message'", "message")
    token = message.get("token")
    if not isinstance(token, str) or not token:
        return _invalid("Recipient of the message is not set.", "message.token")
    if len(token) > 4096 or any(c.isspace() or not c.isprintable() for c in token):
        return _invalid("The registration token is not a valid FCM registration token", None)
    for block in ("notification", "data", "android", "apns", "webpush"):
        if block in message and not isinstance(message[block], dict):
            return _invalid(f"Invalid value at 'message.{block}'", f"message.{block}")
    return _invalid_data(message.get("data", {})) or _invalid_notification(message)


def _invalid_data(data: dict[str, Any]) -> Scripted | None:
    for key, value in data.items():
        if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
            return _invalid(f"Invalid data payload key: {key}", "message.data")
        if not isinstance(value, str):
            return _invalid(f"Invalid value at 'message.data[{key}].value' (TYPE_STRING)",
                            f"message.data[{key}].value")
    return None


def _invalid_notification(message: dict[str, Any]) -> Scripted | None:
    for key, value in message.get("notification", {}).items():
        if not isinstance(value, str):
            return _invalid(f"Invalid value at 'message.notification.{key}' (TYPE_STRING)",
                            f"message.notification.{key}")
    priority = message.get("android", {}).get("priority", "normal")
    if priority not in ("normal", "high"):
        return _invalid(f"Invalid value at 'message.android.priority' ({priority!r})",
                        "message.android.priority")
    return None


def _invalid(description: str, field: str | None) -> Scripted:
    return fcm_error("INVALID_ARGUMENT", description, field=field)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)
