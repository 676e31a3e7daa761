"""The ``log`` provider: records what would have been sent, for any external channel.

The embedded default uses it for email, SMS and push, so that a fresh ``dispatcher serve``
needs no accounts. Each message is logged, and, when a path is configured, appended to a
JSON-lines file (one line per message, written with one ``write`` call, so lines from a
process killed mid-run are whole).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import ClassVar

from channels.base import Message, Receipt

__all__ = ["LogProvider"]

log = logging.getLogger("dispatcher.channels.log")


class LogProvider:
    name: ClassVar[str] = "log"
    channel: ClassVar[str] = "*"

    def __init__(self, channel: str, path: Path | None = None) -> None:
        self.channel = channel  # type: ignore[misc]  # one instance per channel
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    async def send(self, message: Message) -> Receipt:
        receipt = Receipt(f"log-{uuid.uuid4()}")
        line = json.dumps({
            "provider_message_id": receipt.provider_message_id, "channel": message.channel,
            "to": message.to, "notification_id": message.notification_id,
            "user_id": message.user_id, "category": message.category,
            "parts": dict(message.parts), "data": dict(message.data),
            "at": round(time.time(), 6),  # when it was handed over (seconds since the epoch)
        }, ensure_ascii=False)
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode())
        log.debug("would send %s", line)
        return receipt

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
