"""A small async AWS client: botocore's configuration, SigV4 signing, a light HTTP/1.1 pool.

Why this exists: boto3 spends ~0.7 ms of client CPU per SES or SNS call (~1,150 calls/s on
one core, less in threads), which alone would eat most of a core at the 1,000 email/s +
1,000 SMS/s the dispatcher must sustain on two cores, and it blocks the asyncio worker. The
costly part is botocore's per-call machinery (parameter validation, serialisation, event
hooks, response parsing), not signing. So this module keeps botocore for what must behave
exactly like boto3 and drops the rest:

* **configuration**: :meth:`AwsClient.from_environment` builds one botocore client at start-up
  and reads its endpoint, region and signing name, plus the session's credentials, so
  ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``, regions, profiles, environment
  credentials, SSO and instance/task roles resolve exactly as they do for boto3;
* **signing**: SigV4 as botocore computes it, with the signing key derived once a day
  (:mod:`transport.sigv4`; tests check every signature against botocore's own);
* **transport**: one shared :class:`transport.pool.HttpClient` (one keep-alive pool per
  origin and process). Until 2026-11-30 this was an aiohttp session; the figures below are
  from then (docs/BENCHMARKS.md has the light client's: it spends a quarter of aiohttp's CPU).

Measured by ``python -m bench.aws_transport`` (docs/AWS.md: 2 noisy cores, a local server in
another process, median of 3 rounds), client CPU per call and calls/s on one core:

=====================  ========================  ========================
client                 SES v2 ``SendEmail``      SNS ``Publish``
=====================  ========================  ========================
boto3, 1 thread        0.71 ms (1,216/s)         0.72 ms (1,224/s)
boto3, 8 threads       0.92 ms (1,076/s)         0.93 ms (1,073/s)
this, 64 in flight     0.17 ms (6,035/s)         0.18 ms (5,574/s)
=====================  ========================  ========================

About 4 times less CPU per call; 1,000 email/s plus 1,000 SMS/s cost a third of a core here
instead of 1.4 cores. Of the ~0.17 ms, SigV4 signing is ~0.04 ms and aiohttp most of the rest.

Three wire protocols, one method each: :meth:`AwsClient.rest_json` (SES v2),
:meth:`AwsClient.query` (SNS) and :meth:`AwsClient.json_target` (SQS, JSON 1.0).

Errors (translated here, once, for every protocol)::

    AwsError                 the service answered non-2xx: status, code, message, retry_after
    │                        (``transient`` says whether botocore would call it retryable)
    └── AwsTransportError    no answer: connection refused or reset, timeout (status 0)
    AwsConfigurationError    no region or no credentials at start-up

There are no retries here: the worker's retry policy is the only one (DESIGN §4), so a
throttled call surfaces at once, with the ``Retry-After`` the service gave.
"""

from __future__ import annotations

import asyncio
import functools
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote_plus, urlsplit

import boto3.session  # type: ignore[import-untyped]
import botocore.credentials  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]

from transport.http import parse_retry_after
from transport.pool import HttpClient, HttpTransportError
from transport.sigv4 import SigV4Signer

__all__ = ["AwsClient", "AwsConfigurationError", "AwsError", "AwsTransportError"]

#: Error codes botocore's standard retry mode treats as throttling (botocore.retries.standard),
#: LimitExceededException included: SES v2 uses it for "sending quota exceeded".
THROTTLING_CODES: Final = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})
#: Codes worth a later retry whatever the HTTP status: botocore's transient codes, server-side
#: failures some services send with a 4xx, and the expired-credential and clock-skew codes
#: botocore recovers from by refreshing credentials or correcting its clock.
TRANSIENT_CODES: Final = frozenset({
    "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "ServiceUnavailable", "ExpiredToken", "ExpiredTokenException", "RequestExpired",
    "RequestTimeTooSkewed", "RequestInTheFuture",
})

_JSON: Final = "application/json"
_FORM: Final = "application/x-www-form-urlencoded; charset=utf-8"
_JSON_10: Final = "application/x-amz-json-1.0"


class AwsError(Exception):
    """An AWS service answered with an error (or, for the subclass, did not answer)."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code} (HTTP {status}): {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        return self.status == 429 or self.code in THROTTLING_CODES

    @property
    def transient(self) -> bool:
        """Worth retrying later: throttling, a 5xx, a transient code, or no answer at all."""
        return (self.status == 0 or self.status >= 500 or self.throttled
                or self.code in TRANSIENT_CODES)


class AwsTransportError(AwsError):
    """No usable answer: connection error or timeout. The request may still have been
    processed (a timeout after the body was sent), as with any HTTP client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(0, code, message)


class AwsConfigurationError(Exception):
    """The environment does not say where or as whom to call AWS."""


class AwsClient:
    """Signed calls to one AWS service over a shared HTTP client.

    Cheap to create; holds no connection of its own (the client's owner closes the client).
    """

    def __init__(self, http: HttpClient, *, service: str, endpoint_url: str,
                 region: str, credentials: botocore.credentials.Credentials,
                 signing_name: str | None = None, timeout: float = 10.0) -> None:
        self.service = service
        self.endpoint_url = endpoint_url.rstrip("/")
        self.region = region
        self.signing_name = signing_name or service
        self._origin = http.origin(self.endpoint_url)
        self._credentials = credentials
        self._timeout = timeout
        self._path_prefix = urlsplit(self.endpoint_url).path
        self._signer = SigV4Signer(self.signing_name, region)
        self._refreshing: asyncio.Future[Any] | None = None

    @classmethod
    def from_environment(cls, http: HttpClient, service: str, *,
                         timeout: float = 10.0) -> AwsClient:
        """Resolve endpoint, region, signing name and credentials as boto3 would.

        ``service`` is the boto3 client name (``"sesv2"``, ``"sns"``, ``"sqs"``). Creating the
        botocore client once runs botocore's own endpoint rules and configuration chain; it is
        then discarded (no botocore code runs per call)."""
        try:
            boto_session = boto3.session.Session()
            client = boto_session.client(service)
            credentials = boto_session.get_credentials()
        except botocore.exceptions.NoRegionError as exc:
            raise AwsConfigurationError(
                f"no AWS region for {service}: set AWS_DEFAULT_REGION or a region in the AWS "
                "profile (boto3 does not read AWS_REGION)") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise AwsConfigurationError(f"AWS configuration for {service}: {exc}") from exc
        meta = client.meta
        client.close()  # its (unused) urllib3 pool
        if credentials is None:
            raise AwsConfigurationError(
                f"no AWS credentials for {service}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or task role")
        return cls(http, service=service, endpoint_url=meta.endpoint_url,
                   region=meta.region_name, credentials=credentials,
                   signing_name=meta.service_model.signing_name, timeout=timeout)

    async def rest_json(self, method: str, path: str,
                        payload: Mapping[str, Any] | bytes | None) -> dict[str, Any]:
        """REST+JSON (SES v2). ``path`` comes percent-encoded: ``/v2/email/outbound-emails``.
        ``payload`` is the JSON document, or its UTF-8 bytes when the caller encoded it."""
        body = b"" if payload is None else payload if isinstance(payload, bytes) else _dump(payload)
        headers = {} if payload is None else {"Content-Type": _JSON}
        status, response_headers, data = await self._call(method, path, body, headers)
        if status >= 300:
            raise _json_error(status, response_headers, data)
        return _load_object(status, data) if data else {}

    async def query(self, action: str, params: Mapping[str, str], *, version: str) -> ET.Element:
        """The query protocol (SNS): a form POST answered in XML.

        Returns the ``<{action}Result>`` element with XML namespaces stripped, so callers write
        ``result.findtext("MessageId")``; an empty element for actions without a result."""
        body = _form({"Action": action, "Version": version, **params})
        status, headers, data = await self._call("POST", "/", body, {"Content-Type": _FORM})
        if status >= 300:
            raise _query_error(status, headers, data)
        result = _parse_xml(status, data).find(f"{action}Result")
        # (not ``or``: an Element without children is falsy)
        return ET.Element(f"{action}Result") if result is None else result

    async def json_target(self, target: str, payload: dict[str, Any]) -> dict[str, Any]:
        """JSON 1.0 with ``X-Amz-Target`` (SQS: ``"AmazonSQS.SendMessageBatch"``)."""
        headers = {"Content-Type": _JSON_10, "X-Amz-Target": target}
        status, response_headers, data = await self._call("POST", "/", _dump(payload), headers)
        if status >= 300:
            raise _json_error(status, response_headers, data)
        return _load_object(status, data) if data else {}

    async def _call(self, method: str, path: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        # Sent explicitly so that the Host on the wire is the one that was signed.
        headers["Host"] = self._origin.host_header
        target = self._path_prefix + path  # sent as signed, percent-encoded already
        signed = self._signer.sign(method, target, headers, body, await self._frozen_credentials())
        try:
            response = await self._origin.request(method, target, signed, body,
                                                  timeout=self._timeout)
        except HttpTransportError as exc:
            raise AwsTransportError(exc.code, exc.message) from exc
        return response.status, response.headers, response.body

    async def _frozen_credentials(self) -> Any:
        """Per request, so refreshable credentials (roles, SSO) stay fresh.

        A refresh may do blocking I/O (instance metadata, STS, a credential process), so it
        runs in a thread, once for all the requests waiting on it; the common case (nothing
        to refresh) stays a cheap synchronous call."""
        refresh_needed = getattr(self._credentials, "refresh_needed", None)
        if refresh_needed is None or not refresh_needed():
            return self._credentials.get_frozen_credentials()
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(
                asyncio.to_thread(self._credentials.get_frozen_credentials))
        try:
            # shield: one cancelled request must not cancel the refresh the others await.
            return await asyncio.shield(self._refreshing)
        except Exception as exc:  # whatever the provider raised (IMDS down, STS refused, …)
            raise AwsTransportError("CredentialRefreshError", str(exc) or repr(exc)) from exc


def _dump(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _form(fields: Mapping[str, str]) -> bytes:
    """``urlencode(fields).encode()``, with each name and value quoted once per process: a
    bulk's SMS repeat the same text and attribute names, and ``quote_plus`` is a Python loop
    over the bytes (3 % of the worker's CPU on a mixed bulk before: docs/BENCHMARKS.md)."""
    return "&".join([f"{_quoted(k)}={_quoted(v)}" for k, v in fields.items()]).encode()


@functools.lru_cache(maxsize=1024)
def _quoted(text: str) -> str:
    return quote_plus(text, safe="")


def _load_object(status: int, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise AwsError(status, "MalformedResponse", f"not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise AwsError(status, "MalformedResponse", f"not a JSON object: {data[:200]!r}")
    return value


def _parse_xml(status: int, data: bytes) -> ET.Element:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AwsError(status, "MalformedResponse", f"not XML: {data[:200]!r}") from exc
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.partition("}")[2]
    return root


def _json_error(status: int, headers: Mapping[str, str], data: bytes) -> AwsError:
    """REST-JSON and JSON 1.0 errors: code from ``x-amzn-ErrorType`` or the body's ``__type``
    / ``code``; either may carry a namespace (``com.amazonaws.sqs#QueueDoesNotExist``) or a
    suffix (``MessageRejected:http://internal.amazon.com/...``)."""
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = (headers.get("x-amzn-ErrorType") or body.get("__type") or body.get("code")
            or body.get("Code") or "Unknown")
    code = str(code).split(":", 1)[0].rsplit("#", 1)[-1]
    message = body.get("message") or body.get("Message") or _snippet(data)
    return AwsError(status, code, str(message), retry_after=_retry_after(headers))


def _query_error(status: int, headers: Mapping[str, str], data: bytes) -> AwsError:
    """``<ErrorResponse><Error><Code>…</Code><Message>…</Message></Error></ErrorResponse>``."""
    try:
        root = _parse_xml(status, data)
    except AwsError:
        return AwsError(status, "Unknown", _snippet(data), retry_after=_retry_after(headers))
    code = root.findtext(".//Error/Code") or "Unknown"
    message = root.findtext(".//Error/Message") or _snippet(data)
    return AwsError(status, code, message, retry_after=_retry_after(headers))


def _snippet(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace") or "(empty body)"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("Retry-After"))
