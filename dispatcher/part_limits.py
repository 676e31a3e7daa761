"""How long each rendered part may be, per channel, enforced once in the core for every provider.

A rendered part longer than its channel allows is cut at a word boundary and ends with "…",
before any provider (the ``log`` provider included) sees it. Limits, in characters:

==========  ==============================  ===============================================
channel     part: limit                     why
==========  ==============================  ===============================================
sms         text: 1,600                     SNS splits at 140 bytes and stops at 1,600 chars
email       subject: 998                    RFC 5322's line limit
push        title: 256, body: 2,048         and title + body at most 3,584 UTF-8 bytes, so
                                            the FCM payload (data keys included) stays < 4 KB
in_app      title: 256, body: 4,096         what a feed shows; stored per recipient
==========  ==============================  ===============================================

Email ``html`` and ``text`` bodies have no limit here (SES allows 10 MB per message).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PART_LIMITS", "PUSH_BYTES", "bounded", "fit"]

PART_LIMITS: Mapping[str, Mapping[str, int]] = {
    "sms": {"text": 1600},
    "email": {"subject": 998},
    "push": {"title": 256, "body": 2048},
    "in_app": {"title": 256, "body": 4096},
}
PUSH_BYTES = 3584
_ELLIPSIS = "…"


def fit(text: str, limit: int) -> str:
    """``text`` if it fits, else cut at the last space before ``limit`` (or at the limit when
    there is none in the second half) and ended with "…", at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + _ELLIPSIS


def bounded(channel: str, parts: Mapping[str, str]) -> dict[str, str]:
    """The channel's parts, each within its limit (push: title and body within PUSH_BYTES)."""
    limits = PART_LIMITS.get(channel, {})
    out = {part: fit(text, limits[part]) if part in limits else text for part, text in parts.items()}
    if channel == "push":
        room = PUSH_BYTES - len(out.get("title", "").encode())
        body = out.get("body", "")
        while len(body.encode()) > room and body:
            body = fit(body, max(len(body) - max((len(body.encode()) - room) // 4, 1), 1))
        out["body"] = body
    return out
