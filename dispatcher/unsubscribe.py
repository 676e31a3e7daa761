"""One-click unsubscribe links for email (RFC 8058 ``List-Unsubscribe``).

A link names a user and a category and carries an HMAC over both, so following it needs no
login and can't be forged for another user. ``POST`` (what mail clients send for one-click)
turns that user's email off for that category; ``GET`` only shows a confirmation page, since
mail scanners follow links on their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from dispatcher.errors import InvalidLink

__all__ = ["InvalidLink", "UnsubscribeLinks"]


class UnsubscribeLinks:
    def __init__(self, base_url: str, secret: str) -> None:
        self._base = base_url.rstrip("/")
        # A key of its own, so an unsubscribe token can never pass as anything else.
        self._key = hmac.new(secret.encode(), b"dispatcher unsubscribe v1", hashlib.sha256).digest()

    def url(self, user_id: str, category: str) -> str:
        return f"{self._base}/v1/unsubscribe/{self.token(user_id, category)}"

    def token(self, user_id: str, category: str) -> str:
        payload = _b64(json.dumps([user_id, category], separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> tuple[str, str]:
        """The (user id, category) the token was made for; raises :class:`InvalidLink`."""
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidLink()
        try:
            user_id, category = json.loads(_unb64(payload))
        except (ValueError, TypeError, binascii.Error):
            raise InvalidLink() from None
        return str(user_id), str(category)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:18])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
