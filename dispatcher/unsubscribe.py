"""One-click unsubscribe links for email (RFC 8058 ``List-Unsubscribe``).

A link names a user and a category, and when it was issued, and carries an HMAC over all
three, so following it needs no login and can't be forged for another user. ``POST`` (what
mail clients send for one-click) turns that user's email off for that category; ``GET`` only
shows a confirmation page, since mail scanners follow links on their own.

The issue time is what keeps an old link from undoing a later choice: a user unsubscribes,
later switches that category's email back on, then an old email's link is followed again
(by the user, a scanner or a forwarded copy). The router refuses a link issued before the
user's record last changed when the category's email switch is now explicitly on (see
:mod:`dispatcher.api.unsubscribe`). Links minted before issue times existed read as issued
at 0: they still work unless the user has since switched the category back on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import NamedTuple

from dispatcher.errors import InvalidLink
from dispatcher.scoped_tokens import ScopedTokens

__all__ = ["InvalidLink", "Link", "UnsubscribeLinks"]


class Link(NamedTuple):
    """What a verified link says: whose, which category, issued when (µs since the epoch)."""

    user_id: str
    category: str
    issued_us: int


class UnsubscribeLinks:
    """Unsubscribe links, and (with ``preferences``) links to the user's preference centre
    (``/p/{token}``, served by ``dispatcher.pages``) for the same emails' footers."""

    def __init__(self, base_url: str, secret: str, preferences: ScopedTokens | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._preferences = preferences
        # A key of its own, so an unsubscribe token can never pass as anything else.
        self._key = hmac.new(secret.encode(), b"dispatcher unsubscribe v1", hashlib.sha256).digest()

    def preferences_url(self, user_id: str) -> str | None:
        """A link to ``user_id``'s preference centre (it expires), or None when not configured."""
        if self._preferences is None:
            return None
        token, _ = self._preferences.mint(user_id)
        return f"{self._base}/p/{token}"

    def url(self, user_id: str, category: str, issued_us: int | None = None) -> str:
        return f"{self._base}/v1/unsubscribe/{self.token(user_id, category, issued_us)}"

    def token(self, user_id: str, category: str, issued_us: int | None = None) -> str:
        issued = time.time_ns() // 1000 if issued_us is None else issued_us
        payload = _b64(json.dumps([user_id, category, issued], separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> tuple[str, str]:
        """The (user id, category) the token was made for; raises :class:`InvalidLink`."""
        link = self.read(token)
        return link.user_id, link.category

    def read(self, token: str) -> Link:
        """The link the token was made for, with its issue time; raises :class:`InvalidLink`."""
        payload, _, signature = token.partition(".")
        # Bytes, not str: compare_digest raises TypeError on non-ASCII str (a 500 before).
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise InvalidLink()
        try:
            user_id, category, *issued = json.loads(_unb64(payload))
            issued_us = int(issued[0]) if issued else 0
        except (ValueError, TypeError, binascii.Error):
            raise InvalidLink() from None
        return Link(str(user_id), str(category), issued_us)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:18])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
