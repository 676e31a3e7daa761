"""Who is calling: a service (``Bearer <api key>``) or an end user (``Bearer <JWT>``).

Service keys come from ``DISPATCHER_API_KEYS``; a service may act for any user. User tokens
are HS256 JWTs signed with ``DISPATCHER_USER_TOKEN_SECRET``, ``sub`` = user id, ``exp``
required; a user token only ever reaches its own user's data.

``exp`` must be a JSON number (PyJWT alone also takes the string ``"9999999999"``) no further
ahead than ``DISPATCHER_USER_TOKEN_MAX_LIFETIME`` seconds: a leaked token minted by a careless
issuer for years (or for ever) is refused rather than honoured until the secret rotates.
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope

from dispatcher.api.errors import ApiError
from dispatcher.observability import logs
from dispatcher.scoped_tokens import ScopedTokenError, ScopedTokens

__all__ = ["BEARER", "Authenticator", "Caller", "ScopedTokenError", "ScopedTokens"]

#: The security scheme of the OpenAPI document (the Authorize button of /docs). Parsing and
#: errors stay ours (``auto_error=False``): a 401 in the error envelope, not FastAPI's 403.
BEARER = HTTPBearer(scheme_name="bearer", bearerFormat="API key or JWT", auto_error=False,
                    description="A service's API key (`DISPATCHER_API_KEYS`), or an end user's HS256 "
                                "JWT (`sub` = user id, `exp` required) signed with "
                                "`DISPATCHER_USER_TOKEN_SECRET`. Operations on /v1/notifications and "
                                "/v1/templates, and PUT /v1/users/{user_id}, take a service key only.")


@dataclass(frozen=True)
class Caller:
    service: str | None = None
    user_id: str | None = None

    def require_service(self) -> str:
        if self.service is None:
            raise ApiError(403, "this endpoint needs a service API key, not a user token")
        return self.service

    def require_user(self, user_id: str) -> None:
        if self.service is None and self.user_id != user_id:
            raise ApiError(403, "a user token only reaches its own user's data")


class Authenticator:
    def __init__(self, service_keys: dict[str, str], user_token_secret: str,
                 max_lifetime: float = 30 * 86400) -> None:
        self._keys = service_keys
        self._secret = user_token_secret
        self._max_lifetime = max_lifetime

    async def __call__(self, request: Request,
                       declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None
                       ) -> Caller:
        """``declared`` only puts the scheme in the document; the header is read here."""
        token = _bearer(request.headers.get("authorization", ""))
        if token is None:
            raise ApiError(401, "missing 'Authorization: Bearer <api key or user token>' header")
        service = self._service(token)
        if service is not None:
            return Caller(service=service)
        user_id = self._user(token)
        logs.bind(user_id=user_id)  # on every log line of this request
        return Caller(user_id=user_id)

    def service_of(self, scope: Scope) -> str | None:
        """The service whose API key a request (its ASGI scope) carries, or None (no key, a
        user token, anything wrong: what :meth:`__call__` tells apart)."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = _bearer(value.decode("latin-1"))
                return None if token is None else self._service(token)
        return None

    def _service(self, token: str) -> str | None:
        for key, service in self._keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                return service
        return None

    def _user(self, token: str) -> str:
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "the user token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, f"not a valid API key or user token ({exc})") from None
        self._check_exp(claims["exp"])
        return str(claims["sub"])

    def _check_exp(self, exp: Any) -> None:
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise ApiError(401, "the user token's exp must be a number (seconds since the epoch)")
        if exp > time.time() + self._max_lifetime:
            raise ApiError(401, f"the user token expires more than {self._max_lifetime:g} s from now "
                                "(DISPATCHER_USER_TOKEN_MAX_LIFETIME)")


def _bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header's value, or None."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None
