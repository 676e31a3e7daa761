"""SES sending events, as SNS delivers them, read into what they mean for the ledger.

Two shapes carry the same events: *event publishing* (a configuration set's event
destination: ``eventType``) and the older identity *notifications* (``notificationType``).
Both name the message by ``mail.messageId``, the id ``SendEmail`` answered (the ledger row's
``provider_message_id``). What each becomes:

===============  ==========================================  ===============================
event            row (only from a lower rank, never back)    address
===============  ==========================================  ===============================
Delivery         ``delivered``                               -
Bounce           ``bounced`` / ``hard_bounce`` (Permanent)   suppressed at once
                 ``bounced`` / ``soft_bounce`` (Transient,   counted; suppressed after
                 Undetermined)                               ``DISPATCHER_SOFT_BOUNCE_LIMIT``
Complaint        ``complained`` / ``complaint``              suppressed at once
Reject           ``failed`` / ``provider_rejected``          -
DeliveryDelay    stays ``sent``; the detail says why         -
===============  ==========================================  ===============================

Other event types (Send, Open, Click, Rendering Failure, Subscription) change nothing.
No I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.errors import InvalidRequest
from dispatcher.model import DeliveryStatus, Reason

__all__ = ["ProviderEvent", "Suppress", "parse_ses_event"]

_HANDLED = ("Delivery", "Bounce", "Complaint", "Reject", "DeliveryDelay")


class Suppress:
    """What an event does to its addresses: suppress them now, or count a soft bounce."""

    NOW = "now"
    COUNT = "count"


@dataclass(frozen=True)
class ProviderEvent:
    """One SES event: which message, what its row becomes, what its addresses become."""

    event_id: str                      # the SNS MessageId (unique per event, kept on redelivery)
    kind: str                          # Delivery, Bounce, …
    provider_message_id: str
    status: DeliveryStatus | None      # None: the row's status stays (DeliveryDelay)
    reason: Reason | None
    detail: str
    addresses: tuple[str, ...]         # the recipients the event is about
    suppress: str | None               # Suppress.NOW / Suppress.COUNT / None
    cause: str | None                  # why an address is suppressed (hard_bounce, complaint)
    published_at: int | None = None    # when SNS published it (µs; its signed Timestamp)


def parse_ses_event(message: str, event_id: str, published_at: int | None = None) -> ProviderEvent | None:
    """The SNS ``Message`` of an SES event; None for an event type that changes nothing.
    Raises :class:`InvalidRequest` (field ``Message``) for what is not an SES event."""
    try:
        raw = json.loads(message)
    except ValueError:
        raise InvalidRequest("Message", "is not JSON (is SNS raw message delivery on? turn it off: "
                                        "the SNS envelope carries the signature)") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("Message", "is not a JSON object")
    kind = raw.get("eventType") or raw.get("notificationType")
    if not isinstance(kind, str):
        raise InvalidRequest("Message", "has neither eventType nor notificationType: not an SES event")
    if kind not in _HANDLED:
        return None
    mail = raw.get("mail")
    if not isinstance(mail, dict):
        raise InvalidRequest("Message", "has no mail object: not an SES event")
    message_id = mail.get("messageId")
    if not isinstance(message_id, str) or not message_id or len(message_id) > 255:
        raise InvalidRequest("Message", "mail.messageId is missing or not a string")
    body = _section(raw, kind)
    return replace(_READERS[kind](event_id, message_id, body, mail), published_at=published_at)


def _section(raw: dict[str, Any], kind: str) -> dict[str, Any]:
    name = kind[0].lower() + kind[1:]  # Bounce -> bounce, DeliveryDelay -> deliveryDelay
    section = raw.get(name)
    if not isinstance(section, dict):
        raise InvalidRequest("Message", f"a {kind} event without its {name!r} object")
    return section


def _addresses(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    found = (i.get("emailAddress") if isinstance(i, dict) else i for i in items)
    return tuple(a for a in found if isinstance(a, str) and 0 < len(a) <= 320)


def _delivery(event_id: str, mid: str, body: dict[str, Any], mail: dict[str, Any]) -> ProviderEvent:
    detail = f"delivered: {body.get('smtpResponse', '')}".strip()
    return ProviderEvent(event_id, "Delivery", mid, DeliveryStatus.DELIVERED, None, detail,
                         _addresses(body.get("recipients")), None, None)


def _bounce(event_id: str, mid: str, body: dict[str, Any], mail: dict[str, Any]) -> ProviderEvent:
    kind, sub = str(body.get("bounceType", "Undetermined")), str(body.get("bounceSubType", ""))
    recipients = body.get("bouncedRecipients")
    diagnostics = [str(r.get("diagnosticCode") or r.get("status") or "")
                   for r in recipients if isinstance(r, dict)] if isinstance(recipients, list) else []
    detail = f"bounce {kind}/{sub}: {'; '.join(d for d in diagnostics if d)}".rstrip(": ")
    hard = kind == "Permanent"
    return ProviderEvent(event_id, "Bounce", mid, DeliveryStatus.BOUNCED,
                         Reason.HARD_BOUNCE if hard else Reason.SOFT_BOUNCE, detail,
                         _addresses(recipients), Suppress.NOW if hard else Suppress.COUNT,
                         Reason.HARD_BOUNCE.value if hard else Reason.SOFT_BOUNCE.value)


def _complaint(event_id: str, mid: str, body: dict[str, Any], mail: dict[str, Any]) -> ProviderEvent:
    feedback = body.get("complaintFeedbackType") or body.get("complaintSubType") or "unspecified"
    return ProviderEvent(event_id, "Complaint", mid, DeliveryStatus.COMPLAINED, Reason.COMPLAINT,
                         f"complaint: {feedback}", _addresses(body.get("complainedRecipients")),
                         Suppress.NOW, Reason.COMPLAINT.value)


def _reject(event_id: str, mid: str, body: dict[str, Any], mail: dict[str, Any]) -> ProviderEvent:
    return ProviderEvent(event_id, "Reject", mid, DeliveryStatus.FAILED, Reason.PROVIDER_REJECTED,
                         f"rejected by SES after accepting it: {body.get('reason', '')}",
                         _addresses(mail.get("destination")), None, None)


def _delay(event_id: str, mid: str, body: dict[str, Any], mail: dict[str, Any]) -> ProviderEvent:
    detail = (f"delivery delayed ({body.get('delayType', 'unspecified')}); SES keeps trying "
              f"until {body.get('expirationTime', '?')}")
    return ProviderEvent(event_id, "DeliveryDelay", mid, None, None, detail,
                         _addresses(body.get("delayedRecipients")), None, None)


_READERS = {"Delivery": _delivery, "Bounce": _bounce, "Complaint": _complaint,
            "Reject": _reject, "DeliveryDelay": _delay}
