"""transport.pool, the providers' HTTP/1.1 client, against real local servers.

Every test runs on asyncio's own loop and on uvloop (what ``dispatcher`` runs on). The servers
are real sockets: aiohttp's server where a well-behaved HTTP server will do, a raw asyncio
server where the test needs an answer aiohttp would not send (delimited by closing, malformed,
endless), and TLS with a certificate made for the test.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from transport.pool import HttpClient, HttpTransportError, Origin, Response

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def on_both_loops(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """The test, once on each loop (a runner of its own: pytest-asyncio's loop choice moved
    between its versions)."""
    @functools.wraps(test)
    def run(loop: str, **fixtures: Any) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(test(**fixtures))

    own = inspect.signature(test)
    run.__signature__ = own.replace(parameters=[  # type: ignore[attr-defined]
        inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *own.parameters.values()])
    return pytest.mark.parametrize("loop", sorted(LOOPS))(run)


class Recorder:
    """An aiohttp server that answers every request and remembers what came, and on which
    connection (the client's port)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.peers: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.delay = 0.0
        self.chunked = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body = await request.read()
            self.requests.append((request.method, request.path_qs, dict(request.headers), body))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.peers.append(peer[1] if peer else -1)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.chunked:
                response = web.StreamResponse(headers={"X-Answer": "chunks"})
                response.enable_chunked_encoding()
                await response.prepare(request)
                for piece in (b"first ", b"second ", b"third"):
                    await response.write(piece)
                await response.write_eof()
                return response
            return web.Response(body=b"echo:" + body, headers={"X-Answer": "yes"})
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def recorder(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Recorder, str]]:
    state = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield state, f"{scheme}://{'localhost' if ssl_context else '127.0.0.1'}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def raw_server(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> AsyncIterator[str]:
    """A server that reads one request head and lets ``answer`` write whatever it likes."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def writes(raw: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An answer for :func:`raw_server`: ``raw`` as it is, then the server closes."""
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
    return answer


@on_both_loops
async def test_a_request_and_its_answer_go_through_with_the_callers_headers() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        answer = await http.origin(url).request(
            "POST", "/v2/email/outbound-emails?x=a%2Fb", {"Content-Type": "application/json",
                                                         "X-Amz-Date": "20261130T000000Z"},
            b'{"a":1}', timeout=5)

    assert answer.status == 200 and answer.body == b'echo:{"a":1}'
    assert answer.headers["x-answer"] == "yes" and answer.headers.get("X-ANSWER") == "yes"
    [(method, target, headers, body)] = server.requests
    assert (method, target, body) == ("POST", "/v2/email/outbound-emails?x=a%2Fb", b'{"a":1}')
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Amz-Date"] == "20261130T000000Z"
    assert headers["Host"] == url.removeprefix("http://")
    assert headers["Content-Length"] == "7"
    assert "Accept-Encoding" not in headers  # answers come uncompressed


@on_both_loops
async def test_the_callers_host_header_is_sent_as_given() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        await http.origin(url).request("POST", "/", {"Host": "sns.example.com"}, b"", timeout=5)

    assert server.requests[0][2]["Host"] == "sns.example.com"


@on_both_loops
async def test_one_connection_serves_requests_one_after_another() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        origin = http.origin(url)
        for n in range(5):
            await origin.request("POST", f"/{n}", {}, b"x", timeout=5)

    assert len(server.peers) == 5 and len(set(server.peers)) == 1


@on_both_loops
async def test_a_connection_idle_too_long_is_not_reused() -> None:
    async with recorder() as (server, url), HttpClient(idle_timeout=0) as http:
        origin = http.origin(url)
        for n in range(3):
            await origin.request("POST", f"/{n}", {}, b"x", timeout=5)

    assert len(set(server.peers)) == 3


@on_both_loops
async def test_no_more_connections_than_the_limit_are_open_at_once() -> None:
    async with recorder() as (server, url), HttpClient(limit=2) as http:
        server.delay = 0.05
        origin = http.origin(url)
        answers = await asyncio.gather(*(origin.request("POST", f"/{n}", {}, str(n).encode(),
                                                        timeout=10) for n in range(8)))

    assert sorted(a.body for a in answers) == sorted(f"echo:{n}".encode() for n in range(8))
    assert server.most_in_flight == 2 and len(set(server.peers)) == 2


@on_both_loops
async def test_a_chunked_answer_is_put_together() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        server.chunked = True
        origin = http.origin(url)
        first = await origin.request("POST", "/", {}, b"", timeout=5)
        second = await origin.request("POST", "/", {}, b"", timeout=5)

    assert first.body == second.body == b"first second third"
    assert first.headers["X-Answer"] == "chunks"
    assert len(set(server.peers)) == 1  # and the connection was still good for the next


@on_both_loops
async def test_an_answer_delimited_by_closing_is_read_whole() -> None:
    answer = writes(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\nback soon")
    async with raw_server(answer) as url, HttpClient() as http:
        origin = http.origin(url)
        first = await origin.request("POST", "/", {}, b"", timeout=5)
        second = await origin.request("POST", "/", {}, b"", timeout=5)  # on a new connection

    assert (first.status, first.headers["retry-after"], first.body) == (503, "7", b"back soon")
    assert second.body == b"back soon"


@on_both_loops
async def test_an_answer_over_the_bound_is_a_transport_error() -> None:
    async with recorder() as (_, url), HttpClient(max_response=1000) as http:
        origin = http.origin(url)
        fits = await origin.request("POST", "/", {}, b"x" * 900, timeout=5)
        with pytest.raises(HttpTransportError) as caught:
            await origin.request("POST", "/", {}, b"x" * 2000, timeout=5)
        after = await origin.request("POST", "/", {}, b"y", timeout=5)

    assert len(fits.body) == 905
    assert caught.value.code == "ResponseTooLarge" and "1000 bytes" in caught.value.message
    assert after.body == b"echo:y"


@on_both_loops
async def test_a_malformed_answer_is_a_transport_error() -> None:
    async with raw_server(writes(b"SMTP ready\r\n\r\n")) as url, HttpClient() as http:
        with pytest.raises(HttpTransportError) as caught:
            await http.origin(url).request("POST", "/", {}, b"", timeout=5)

    assert caught.value.code == "MalformedResponse"


@on_both_loops
async def test_a_connection_closed_before_the_answer_is_a_transport_error() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None  # read the request, then close without a word

    async with raw_server(answer) as url, HttpClient() as http:
        with pytest.raises(HttpTransportError) as caught:
            await http.origin(url).request("POST", "/", {}, b"", timeout=5)

    assert caught.value.code in ("ServerDisconnectedError", "ConnectionResetError")


@on_both_loops
async def test_no_answer_in_time_is_a_timeout_and_the_next_request_gets_a_new_connection() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        origin = http.origin(url)
        server.delay = 1.0
        with pytest.raises(HttpTransportError) as caught:
            await origin.request("POST", "/slow", {}, b"", timeout=0.1)
        server.delay = 0
        after = await origin.request("POST", "/fast", {}, b"z", timeout=5)

    assert caught.value.code == "TimeoutError" and "0.1 s" in caught.value.message
    assert after.body == b"echo:z"
    assert len(set(server.peers)) == 2  # the timed-out connection was not reused


async def held_by_a_slow_request(origin: Origin, server: Recorder,
                                  body: bytes) -> asyncio.Future[Response]:
    """A request to ``/slow`` that the server answers after a second, returned once the server
    has it (so it holds a connection and a slot)."""
    server.delay = 1.0
    slow = asyncio.ensure_future(origin.request("POST", "/slow", {}, body, timeout=5))
    while not server.requests:
        await asyncio.sleep(0.01)
    return slow


@on_both_loops
async def test_waiting_for_a_connection_counts_against_the_timeout() -> None:
    async with recorder() as (server, url), HttpClient(limit=1) as http:
        origin = http.origin(url)
        slow = await held_by_a_slow_request(origin, server, b"s")
        with pytest.raises(HttpTransportError) as caught:  # the only connection is busy
            await origin.request("POST", "/queued", {}, b"q", timeout=0.1)
        server.delay = 0
        first = await slow
        after = await origin.request("POST", "/fast", {}, b"z", timeout=5)

    assert caught.value.code == "TimeoutError" and "0.1 s" in caught.value.message
    assert [r[1] for r in server.requests] == ["/slow", "/fast"]  # the queued one never went
    assert first.body == b"echo:s" and after.body == b"echo:z"
    assert len(set(server.peers)) == 1  # the slot came back: the first connection serves on


@on_both_loops
async def test_a_cancelled_request_does_not_leave_its_connection_to_the_next() -> None:
    async with recorder() as (server, url), HttpClient(limit=1) as http:
        origin = http.origin(url)
        slow = await held_by_a_slow_request(origin, server, b"")
        slow.cancel()
        server.delay = 0
        after = await origin.request("POST", "/fast", {}, b"z", timeout=5)

    assert slow.cancelled() and after.body == b"echo:z"
    assert len(set(server.peers)) == 2


@on_both_loops
async def test_nothing_listening_is_a_transport_error(unused_tcp_port: int) -> None:
    async with HttpClient() as http:
        with pytest.raises(HttpTransportError) as caught:
            await http.origin(f"http://127.0.0.1:{unused_tcp_port}").request(
                "POST", "/", {}, b"", timeout=5)

    assert caught.value.code == "ConnectionRefusedError"


@on_both_loops
async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with recorder() as (server, url), HttpClient() as http:
        with pytest.raises(ValueError, match="line break"):
            await http.origin(url).request("POST", "/", {"X-Token": "a\r\nX-Evil: 1"}, b"",
                                           timeout=5)

    assert server.requests == []


@on_both_loops
async def test_a_closed_client_refuses_requests() -> None:
    async with recorder() as (_, url):
        http = HttpClient()
        origin = http.origin(url)
        await origin.request("POST", "/", {}, b"", timeout=5)
        await http.close()

        for attempt in (lambda: origin.request("POST", "/", {}, b"", timeout=5),
                        lambda: asyncio.sleep(0, http.origin(url))):
            with pytest.raises(HttpTransportError) as caught:
                await attempt()
            assert caught.value.code == "ClientClosedError"
    assert http.closed


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///no-host", "example.com"])
def test_an_origin_needs_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpClient().origin(url)


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@on_both_loops
async def test_https_is_verified_against_the_trusted_certificates(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with recorder(server_context) as (server, url):
        async with HttpClient(ssl_context=ssl.create_default_context(cafile=str(cert))) as trusting:
            origin = trusting.origin(url)
            answers = [await origin.request("POST", "/", {}, b"tls", timeout=5) for _ in range(2)]
        async with HttpClient() as default:  # the system's roots do not know this certificate
            with pytest.raises(HttpTransportError) as caught:
                await default.origin(url).request("POST", "/", {}, b"tls", timeout=5)

    assert [a.body for a in answers] == [b"echo:tls"] * 2 and len(set(server.peers)) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
