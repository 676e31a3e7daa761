"""Opaque cursors for keyset pagination: the sort key of the last row, base64-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from dispatcher.errors import InvalidCursor

__all__ = ["InvalidCursor", "decode_cursor", "encode_cursor"]


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"cursor {cursor!r} is not one this API returned") from None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidCursor(f"cursor {cursor!r} is not one this API returned")
    return key
