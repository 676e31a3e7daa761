"""SNS as a test or the bench plays it: a signing key and self-signed certificate made here, served by a
local HTTP server (which also records SubscribeURL visits), and messages signed the way SNS
signs them (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA)."""

from __future__ import annotations

import base64
import datetime
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["FakeSns", "TOPIC"]

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
_SIGNED = {"Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
           "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                        "TopicArn", "Type")}


def _key_and_cert() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


class FakeSns:
    """Serves ``/cert.pem`` (and ``/other.pem``, another key's certificate) and records GETs."""

    def __init__(self) -> None:
        self.key, self.pem = _key_and_cert()
        self.other_key, self.other_pem = _key_and_cert()
        self.visits: list[str] = []
        sns = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                sns.visits.append(self.path)
                body = {"/cert.pem": sns.pem, "/other.pem": sns.other_pem}.get(self.path.split("?")[0], b"ok")
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def pattern(self) -> str:
        return r"http://127\.0\.0\.1:\d+/cert\.pem"

    def sign(self, fields: dict[str, str], version: str = "1", key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        canonical = "".join(f"{n}\n{fields[n]}\n" for n in _SIGNED[fields["Type"]] if n in fields)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        return {**fields, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}

    def notification(self, message: dict[str, Any], *, version: str = "1", topic: str = TOPIC,
                     message_id: str | None = None, cert: str = "/cert.pem") -> bytes:
        fields = {"Type": "Notification", "MessageId": message_id or str(uuid.uuid4()),
                  "TopicArn": topic, "Message": json.dumps(message),
                  "Timestamp": _now(), "SigningCertURL": self.base + cert}
        return json.dumps(self.sign(fields, version)).encode()

    def confirmation(self, subscribe_url: str) -> bytes:
        fields = {"Type": "SubscriptionConfirmation", "MessageId": str(uuid.uuid4()), "TopicArn": TOPIC,
                  "Message": "You have chosen to subscribe…", "Token": "tok", "SubscribeURL": subscribe_url,
                  "Timestamp": _now(), "SigningCertURL": self.base + "/cert.pem"}
        return json.dumps(self.sign(fields, "2")).encode()


def ses_event(kind: str, message_id: str, address: str, *, classic: bool = False,
              bounce_type: str = "Permanent") -> dict[str, Any]:
    """An SES event of ``kind`` about ``message_id`` (event publishing, or the classic shape)."""
    mail = {"messageId": message_id, "destination": [address], "source": "noreply@example.com",
            "timestamp": "2026-11-29T11:59:00.000Z"}
    body: dict[str, Any] = {
        "Delivery": {"delivery": {"recipients": [address], "smtpResponse": "250 2.0.0 OK"}},
        "Bounce": {"bounce": {"bounceType": bounce_type, "bounceSubType": "General",
                              "bouncedRecipients": [{"emailAddress": address,
                                                     "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}},
        "Complaint": {"complaint": {"complainedRecipients": [{"emailAddress": address}],
                                    "complaintFeedbackType": "abuse"}},
        "Reject": {"reject": {"reason": "Bad content"}},
        "DeliveryDelay": {"deliveryDelay": {"delayType": "MailboxFull", "delayedRecipients": [
            {"emailAddress": address}], "expirationTime": "2026-11-30T12:00:00Z"}},
    }[kind]
    return {("notificationType" if classic else "eventType"): kind, "mail": mail, **body}


def _now() -> str:
    """An SNS ``Timestamp``: now, in UTC, to the millisecond."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
