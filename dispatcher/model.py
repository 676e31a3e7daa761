"""The dispatcher's vocabulary: notification ids, channels, delivery statuses and reasons.

Everything here is plain data with no I/O, shared by the gateway, the worker and the store.
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum

__all__ = [
    "CHANNELS",
    "Channel",
    "DeliveryStatus",
    "FINAL_STATUSES",
    "InvalidNotificationId",
    "Reason",
    "parse_notification_id",
]


class Channel(StrEnum):
    IN_APP = "in_app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)


class DeliveryStatus(StrEnum):
    """One ledger row's life: ``pending -> sending -> sent | failed``, or ``pending -> skipped``.

    ``sending`` means a worker has claimed the row and its provider request may be in flight.
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


FINAL_STATUSES = frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED})


class Reason(StrEnum):
    """Why a row was skipped or failed (``reason`` column of the ledger)."""

    OPTED_OUT = "opted_out"
    NO_CONTACT = "no_contact"
    INVALID_CONTACT = "invalid_contact"
    PROVIDER_REJECTED = "provider_rejected"
    UNREGISTERED_DEVICE = "unregistered_device"
    RETRIES_EXHAUSTED = "retries_exhausted"
    TEMPLATE_ERROR = "template_error"
    #: The worker crashed after claiming the row: the provider may or may not have the message.
    OUTCOME_UNKNOWN = "outcome_unknown"


class InvalidNotificationId(ValueError):
    """A notification id that does not follow ``<service>#<uuid>``."""


_ID_RE = re.compile(r"^(?P<service>[A-Za-z0-9_.-]{1,64})#(?P<uuid>[0-9A-Fa-f-]{32,36})$")


def parse_notification_id(notification_id: str, service: str | None = None) -> str:
    """Check ``notification_id`` against the id policy and return its service part.

    With ``service`` given, the id must also belong to that service.
    """
    match = _ID_RE.match(notification_id)
    if match is None:
        raise InvalidNotificationId(
            f"notification id {notification_id!r} does not match '<service>#<uuid>'"
        )
    try:
        uuid.UUID(match["uuid"])
    except ValueError:
        raise InvalidNotificationId(
            f"notification id {notification_id!r}: {match['uuid']!r} is not a UUID"
        ) from None
    if service is not None and match["service"] != service:
        raise InvalidNotificationId(
            f"notification id {notification_id!r} belongs to service {match['service']!r}, "
            f"not to the calling service {service!r}: ids must start with '{service}#'"
        )
    return match["service"]
