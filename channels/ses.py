"""Email through Amazon SES v2 ``SendEmail`` (REST+JSON, over :class:`transport.aws.AwsClient`).

One call per message: subject, text and HTML parts (UTF-8), the configured sender, an optional
configuration set (for SES event publishing), and, when the message has an unsubscribe URL,
the RFC 8058 one-click headers ``List-Unsubscribe: <url>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.

Why ``Content.Simple`` with ``Headers`` rather than ``Content.Raw``: SES v2 takes custom headers
on a simple message (``Message.Headers`` in botocore's SES v2 model), so SES builds the MIME and
we send a small JSON document, 9 µs of CPU to build. Building the MIME ourselves with Python's
``email`` package costs 285 µs (``email.mime``) to 981 µs (``EmailMessage``) per message
(``python -m bench.aws_transport``, docs/AWS.md): more than the whole 0.17 ms call, up to as
much as the boto3 call this client replaces. moto_server 5.2.5 accepts ``Headers`` but does not
record them (its ``data.json`` keeps the subject, one body and the destinations; ``Raw`` would
be recorded whole), so the tests prove the headers on the wire instead: a local SES v2 server
records the exact request, and the payload is validated against botocore's SES v2 model.

Errors (``AwsError`` code or status → channel error; ``raise … from`` the ``AwsError``):

=================================================================  =========================
throttling: ``TooManyRequestsException``, ``Throttling``,            ``TransientError``
``LimitExceededException`` (sending quota; botocore also calls it    (``retry_after`` from
throttling), HTTP 429; any 5xx; no answer (connection, timeout)      ``Retry-After``)
``MessageRejected``, ``MailFromDomainNotVerifiedException``,         ``PermanentError``
``AccountSuspendedException``, ``SendingPausedException``            (``provider_rejected``)
``BadRequestException`` / ``InvalidParameterValue`` about the        ``InvalidRecipient``
recipient (names the address, or an address/domain/recipient word)
any other 4xx (``NotFoundException``: unknown configuration set, …)  ``PermanentError``
a 2xx without a ``MessageId``                                        ``PermanentError`` (SES
                                                                     may have sent it: no retry)
=================================================================  =========================
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Final

from channels.base import InvalidRecipient, Message, PermanentError, Receipt, TransientError
from transport.aws import AwsClient, AwsError

__all__ = ["SesProvider", "SEND_EMAIL_PATH"]

SEND_EMAIL_PATH: Final = "/v2/email/outbound-emails"
_BAD_REQUEST: Final = frozenset({"BadRequestException", "InvalidParameterValue"})
#: What SES says about a malformed destination ("Illegal address", "Missing final
#: '@domain'", "Domain contains illegal character", "Local address contains control…").
_RECIPIENT_WORDS: Final = ("address", "domain", "recipient", "destination", "mailbox")
#: Distinct contents (subject, text, html) whose JSON is kept; a bulk has one.
_CONTENTS_KEPT: Final = 64


class SesProvider:
    """The ``email`` channel over SES v2."""

    channel: ClassVar[str] = "email"
    name: ClassVar[str] = "ses"

    def __init__(self, client: AwsClient, *, sender: str,
                 configuration_set: str | None = None) -> None:
        self._client = client
        self._sender = sender
        self._configuration_set = configuration_set
        self._sender_json = _json(sender)
        self._tail = f',"ConfigurationSetName":{_json(configuration_set)}' if configuration_set else ""
        self._contents: dict[tuple[str, str | None, str | None], str] = {}

    async def send(self, message: Message) -> Receipt:
        body = self.body(message)
        try:
            answer = await self._client.rest_json("POST", SEND_EMAIL_PATH, body)
        except AwsError as exc:
            raise self._channel_error(exc, message.to) from exc
        message_id = answer.get("MessageId")
        if not isinstance(message_id, str) or not message_id:
            raise PermanentError(f"SES answered without a MessageId: {answer!r}")
        return Receipt(message_id)

    async def aclose(self) -> None:
        return None  # the HTTP client belongs to whoever created it

    def payload(self, message: Message) -> dict[str, Any]:
        """The ``SendEmail`` request body for one message."""
        simple: dict[str, Any] = {"Subject": _content(_subject(message)), "Body": _body(message)}
        if message.unsubscribe_url:
            simple["Headers"] = _unsubscribe_headers(message.unsubscribe_url)
        payload: dict[str, Any] = {
            "FromEmailAddress": self._sender,
            "Destination": {"ToAddresses": [message.to]},
            "Content": {"Simple": simple},
        }
        if self._configuration_set:
            payload["ConfigurationSetName"] = self._configuration_set
        return payload

    def body(self, message: Message) -> bytes:
        """:meth:`payload` as the JSON bytes sent, the same bytes ``json.dumps`` gives.

        A bulk sends one subject, text and HTML to every recipient: their JSON (escaping a few
        KiB of HTML) is made once per distinct content and kept, and only the address and the
        unsubscribe headers are encoded per message (the SES payload's ``json.dumps`` was 3 %
        of a worker's CPU on the mixed bulk: docs/BENCHMARKS.md)."""
        parts = message.parts
        key = (parts.get("subject", ""), parts.get("text"), parts.get("html"))
        content = self._contents.get(key)
        if content is None:  # a message without subject or body raises here, every time
            content = _json({"Subject": _content(_subject(message)), "Body": _body(message)})[1:-1]
            if len(self._contents) >= _CONTENTS_KEPT:
                self._contents.clear()
            self._contents[key] = content
        if message.unsubscribe_url:
            content += ',"Headers":' + _json(_unsubscribe_headers(message.unsubscribe_url))
        return (f'{{"FromEmailAddress":{self._sender_json},'
                f'"Destination":{{"ToAddresses":[{_json(message.to)}]}},'
                f'"Content":{{"Simple":{{{content}}}}}{self._tail}}}').encode()

    def _channel_error(self, exc: AwsError, to: str) -> Exception:
        text = f"SES {exc.code} (HTTP {exc.status}): {exc.message}"
        if exc.transient:
            return TransientError(text, retry_after=exc.retry_after)
        if exc.code in _BAD_REQUEST and _about_recipient(exc.message, to, self._sender):
            return InvalidRecipient(text)
        return PermanentError(text)


def _json(value: Any) -> str:
    # as transport.aws encodes a payload
    return json.dumps(value, separators=(",", ":"))


def _subject(message: Message) -> str:
    subject = message.parts.get("subject", "").strip()
    if not subject:
        raise PermanentError("email without a subject: the template has no subject part")
    # A header cannot span lines; templates may leave a trailing newline or wrap.
    return " ".join(subject.split())


def _body(message: Message) -> dict[str, Any]:
    body = {kind: _content(message.parts[part])
            for kind, part in (("Text", "text"), ("Html", "html")) if message.parts.get(part)}
    if not body:
        raise PermanentError("email without a body: the template has neither text nor html")
    return body


def _content(data: str) -> dict[str, str]:
    # Charset UTF-8 lets SES encode non-ASCII subjects (RFC 2047) and bodies itself.
    return {"Data": data, "Charset": "UTF-8"}


def _unsubscribe_headers(url: str) -> list[dict[str, str]]:
    """RFC 2369 ``List-Unsubscribe`` plus RFC 8058 one-click (what Gmail and Yahoo require
    of bulk senders); the URL must be HTTPS in production for one-click to count."""
    return [{"Name": "List-Unsubscribe", "Value": f"<{url}>"},
            {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]


def _about_recipient(text: str, to: str, sender: str) -> bool:
    """Whether a bad-request message is about the destination rather than the sender or
    the content. SES has no distinct code for a bad address, so this reads the message."""
    lowered = text.lower()
    if sender.lower() in lowered:
        return False
    return to.lower() in lowered or any(word in lowered for word in _RECIPIENT_WORDS)
