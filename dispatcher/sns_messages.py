"""Amazon SNS HTTP(S) deliveries: check that SNS sent them, and confirm subscriptions.

SNS signs every message it POSTs (``Signature``, base64) over a canonical string of some of
its fields; ``SignatureVersion`` 1 is SHA1withRSA, 2 SHA256withRSA, with the key of the X.509
certificate at ``SigningCertURL``. Anyone can POST a message naming a certificate of their
own, so the certificate is fetched only from a URL matching ``cert_url_pattern``
(``DISPATCHER_SNS_CERT_URL_PATTERN``; by default AWS's SNS hosts over https) and kept in a
small cache (a certificate URL names one certificate: AWS rotates to a new URL).

Anyone can also create an SNS topic of their own and subscribe this endpoint to it: SNS
would sign those messages too. So only the topics in ``topics`` (``DISPATCHER_SNS_TOPIC_ARNS``)
are accepted, and a subscription is confirmed only for them, by fetching its
``SubscribeURL``, which must be on the same origin as the (checked) certificate URL.

Every refusal raises :class:`~dispatcher.errors.UntrustedMessage` (403) and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dispatcher.errors import InvalidRequest, UntrustedMessage

__all__ = ["DEFAULT_CERT_URL_PATTERN", "SnsMessage", "SnsVerifier", "parse_sns_message"]

#: AWS's SNS endpoints (``sns.<region>.amazonaws.com``, and the China partition), https only.
DEFAULT_CERT_URL_PATTERN = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#]+\.pem"

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_MAX_CERT_BYTES = 64 * 1024
_CACHE_SIZE = 32


@dataclass(frozen=True)
class SnsMessage:
    type: str
    message_id: str
    topic_arn: str
    message: str
    fields: dict[str, str]

    @property
    def subscribe_url(self) -> str | None:
        return self.fields.get("SubscribeURL")

    @property
    def published_at(self) -> int | None:
        """When SNS published the message (µs since the epoch), from its signed ``Timestamp``;
        None when that is missing or unreadable."""
        try:
            when = datetime.fromisoformat(self.fields.get("Timestamp", "").replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            return None
        return int(when.timestamp() * 1_000_000)


def parse_sns_message(body: bytes) -> SnsMessage:
    """The SNS envelope; :class:`InvalidRequest` when it is not one."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("body", "is not JSON (an SNS message was expected)") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("body", "is not a JSON object (an SNS message was expected)")
    kind = raw.get("Type")
    if kind not in _SIGNED_FIELDS:
        raise InvalidRequest("Type", f"{kind!r} is not an SNS message type ({sorted(_SIGNED_FIELDS)})")
    fields = {k: v for k, v in raw.items() if isinstance(v, str)}
    for name in ("MessageId", "TopicArn", "Message", "Timestamp"):
        if not fields.get(name):
            raise InvalidRequest(name, "is missing from the SNS message")
    return SnsMessage(kind, fields["MessageId"], fields["TopicArn"], fields["Message"], fields)


class SnsVerifier:
    def __init__(self, http: aiohttp.ClientSession, *, cert_url_pattern: str,
                 topics: frozenset[str], timeout: float = 5.0) -> None:
        self._http = http
        self._pattern = re.compile(cert_url_pattern)
        self._topics = topics
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()

    async def verify(self, message: SnsMessage) -> None:
        """Return when SNS signed ``message`` for one of our topics; raise otherwise."""
        if not self._topics:
            raise UntrustedMessage("no SNS topic is trusted: set DISPATCHER_SNS_TOPIC_ARNS to the "
                                   "ARNs of the topics SES publishes to")
        if message.topic_arn not in self._topics:
            raise UntrustedMessage(f"topic {message.topic_arn!r} is not in DISPATCHER_SNS_TOPIC_ARNS")
        version = message.fields.get("SignatureVersion", "")
        if version not in _HASHES:
            raise UntrustedMessage(f"SignatureVersion {version!r} is not 1 or 2")
        try:
            signature = base64.b64decode(message.fields.get("Signature", ""), validate=True)
        except (binascii.Error, ValueError):
            raise UntrustedMessage("Signature is not base64") from None
        if not signature:
            raise UntrustedMessage("the message is not signed")
        key = await self._key(message.fields.get("SigningCertURL", ""))
        try:
            key.verify(signature, _canonical(message), padding.PKCS1v15(), _HASHES[version]())
        except InvalidSignature:
            raise UntrustedMessage("the signature does not match the message") from None

    async def confirm(self, message: SnsMessage) -> None:
        """Confirm a verified ``SubscriptionConfirmation`` by fetching its ``SubscribeURL``."""
        url = message.subscribe_url or ""
        if _origin(url) != _origin(message.fields.get("SigningCertURL", "")):
            raise UntrustedMessage("SubscribeURL is not on the signing certificate's SNS host")
        try:
            async with self._http.get(url, timeout=self._timeout, allow_redirects=False) as response:
                await response.content.read(_MAX_CERT_BYTES)
                if response.status != 200:
                    raise UntrustedMessage(f"SNS answered {response.status} to the SubscribeURL")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UntrustedMessage(f"could not fetch the SubscribeURL: {exc!r}") from None

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        if not url or self._pattern.fullmatch(url) is None:
            raise UntrustedMessage(f"SigningCertURL {url[:200]!r} does not match "
                                   "DISPATCHER_SNS_CERT_URL_PATTERN")
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
            return key
        key = await self._fetch(url)
        self._keys[url] = key
        while len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)
        return key

    async def _fetch(self, url: str) -> rsa.RSAPublicKey:
        try:
            async with self._http.get(url, timeout=self._timeout, allow_redirects=False) as response:
                pem = await response.content.read(_MAX_CERT_BYTES + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UntrustedMessage(f"could not fetch the signing certificate: {exc!r}") from None
        if status != 200 or len(pem) > _MAX_CERT_BYTES:
            raise UntrustedMessage(f"the signing certificate URL answered {status} "
                                   f"({len(pem)} bytes)")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise UntrustedMessage("the signing certificate is not a PEM X.509 certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise UntrustedMessage("the signing certificate's key is not RSA")
        return key


def _canonical(message: SnsMessage) -> bytes:
    """``name\\nvalue\\n`` for each signed field present, in SNS's order."""
    parts: list[str] = []
    for name in _SIGNED_FIELDS[message.type]:
        value = message.fields.get(name)
        if value is not None:
            parts += [name, value]
    return ("\n".join(parts) + "\n").encode()


def _origin(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.scheme, parts.netloc.lower()

