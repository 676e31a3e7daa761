"""The dispatcher's vocabulary: ids, channels, statuses, reasons, and the nouns the core works with.

Everything here is plain data with no I/O, shared by the gateway, the worker and the store
(which maps these nouns to rows and back; the core never sees a row).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from dispatcher.errors import ForeignNotification, InvalidNotificationId
from dispatcher.preferences import Preferences

if TYPE_CHECKING:
    from dispatcher.frequency import Cap

__all__ = [
    "AFTER_SENT",
    "CHANNELS",
    "Channel",
    "ChunkRows",
    "Claim",
    "DeliveryStatus",
    "Device",
    "FINAL_STATUSES",
    "FeedEntry",
    "HeaderUpdate",
    "NotificationHeader",
    "OutboxEntry",
    "Reason",
    "RowKey",
    "RowState",
    "Suppression",
    "Unfinished",
    "UserRecord",
    "WebhookEndpoint",
    "now_us",
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
    After ``sent`` the provider may tell more (SES events through SNS): ``delivered``,
    ``bounced``, ``complained``, ranked in that order and never moved backwards
    (:data:`AFTER_SENT`).
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


FINAL_STATUSES = frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED,
                            DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED})

#: What a provider event may make of a ``sent`` row, by rank: a row only moves to a higher
#: rank (a ``delivered`` arriving after ``bounced`` changes nothing; a duplicate neither).
#: ``failed`` is SES's ``Reject`` (it accepted the message, then refused to send it).
AFTER_SENT: dict[DeliveryStatus, int] = {
    DeliveryStatus.SENT: 0, DeliveryStatus.DELIVERED: 1, DeliveryStatus.BOUNCED: 2,
    DeliveryStatus.COMPLAINED: 3, DeliveryStatus.FAILED: 4,
}


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
    #: Provider events after ``sent`` (``bounced``/``complained`` rows).
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    #: The address is on the suppression list (a hard bounce, a complaint, repeated soft bounces).
    SUPPRESSED = "suppressed"
    #: The service cancelled the notification before this row was sent.
    CANCELLED = "cancelled"
    #: ``pending``: waiting for the end of the user's quiet hours (the detail says until when).
    QUIET_HOURS = "quiet_hours"
    #: Over the user's frequency cap for the category and channel (``DISPATCHER_FREQUENCY_CAPS``).
    RATE_LIMITED = "rate_limited"


_ID_RE = re.compile(r"(?P<service>[A-Za-z0-9_.-]{1,64})#(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                    r"[0-9a-f]{4}-[0-9a-f]{12})")
_ID_FORM = "'<service>#<uuid>' (the UUID in its canonical form: lowercase, 8-4-4-4-12 hex digits"


def parse_notification_id(notification_id: str, service: str | None = None) -> str:
    """Check ``notification_id`` against the id policy and return its service part.

    Only the canonical form is accepted (``app#3f1c…-…``, lowercase, dashes at their places,
    nothing around it): one UUID is one notification, never two spellings of it. With
    ``service`` given, the id must also belong to that service
    (:class:`~dispatcher.errors.ForeignNotification` otherwise).
    """
    match = _ID_RE.fullmatch(notification_id)
    if match is None:
        raise InvalidNotificationId(f"notification id {notification_id!r} does not match {_ID_FORM}, "
                                    f"e.g. 'app#{uuid.UUID(int=0x3F1C)}')")
    if service is not None and match["service"] != service:
        raise ForeignNotification(
            f"notification id {notification_id!r} belongs to service {match['service']!r}, "
            f"not to the calling service {service!r}: ids must start with '{service}#'"
        )
    return match["service"]


def now_us() -> int:
    """Now, in microseconds since the epoch: the unit of every timestamp the store keeps."""
    return time.time_ns() // 1000


class RowKey(NamedTuple):
    """One ledger row: (notification, user, channel)."""

    notification_id: str
    user_id: str
    channel: str


@dataclass(frozen=True)
class RowState:
    """What a ledger row should become: planned when a chunk opens it, or the outcome of a send."""

    key: RowKey
    status: DeliveryStatus
    reason: Reason | None = None
    detail: str | None = None
    provider_message_id: str | None = None


@dataclass(frozen=True)
class ChunkRows:
    """What one chunk message asks of the ledger when it opens its rows.

    ``rows``: the planned state of each (user, channel) of the chunk. ``insert``: channels
    whose missing rows are created. ``reset``: channels whose rows at an older version this
    version takes over (sends again). ``feed``: the in-app entry per user, written with the
    in-app rows this chunk wins."""

    notification_id: str
    version: int
    rows: Sequence[RowState]
    insert: frozenset[str]
    reset: frozenset[str]
    feed: Mapping[str, FeedEntry]
    #: Messages to hold with the rows (the rest of the chunk, for after quiet hours).
    held: Sequence[Held] = ()
    #: The notification's category, and its frequency caps (``dispatcher.frequency``).
    category: str = "default"
    caps: Sequence[Cap] = ()


@dataclass(frozen=True)
class Held:
    """A chunk message held until ``due_at`` (µs since the epoch): a notification's
    ``send_at``, or the end of a recipient's quiet hours."""

    notification_id: str
    version: int
    due_at: int
    body: str


@dataclass(frozen=True)
class CancelSummary:
    """What a cancel did: rows it cancelled (including rows not made yet, which will open as
    cancelled), rows still in flight (they end as they really end), and whether this call was
    the one that cancelled."""

    notification_id: str
    cancelled_at: int
    first: bool
    cancelled: int
    in_flight: int
    #: of ``cancelled``, the rows that existed (``pending``) and were made skipped/cancelled
    #: now, per channel (the others are counted when they open as cancelled)
    made_skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A sender's claim on rows: its token, and how many rows it may hold at once."""

    token: str
    limit: int
    #: Channels whose rows are not claimed this way (they wait for a rate limit first).
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Unfinished:
    """A row not final yet, as the settle step sees it."""

    key: RowKey
    status: DeliveryStatus
    version: int
    claimed_at: int | None


@dataclass(frozen=True)
class FeedEntry:
    """A user's in-app entry for one notification, at one version."""

    user_id: str
    notification_id: str
    version: int
    title: str
    body: str
    state: str | None
    category: str


@dataclass(frozen=True)
class HeaderUpdate:
    """What one message (or one accepted request) says about its notification."""

    id: str
    service: str
    version: int
    template: str
    data: dict[str, Any]
    state: str | None
    category: str
    locale: str | None
    channels: tuple[str, ...]
    recipients: int
    #: µs since the epoch: this version is held until then (``send_at``); None: at once.
    send_at: int | None = None


@dataclass(frozen=True, kw_only=True)
class NotificationHeader(HeaderUpdate):
    """The stored header: the highest version's fields, all channels, the most recipients;
    ``cancelled_at`` once its service cancelled it."""

    created_at: int
    updated_at: int
    cancelled_at: int | None = None


@dataclass(frozen=True)
class Device:
    token: str
    platform: str
    active: bool


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    preferences: Preferences = field(default_factory=Preferences)
    devices: tuple[Device, ...] = ()
    #: Profile fields templates see as ``user.name`` and ``user.attributes`` (issue 10).
    name: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class Suppression:
    """An address (email, lower case) or a device token not sent to, and why."""

    address: str
    channel: str
    cause: str
    detail: str | None
    created_at: int


@dataclass(frozen=True)
class WebhookEndpoint:
    service: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class OutboxEntry:
    """One webhook in the outbox: its ``id`` is the ``webhook-id`` of every attempt."""

    id: str
    service: str
    event: str
    payload: str
    status: str           # pending | delivered | failed
    attempts: int
    next_attempt_at: int
    last_error: str | None
    created_at: int
    updated_at: int
