"""Timestamps on the wire: ISO 8601 in UTC, from the store's microseconds since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso"]


def iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat().replace("+00:00", "Z")
