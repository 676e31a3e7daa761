"""SigV4 signatures equal botocore's for the same request, time and credentials, including
session tokens, odd header whitespace, escaped paths, and a cached key across requests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from transport.sigv4 import SigV4Signer

MOMENT = datetime(2026, 11, 29, 13, 5, 7, tzinfo=UTC)


def _botocore(method: str, url: str, headers: dict[str, str], body: bytes,
              credentials: ReadOnlyCredentials, service: str, region: str) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    auth = SigV4Auth(credentials, service, region)
    request.context["timestamp"] = MOMENT.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    auth._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


@pytest.mark.parametrize(("path", "headers", "body", "token"), [
    ("/v2/email/outbound-emails", {"Content-Type": "application/json"}, b'{"a": 1}', None),
    ("/", {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
     b"Action=Publish&Message=hi%20there", "session-token"),
    ("/", {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessage",
           "User-Agent": "not signed"}, b"{}", None),
    ("/v2/email/identities/a%40example.com", {"X-Odd": "  two   spaces  "}, b"", "t"),
])
def test_the_signature_is_botocores(path: str, headers: dict[str, str], body: bytes,
                                    token: str | None) -> None:
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    headers = {"Host": "email.us-east-1.amazonaws.com", **headers}
    signer = SigV4Signer("ses", "us-east-1")
    for _ in range(2):  # the second time from the cached signing key
        ours = signer.sign("POST", path, headers, body, credentials, now=MOMENT)
        theirs = _botocore("POST", f"https://email.us-east-1.amazonaws.com{path}", headers, body,
                           credentials, "ses", "us-east-1")
        assert ours["Authorization"] == theirs["Authorization"]
        assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
        assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token")


def test_another_day_or_secret_gets_its_own_key() -> None:
    signer = SigV4Signer("sns", "eu-west-1")
    headers = {"Host": "sns.eu-west-1.amazonaws.com"}
    a = ReadOnlyCredentials("AK", "secret-one", None)
    b = ReadOnlyCredentials("AK", "secret-two", None)
    first = signer.sign("POST", "/", headers, b"x", a, now=MOMENT)["Authorization"]
    assert signer.sign("POST", "/", headers, b"x", b, now=MOMENT)["Authorization"] != first
    next_day = MOMENT.replace(day=30)
    assert "20261130/eu-west-1/sns/aws4_request" in signer.sign(
        "POST", "/", headers, b"x", a, now=next_day)["Authorization"]
    assert signer.sign("POST", "/", headers, b"x", a, now=MOMENT)["Authorization"] == first
