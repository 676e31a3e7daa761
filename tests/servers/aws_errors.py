"""A local server speaking the AWS wire protocols, for what moto_server cannot do.

moto never throttles, never fails with a 5xx, never sends ``Retry-After`` and does not record
SES headers, configuration sets or SNS message attributes. This is a real HTTP server: the
client under test talks to it over TCP exactly as it would to AWS. It records every request
as it arrived (raw path, headers, body bytes), answers with scripted replies in the real
error shapes (REST-JSON, query XML, JSON 1.0), and otherwise with the success answer of the
protocol. :func:`signature_matches` recomputes a request's SigV4 signature from those bytes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from support import free_port

__all__ = ["AwsProtocolServer", "MotoDump", "Recorded", "Reply", "json10_error", "query_error",
           "rest_json_error", "signature_matches", "unused_port_url"]

SNS_NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"


class MotoDump(Protocol):
    """The ``moto_data`` fixture (tests import helpers from here, never from conftest)."""

    def dump(self) -> dict[str, object]: ...


def unused_port_url() -> str:
    """A local URL nothing listens on: connecting to it is refused."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    raw_path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


def _request_id() -> dict[str, str]:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def _retry_after(value: str | None) -> dict[str, str]:
    return {"Retry-After": value} if value is not None else {}


def rest_json_error(code: str, message: str, status: int = 400, *,
                    retry_after: str | None = None) -> Reply:
    """An SES v2 (REST-JSON) error: the code in ``x-amzn-ErrorType``, the message in the body."""
    headers = {"Content-Type": "application/json",
               "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/",
               **_request_id(), **_retry_after(retry_after)}
    return Reply(status, json.dumps({"message": message}).encode(), headers)


def query_error(code: str, message: str, status: int = 400, *, kind: str = "Sender",
                retry_after: str | None = None) -> Reply:
    """An SNS (query protocol) error document."""
    body = (f'<ErrorResponse xmlns="{SNS_NAMESPACE}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
            "</ErrorResponse>")
    return Reply(status, body.encode(), {"Content-Type": "text/xml", **_request_id(),
                                         **_retry_after(retry_after)})


def json10_error(code: str, message: str, status: int = 400, *,
                 namespace: str = "com.amazonaws.sqs") -> Reply:
    """An SQS (JSON 1.0) error: ``__type`` with the Smithy namespace."""
    body = json.dumps({"__type": f"{namespace}#{code}", "message": message}).encode()
    return Reply(status, body, {"Content-Type": "application/x-amz-json-1.0", **_request_id()})


def _success(recorded: Recorded) -> Reply:
    if recorded.raw_path.startswith("/v2/"):  # SES v2, REST-JSON
        return Reply(200, json.dumps({"MessageId": f"ses-{uuid.uuid4()}"}).encode(),
                     {"Content-Type": "application/json", **_request_id()})
    if "x-amz-target" in recorded.headers:
        return Reply(200, b"{}", {"Content-Type": "application/x-amz-json-1.0"})
    action = recorded.form().get("Action", "Unknown")
    body = (f'<{action}Response xmlns="{SNS_NAMESPACE}"><{action}Result>'
            f"<MessageId>sns-{uuid.uuid4()}</MessageId></{action}Result><ResponseMetadata>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>")
    return Reply(200, body.encode(), {"Content-Type": "text/xml"})


class AwsProtocolServer:
    """``async with AwsProtocolServer() as server: AwsClient(..., endpoint_url=server.url)``."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.requests: list[Recorded] = []
        self.delay = delay
        self._replies: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order; then with the success answer."""
        self._replies.extend(replies)

    async def __aenter__(self) -> AwsProtocolServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        recorded = Recorded(request.method, request.raw_path, headers, await request.read())
        self.requests.append(recorded)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self._replies.popleft() if self._replies else _success(recorded)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def _authorization(recorded: Recorded) -> dict[str, str]:
    scheme, _, rest = recorded.headers["authorization"].partition(" ")
    assert scheme == "AWS4-HMAC-SHA256", scheme
    return dict(part.strip().split("=", 1) for part in rest.split(","))


def signature_matches(recorded: Recorded, secret_key: str) -> bool:
    """Recompute the SigV4 signature from the request as received (raw path, the headers it
    names as signed, the body bytes) and compare it with the one it carries."""
    auth = _authorization(recorded)
    access_key, date, region, service, _ = auth["Credential"].split("/")
    signed = {name: recorded.headers[name] for name in auth["SignedHeaders"].split(";")}
    url = f"http://{recorded.headers['host']}{recorded.raw_path}"
    request = AWSRequest(method=recorded.method, url=url, data=recorded.body, headers=signed)
    request.context["timestamp"] = recorded.headers["x-amz-date"]
    assert request.context["timestamp"].startswith(date)
    credentials = ReadOnlyCredentials(access_key, secret_key,
                                      recorded.headers.get("x-amz-security-token"))
    signer = SigV4Auth(credentials, service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return bool(expected == auth["Signature"])
