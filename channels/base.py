"""The provider interface, its receipts, and the error tree every adapter maps into.

Error tree (adapters translate vendor errors at the boundary with ``raise … from exc``)::

    ChannelError
    ├── TransientError          retry later, with backoff; ``retry_after`` when the provider said
    └── PermanentError          never retry; ``reason`` goes to the ledger
        ├── InvalidRecipient    the address, number or token is unusable (reason invalid_contact)
        └── UnregisteredDevice  a push token the provider no longer knows (the device is deactivated)

An adapter returns a :class:`Receipt` or raises; it never returns ``False``. Retrying is not
the adapter's business: the worker's retry policy decides (``dispatcher.retry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

__all__ = [
    "ChannelError", "InvalidRecipient", "Message", "PermanentError", "Provider", "Receipt",
    "TransientError", "UnregisteredDevice",
]


@dataclass(frozen=True)
class Message:
    """One message to one address (email), number (sms) or device token (push)."""

    channel: str
    to: str
    parts: Mapping[str, str]
    notification_id: str
    user_id: str
    category: str
    #: Extra key/values for push ``data`` and the like.
    data: Mapping[str, str] = field(default_factory=dict)
    #: Email: a one-click unsubscribe URL for ``List-Unsubscribe`` (RFC 8058), when configured.
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class Receipt:
    provider_message_id: str


class ChannelError(Exception):
    """Base of every error an adapter raises."""


class TransientError(ChannelError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    reason: str = "provider_rejected"


class InvalidRecipient(PermanentError):
    reason = "invalid_contact"


class UnregisteredDevice(PermanentError):
    reason = "unregistered_device"


class Provider(Protocol):
    """What the worker needs of an email, SMS or push provider."""

    channel: ClassVar[str]
    name: ClassVar[str]

    async def send(self, message: Message) -> Receipt: ...

    async def aclose(self) -> None: ...
