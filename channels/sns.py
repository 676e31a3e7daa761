"""SMS through Amazon SNS ``Publish`` to a ``PhoneNumber`` (query protocol, over
:class:`transport.aws.AwsClient`).

* The number must be E.164 (``+`` and 7 to 15 digits); anything else is refused as
  :class:`~channels.base.InvalidRecipient` without calling SNS (a local check, not a
  round trip that SNS may or may not refuse: moto_server, for one, accepts ``12345``).
* ``AWS.SNS.SMS.SMSType`` is ``Promotional`` for the configured marketing categories and
  ``Transactional`` otherwise (higher delivery priority, and allowed to bypass some
  countries' quiet hours); ``AWS.SNS.SMS.SenderID`` is sent when configured.

Body limit: SNS splits a long text into segments itself (160 GSM-7 or 70 UCS-2 characters,
fewer when concatenated) and takes at most 1,600 characters per ``Publish``. A longer text is
truncated to ``max_chars`` (default 1,600), at a word boundary near the end when there is one,
with an ellipsis: an SMS that arrives shortened
beats one that never arrives, and splitting it into several ``Publish`` calls would deliver the
parts out of order. The ellipsis is ``...`` when the kept text is GSM-7 and ``…`` only
when it is UCS-2 anyway: ``…`` is not a GSM-7 character, and a single one would switch the
whole message to UCS-2, more than doubling the number of (billed) segments.

Errors (``AwsError`` code or status → channel error; ``raise … from`` the ``AwsError``):

==================================================================  ========================
``Throttling``, ``ThrottledException``, HTTP 429, any 5xx,            ``TransientError``
``InternalError``, no answer (connection refused, timeout)            (``retry_after``)
``InvalidParameter`` / ``InvalidParameterValue`` about the number     ``InvalidRecipient``
``OptedOut``, ``EndpointDisabled``, ``AuthorizationError``, any       ``PermanentError``
other 4xx
==================================================================  ========================
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar, Final

from channels.base import InvalidRecipient, Message, PermanentError, Receipt, TransientError
from transport.aws import AwsClient, AwsError

__all__ = ["SnsProvider", "SNS_VERSION", "MAX_SMS_CHARS", "fit_sms"]

SNS_VERSION: Final = "2010-03-31"
#: SNS's limit for one SMS ``Publish``, in characters.
MAX_SMS_CHARS: Final = 1600
_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
_INVALID_PARAMETER: Final = frozenset({"InvalidParameter", "InvalidParameterValue"})
#: GSM 03.38: the basic character set (without ESC) and the extension table.
_GSM7: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà" "\f^{}\\[~]|€")


class SnsProvider:
    """The ``sms`` channel over SNS."""

    channel: ClassVar[str] = "sms"
    name: ClassVar[str] = "sns"

    def __init__(self, client: AwsClient, *, sender_id: str | None = None,
                 promotional_categories: frozenset[str] = frozenset({"marketing"}),
                 max_chars: int = MAX_SMS_CHARS) -> None:
        if not 4 <= max_chars <= MAX_SMS_CHARS:
            raise ValueError(f"max_chars must be between 4 and {MAX_SMS_CHARS}, not {max_chars}")
        self._client = client
        self._sender_id = sender_id
        self._promotional = promotional_categories
        self._max_chars = max_chars

    async def send(self, message: Message) -> Receipt:
        params = self.params(message)
        try:
            result = await self._client.query("Publish", params, version=SNS_VERSION)
        except AwsError as exc:
            raise _channel_error(exc, message.to) from exc
        message_id = result.findtext("MessageId")
        if not message_id:
            raise PermanentError("SNS answered without a MessageId")
        return Receipt(message_id)

    async def aclose(self) -> None:
        return None  # the HTTP client belongs to whoever created it

    def params(self, message: Message) -> dict[str, str]:
        """The ``Publish`` parameters for one message, in the query protocol's flat form."""
        if not _E164.fullmatch(message.to):
            raise InvalidRecipient(f"not an E.164 phone number: {message.to!r}")
        text = message.parts.get("text", "").strip()
        if not text:
            raise PermanentError("SMS without text: the template has no sms text part")
        sms_type = "Promotional" if message.category in self._promotional else "Transactional"
        attributes = [("AWS.SNS.SMS.SMSType", sms_type)]
        if self._sender_id:
            attributes.append(("AWS.SNS.SMS.SenderID", self._sender_id))
        return {"PhoneNumber": message.to, "Message": fit_sms(text, self._max_chars),
                **_message_attributes(attributes)}


def fit_sms(text: str, max_chars: int = MAX_SMS_CHARS) -> str:
    """``text`` cut to ``max_chars`` characters, at a word boundary where possible, with an
    ellipsis that keeps GSM-7 text GSM-7."""
    if len(text) <= max_chars:
        return text
    kept = _cut(text, max_chars - 3)
    if _GSM7.issuperset(kept):
        return kept + "..."
    return _cut(text, max_chars - 1) + "…"


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, at the last word boundary when there is one near the
    end (as SNS itself splits), else mid-word (scripts without spaces)."""
    if text[limit:limit + 1].isspace():
        return text[:limit].rstrip()
    head, space, _ = text[:limit].rpartition(" ")
    if space and len(head) >= limit * 0.8:
        return head.rstrip()
    return text[:limit].rstrip()


def _message_attributes(attributes: Iterable[tuple[str, str]]) -> dict[str, str]:
    """SNS's ``MessageAttributes`` map, flattened as botocore's query serializer does."""
    params: dict[str, str] = {}
    for n, (name, value) in enumerate(attributes, start=1):
        prefix = f"MessageAttributes.entry.{n}"
        params[f"{prefix}.Name"] = name
        params[f"{prefix}.Value.DataType"] = "String"
        params[f"{prefix}.Value.StringValue"] = value
    return params


def _channel_error(exc: AwsError, to: str) -> Exception:
    text = f"SNS {exc.code} (HTTP {exc.status}): {exc.message}"
    if exc.transient:
        return TransientError(text, retry_after=exc.retry_after)
    lowered = exc.message.lower()
    if exc.code in _INVALID_PARAMETER and ("phone" in lowered or to in exc.message):
        return InvalidRecipient(text)
    return PermanentError(text)
