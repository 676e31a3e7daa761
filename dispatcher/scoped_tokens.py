"""Tokens that reach one user's data for one purpose only (a preference-centre link, a
browser's live-feed stream): minted by the API and by the planner (the preference link in
every email's footer), checked by the API and the pages."""

from __future__ import annotations

import hmac
import math
import time

import jwt

from dispatcher.errors import Unavailable

__all__ = ["ScopedTokenError", "ScopedTokens"]

#: Seconds of clock difference between gateways tolerated when checking a token's expiry.
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
            raise Unavailable("DISPATCHER_USER_TOKEN_SECRET is not set: no link can be signed")
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
