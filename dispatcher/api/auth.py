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
from typing import Any

import jwt
from fastapi import Request

from dispatcher.api.errors import ApiError

__all__ = ["Authenticator", "Caller", "ScopedTokenError", "ScopedTokens"]


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

    async def __call__(self, request: Request) -> Caller:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing 'Authorization: Bearer <api key or user token>' header")
        service = self._service(token.strip())
        if service is not None:
            return Caller(service=service)
        return Caller(user_id=self._user(token.strip()))

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


#: Seconds of clock difference tolerated between the process that mints a scoped token and
#: the one that reads it.
_CLOCK_LEEWAY = 10


class ScopedTokenError(Exception):
    """A scoped token that is not valid for its purpose; ``expired`` when it only ran out."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class ScopedTokens:
    """Tokens that reach one user's data for one purpose only: a preference-centre link
    (``preferences``) or opening the live feed from a browser (``stream``).

    An HS256 JWT like a user token, but signed with a key derived from the user token secret
    for its purpose (HMAC of the purpose name), with ``aud`` = the purpose. So it never verifies
    as a user token (:class:`Authenticator` answers 401 for it on every other endpoint), nor as
    a token of another purpose: a preference link can't open a stream or send anything, and a
    stream token put in a URL can't be replayed as a credential.
    """

    def __init__(self, secret: str, purpose: str, lifetime: float) -> None:
        self.purpose = purpose
        self.lifetime = lifetime
        self._key = hmac.new(secret.encode(), f"dispatcher {purpose} token v1".encode(),
                             "sha256").hexdigest() if secret else ""

    def mint(self, user_id: str, ttl: float | None = None, *, now: float | None = None) -> tuple[str, int]:
        """A token for ``user_id``, and when it expires (seconds since the epoch); ``now``: the
        issue time (default: now)."""
        if not self._key:
            raise ApiError(503, "DISPATCHER_USER_TOKEN_SECRET is not set: no link can be signed",
                           "unavailable")
        issued = int(time.time() if now is None else now)
        exp = issued + max(1, math.ceil(min(ttl or self.lifetime, self.lifetime)))
        claims = {"sub": user_id, "aud": self.purpose, "iat": issued, "exp": exp}
        return jwt.encode(claims, self._key, algorithm="HS256"), exp

    def verify(self, token: str) -> str:
        """The user id the token was minted for; raises :class:`ScopedTokenError`."""
        return self.read(token)[0]

    def read(self, token: str) -> tuple[str, int]:
        """(user id, expiry in seconds since the epoch); raises :class:`ScopedTokenError`."""
        if not self._key:
            raise ScopedTokenError(f"not a valid {self.purpose} token")
        try:
            # Leeway: the token may be minted by another gateway whose clock is a little ahead.
            claims = jwt.decode(token, self._key, algorithms=["HS256"], audience=self.purpose,
                                leeway=_CLOCK_LEEWAY, options={"require": ["exp", "sub", "aud"]})
        except jwt.ExpiredSignatureError:
            raise ScopedTokenError(f"the {self.purpose} token has expired", expired=True) from None
        except jwt.InvalidTokenError:
            raise ScopedTokenError(f"not a valid {self.purpose} token") from None
        exp = claims["exp"]
        # Not longer than the lifetime now allows: lowering the setting cuts older links short.
        if isinstance(exp, bool) or not isinstance(exp, int | float) or exp > time.time() + self.lifetime + 60:
            raise ScopedTokenError(f"not a valid {self.purpose} token")
        return str(claims["sub"]), int(exp)
