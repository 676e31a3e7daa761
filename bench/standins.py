"""Provider stand-ins for the benchmark: SES (v2 and v1), SNS and FCM on one fast local server.

``python -m bench.standins --port N [--record]`` serves, in the foreground, the real wire
protocols that our providers, boto3, google-auth and Apprise speak, and answers every valid
request with the provider's success response:

========================================================  ==========================  =======
request                                                   success answer              counter
========================================================  ==========================  =======
``POST /v2/email/outbound-emails`` (SES v2, REST-JSON)    ``{"MessageId": …}``        email
``POST /`` ``Action=SendEmail|SendRawEmail`` (SES v1)     ``<SendEmailResponse>`` …   email
``POST /`` ``Action=Publish`` with ``PhoneNumber`` (SNS)  ``<PublishResponse>``       sms
``POST /token`` (OAuth2 JWT-bearer grant)                 ``{"access_token", …}``     token
``POST /v1/projects/{p}/messages:send`` (FCM HTTP v1)     ``{"name": …}``             push
anything else (unknown path or action, topic Publish)     404, 400 or success         other
========================================================  ==========================  =======

It checks what a client could get wrong at no real cost (an AWS ``Authorization`` header is
present, the action's required fields, the FCM bearer token is one it issued, the token form's
``grant_type`` and a three-part ``assertion``) but verifies no signature: the stand-in must
stay far faster than any client it measures. The harness runs it as a subprocess
(:class:`StandIns`), so its CPU is not the client's and can be read from its ``pid``.

Counters: ``GET /_stats`` → ``{"email", "sms", "push", "token", "other"}`` (requests);
``POST /_reset`` zeroes them. With ``--record`` it also counts deliveries per recipient
(``GET /_recipients`` → ``{"email": {address: n}, "sms": {phone: n}, "push": {token: n}}``),
so a harness can prove that each delivery arrived exactly once; without it, only counters.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web

__all__ = ["StandIns", "StandInServer", "main"]

ROOT: Final = Path(__file__).resolve().parents[1]
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SES_XMLNS: Final = "http://ses.amazonaws.com/doc/2010-12-01/"
SNS_XMLNS: Final = "http://sns.amazonaws.com/doc/2010-03-31/"
CHANNELS: Final = ("email", "sms", "push")
COUNTERS: Final = (*CHANNELS, "token", "other")
SNS_TARGETS: Final = ("PhoneNumber", "TopicArn", "TargetArn")
#: Fields each query-protocol action needs; a request without one gets a 400.
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "SendEmail": ("Source", "Destination.ToAddresses.member.1", "Message.Subject.Data"),
    "SendRawEmail": ("RawMessage.Data",),
    "Publish": ("Message",),
}


class StandInServer:
    """The handlers and their counters (one event loop, so no locks)."""

    def __init__(self, *, record: bool) -> None:
        self.record = record
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.recipients: dict[str, Counter[str]] = {channel: Counter() for channel in CHANNELS}
        self._tokens: set[str] = set()
        self._token_prefix = f"ya29.standin-{secrets.token_hex(4)}-"
        self._ids = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_recipients", self.recorded)
        app.router.add_post("/_reset", self.reset)
        app.router.add_post("/v2/email/outbound-emails", self.ses_v2)
        app.router.add_post("/", self.query)
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.fcm_send)
        app.router.add_route("*", "/{tail:.*}", self.unknown)
        return app

    def _next_id(self) -> str:
        self._ids += 1
        return f"00000000-0000-4000-8000-{self._ids:012x}"

    def _count(self, channel: str, recipients: list[str]) -> None:
        self.counts[channel] += 1
        if self.record:
            self.recipients[channel].update(recipients)

    # -- counters ------------------------------------------------------------------------------

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))

    async def recorded(self, _: web.Request) -> web.Response:
        if not self.record:
            return web.json_response({"error": "started without --record"}, status=409)
        return web.json_response({channel: dict(c) for channel, c in self.recipients.items()})

    async def reset(self, _: web.Request) -> web.Response:
        self.counts = Counter({name: 0 for name in COUNTERS})
        self.recipients = {channel: Counter() for channel in CHANNELS}
        return web.json_response(dict(self.counts))

    async def unknown(self, request: web.Request) -> web.Response:
        await request.read()
        self.counts["other"] += 1
        return web.json_response({"message": f"no stand-in for {request.method} {request.path}"},
                                 status=404)

    # -- SES v2 (REST-JSON) ----------------------------------------------------------------

    async def ses_v2(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not request.headers.get("Authorization"):
            return _rest_error(403, "MissingAuthenticationTokenException",
                               "Missing Authentication Token")
        try:
            addresses = _ses_v2_destinations(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError):
            addresses = []
        if not addresses:
            return _rest_error(400, "BadRequestException", "FromEmailAddress, Content and at "
                               "least one Destination address are required")
        self._count("email", addresses)
        return web.json_response({"MessageId": self._next_id()})

    # -- SES v1 and SNS (query protocol: a form posted to /) -----------------------------------

    async def query(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        action = form.get("Action", "")
        if not request.headers.get("Authorization"):
            return _query_error(403, "MissingAuthenticationToken", "Request is missing "
                                "Authentication Token")
        if action not in REQUIRED:
            self.counts["other"] += 1
            return _query_error(400, "InvalidAction", f"Could not find operation {action!r}")
        missing = [name for name in REQUIRED[action] if not form.get(name)]
        if action == "Publish" and not any(form.get(k) for k in SNS_TARGETS):
            missing.append("|".join(SNS_TARGETS))
        if missing:
            return _query_error(400, "InvalidParameterValue", f"missing {', '.join(missing)}")
        if action == "Publish":
            return self._publish(form)
        return self._ses_v1(action, form)

    def _ses_v1(self, action: str, form: dict[str, str]) -> web.Response:
        self._count("email", _ses_v1_destinations(action, form) if self.record else [])
        return _xml(f'<{action}Response xmlns="{SES_XMLNS}"><{action}Result><MessageId>'
                    f"{self._next_id()}</MessageId></{action}Result><ResponseMetadata><RequestId>"
                    f"{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>")

    def _publish(self, form: dict[str, str]) -> web.Response:
        phone = form.get("PhoneNumber")
        if phone:
            self._count("sms", [phone])
        else:  # a topic or an endpoint: not an SMS to one recipient
            self.counts["other"] += 1
        return _xml(f'<PublishResponse xmlns="{SNS_XMLNS}"><PublishResult><MessageId>'
                    f"{self._next_id()}</MessageId></PublishResult><ResponseMetadata><RequestId>"
                    f"{uuid.uuid4()}</RequestId></ResponseMetadata></PublishResponse>")

    # -- OAuth2 token and FCM HTTP v1 ----------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode()))
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        if form.get("assertion", "").count(".") != 2:
            return _oauth_error("invalid_grant", "Invalid JWT: not a signed JWT.")
        self.counts["token"] += 1
        access_token = f"{self._token_prefix}{self.counts['token']}"
        self._tokens.add(access_token)
        return web.json_response({"access_token": access_token, "expires_in": 3600,
                                  "token_type": "Bearer"})

    async def fcm_send(self, request: web.Request) -> web.Response:
        body = await request.read()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self._tokens:
            return _rpc_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                              "credentials. Expected OAuth 2 access token.")
        try:
            message = json.loads(body)["message"]
            target = message.get("token") or message.get("topic") or message.get("condition")
        except (ValueError, KeyError, TypeError, AttributeError):
            return _rpc_error(400, "INVALID_ARGUMENT", "Invalid value at 'message'")
        if not isinstance(target, str) or not target:
            return _rpc_error(400, "INVALID_ARGUMENT", "Recipient of the message is not set.")
        self._count("push", [target])
        project = request.match_info["project"]
        name = f"projects/{project}/messages/0:{self.counts['push']}%standin"
        return web.json_response({"name": name})


def _ses_v2_destinations(payload: dict[str, Any]) -> list[str]:
    if not payload["FromEmailAddress"] or not payload["Content"]:
        return []
    destination = payload["Destination"]
    return [address for kind in ("ToAddresses", "CcAddresses", "BccAddresses")
            for address in destination.get(kind, ())]


def _ses_v1_destinations(action: str, form: dict[str, str]) -> list[str]:
    prefixes = (("Destinations.member.",) if action == "SendRawEmail" else
                tuple(f"Destination.{k}Addresses.member." for k in ("To", "Cc", "Bcc")))
    listed = [value for key, value in form.items() if key.startswith(prefixes)]
    if listed or action != "SendRawEmail":
        return listed
    # SendRawEmail without Destinations: SES takes them from the message's own headers.
    headers = BytesHeaderParser().parsebytes(base64.b64decode(form["RawMessage.Data"]))
    fields = [v for name in ("To", "Cc", "Bcc") for v in headers.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/xml")


def _query_error(status: int, code: str, message: str) -> web.Response:
    kind = "Sender" if status < 500 else "Receiver"
    return web.Response(status=status, content_type="text/xml", text=(
        f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}"
        f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"))


def _rest_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status,
                             headers={"x-amzn-ErrorType": code})


def _rpc_error(status: int, rpc_status: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": rpc_status}},
                             status=status)


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


# -- running it ---------------------------------------------------------------------------------

async def serve_app(app: web.Application, host: str, port: int, name: str) -> None:
    """Serve ``app`` until cancelled; prints ``<name> listening on <url>`` once it accepts.

    That line is the only one a stand-in writes to stdout: its harness reads the port from it.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=4096).start()
        bound = runner.addresses[0][1]
        print(f"{name} listening on http://{host}:{bound}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_main(argv: list[str] | None, *, prog: str, description: str | None, name: str,
             make_app: Callable[[argparse.Namespace], web.Application],
             arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """A stand-in's command line: ``--host``, ``--port`` (0: any free port), its own arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_app(make_app(args), args.host, args.port, name))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--record", action="store_true", help="count deliveries per recipient")

    return run_main(argv, prog="python -m bench.standins", description=__doc__, name="standins",
                    make_app=lambda args: StandInServer(record=args.record).app(),
                    arguments=arguments)


# -- the harness's handle on it -----------------------------------------------------------------

class StandIns:
    """The stand-in server as a subprocess: ``with StandIns(record=True) as s: … s.url …``."""

    def __init__(self, *, record: bool = False, port: int = 0) -> None:
        self.record = record
        self.url = ""
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id, for measuring its CPU and RSS with psutil."""
        if self._process is None:
            raise RuntimeError("StandIns is not started")
        return self._process.pid

    def start(self, timeout: float = 30.0) -> StandIns:
        command = [sys.executable, "-m", "bench.standins", "--port", str(self._port)]
        # stdout is a pipe only for the one line that names the port; stderr is inherited.
        self._process = subprocess.Popen(command + ["--record"] * self.record, cwd=ROOT,
                                         stdout=subprocess.PIPE)
        try:
            self.url = _read_url(self._process, timeout)
            _wait_until_answering(f"{self.url}/_stats", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None

    def __enter__(self) -> StandIns:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._call("GET", "/_stats").items()}

    def recipients(self) -> dict[str, dict[str, int]]:
        return {channel: {k: int(v) for k, v in counts.items()}
                for channel, counts in self._call("GET", "/_recipients").items()}

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def write_service_account(self, path: Path, project_id: str = "bench") -> Path:
        """A service-account JSON with a fresh RSA key whose ``token_uri`` is this server."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        path.write_text(json.dumps({
            "type": "service_account", "project_id": project_id,
            "private_key_id": uuid.uuid4().hex, "private_key": pem,
            "client_email": f"bench-sender@{project_id}.iam.gserviceaccount.com",
            "client_id": str(uuid.uuid4().int)[:21], "token_uri": f"{self.url}/token",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "universe_domain": "googleapis.com"}))
        return path

    def _call(self, method: str, path: str) -> dict[str, Any]:
        if not self.url:
            raise RuntimeError("StandIns is not started")
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


def _read_url(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("standins listening on "):
        raise RuntimeError(f"the stand-ins did not start (exit code {process.poll()}): {line!r}")
    return line.split()[-1]


def _wait_until_answering(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


if __name__ == "__main__":
    raise SystemExit(main())
