"""The queue message format: one notification version and a slice of its recipients.

The gateway splits each accepted request into chunk messages. Services may also write chunk
messages to the queue directly, so the worker decodes every message through
:func:`decode_chunk`, which checks the same rules as the gateway; a message that breaks
them is poison (:class:`PoisonMessage`) and goes to the dead-letter queue with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dispatcher.errors import InvalidNotificationId, PoisonMessage
from dispatcher.model import CHANNELS, parse_notification_id

__all__ = ["ChunkMessage", "PoisonMessage", "decode_chunk", "encode_chunk", "MAX_RECIPIENTS"]

MAX_RECIPIENTS = 10_000
FORMAT_VERSION = 1


class ChunkMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = FORMAT_VERSION
    id: str
    service: str
    version: int = Field(default=1, ge=1)
    template: str = Field(min_length=1)
    recipients: tuple[str, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    data: dict[str, Any] = Field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    category: str | None = None
    state: str | None = None
    locale: str | None = None
    recipients_total: int = Field(default=0, ge=0)
    #: Per-recipient data (user id -> data merged over ``data`` for that recipient only), for
    #: the recipients of this chunk that have any.
    recipient_data: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; known: {list(CHANNELS)}")
        return tuple(dict.fromkeys(value))

    @field_validator("recipients")
    @classmethod
    def _non_empty_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not r or len(r) > 255 for r in value):
            raise ValueError("recipient ids must be 1..255 characters")
        return value


    @model_validator(mode="after")
    def _data_of_recipients(self) -> ChunkMessage:
        """Data for someone not among ``recipients`` is dropped: a copy of a chunk for some of
        its recipients (``model_copy``, which validates nothing) may still carry the others'."""
        if self.recipient_data and not self.recipient_data.keys() <= set(self.recipients):
            ids = set(self.recipients)
            object.__setattr__(self, "recipient_data",
                               {k: v for k, v in self.recipient_data.items() if k in ids})
        return self

    def data_for(self, user_id: str) -> dict[str, Any] | None:
        """This recipient's own data (merged over ``data`` when rendering), if any."""
        return self.recipient_data.get(user_id)


def encode_chunk(message: ChunkMessage) -> str:
    if not message.recipient_data:  # as before per-recipient data existed: older workers read it
        return message.model_dump_json(exclude={"recipient_data"})
    return message.model_dump_json(exclude_defaults=False)


def decode_chunk(body: str | bytes, known_services: frozenset[str] | None = None) -> ChunkMessage:
    """Decode and validate one queue message, or raise :class:`PoisonMessage`."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PoisonMessage("message is not a JSON object")
    try:
        message = ChunkMessage.model_validate(raw)
    except ValidationError as exc:
        raise PoisonMessage(f"invalid chunk message: {_describe(exc)}") from None
    if message.format != FORMAT_VERSION:
        raise PoisonMessage(f"unsupported message format {message.format}")
    try:
        parse_notification_id(message.id, message.service)
    except InvalidNotificationId as exc:
        raise PoisonMessage(str(exc)) from None
    if known_services is not None and message.service not in known_services:
        raise PoisonMessage(f"unknown service {message.service!r}")
    return message


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
    )
