"""The FCM push adapter against a local FCM-compatible server (real HTTP v1, real OAuth2).

The service-account key is generated per test; google-auth signs its JWT assertion with it and
the server verifies it, so the whole token flow is real. Errors come either from the server's
own checks (auth, project, payload, unregistered tokens) or from its per-token script.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from google.oauth2 import service_account as google_service_account

from bench.fcm_server import FcmServer, Scripted, fcm_error, rpc_error
from channels.base import Message, PermanentError, TransientError, UnregisteredDevice
from channels.fcm import FCM_SCOPE, AccessTokenSource, FcmProvider, build_request
from transport.http import parse_retry_after
from transport.pool import HttpClient

PROJECT = "test-project"


def push(to: str = "device-1", **data: str) -> Message:
    return Message("push", to, {"title": "Installing", "body": "Your app is installing"},
                   "app#3f1c2b7e-0000-4000-8000-000000000001", "u1", "app-install", data)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FcmServer]:
    with FcmServer() as s:
        yield s


@pytest.fixture
def service_account(server: FcmServer, tmp_path: Path) -> Path:
    return server.write_service_account(tmp_path / "service-account.json", PROJECT)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tokens(service_account: Path, clock: FakeClock) -> Iterator[AccessTokenSource]:
    credentials = google_service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(service_account), scopes=[FCM_SCOPE])
    source = AccessTokenSource(credentials, clock=clock)
    yield source
    source.close()


@pytest.fixture
async def session() -> AsyncIterator[HttpClient]:
    async with HttpClient() as s:
        yield s


@pytest.fixture
def provider(session: HttpClient, tokens: AccessTokenSource,
             server: FcmServer) -> FcmProvider:
    return FcmProvider(session, tokens, project_id=PROJECT, endpoint=server.url, timeout=5.0)


# -- delivery -------------------------------------------------------------------------------

async def test_push_arrives_with_title_body_data_and_platform_blocks(
        provider: FcmProvider, server: FcmServer) -> None:
    receipt = await provider.send(push("device-1", state="installing", app_name="Maps"))

    assert receipt.provider_message_id.startswith(f"projects/{PROJECT}/messages/")
    [sent] = server.received
    nid = "app#3f1c2b7e-0000-4000-8000-000000000001"
    assert sent["token"] == "device-1"
    assert sent["notification"] == {"title": "Installing", "body": "Your app is installing"}
    assert sent["data"] == {"state": "installing", "app_name": "Maps"}
    assert sent["android"] == {"priority": "high",
                               "notification": {"channel_id": "app-install", "tag": nid}}
    assert sent["apns"]["headers"] == {"apns-priority": "10", "apns-collapse-id": nid}
    assert sent["apns"]["payload"] == {"aps": {"thread-id": "app-install"}}
    assert sent["webpush"]["notification"] == {"tag": nid}


async def test_each_device_of_a_bulk_gets_its_own_message(
        provider: FcmProvider, server: FcmServer) -> None:
    update = replace(push("device-3"), parts={"title": "Installed ✓", "body": "\"Foo\" is ready"})
    messages = [push("device-1", state="installing"), push("device-2", state="installing"),
                push("device-1", state="completed"), update, push("device-4"),
                replace(push("device-5"), notification_id="app#other", category="news")]

    for message in messages:
        await provider.send(message)

    assert server.received == [build_request(m)["message"] for m in messages]
    assert [provider.body(m) for m in messages] == [
        json.dumps(build_request(m), separators=(",", ":")).encode() for m in messages]


async def test_long_notification_id_gets_an_apns_collapse_id_within_64_bytes(
        provider: FcmProvider, server: FcmServer) -> None:
    long_id = replace(push(), notification_id=f"{'s' * 40}#{'0' * 36}")

    await provider.send(long_id)

    assert len(server.received[0]["apns"]["headers"]["apns-collapse-id"]) == 64


async def test_from_service_account_uses_the_files_project_and_closes_its_own_pool(
        server: FcmServer, service_account: Path) -> None:
    provider = await FcmProvider.from_service_account(
        service_account, project_id=None, endpoint=server.url, timeout=5.0, pool_size=8)

    receipt = await provider.send(push())
    await provider.aclose()

    assert receipt.provider_message_id.startswith(f"projects/{PROJECT}/")
    assert provider._http.closed


async def test_aclose_leaves_an_injected_session_open(
        provider: FcmProvider, session: HttpClient) -> None:
    await provider.aclose()

    assert not session.closed


# -- the access token -----------------------------------------------------------------------

async def test_access_token_is_fetched_once_for_many_concurrent_sends(
        provider: FcmProvider, tokens: AccessTokenSource, server: FcmServer) -> None:
    await asyncio.gather(*(provider.send(push(f"device-{i}")) for i in range(50)))
    await provider.send(push("one-more"))

    assert len(server.received) == 51
    assert server.token_requests == 1
    assert tokens.refreshes == 1


async def test_access_token_is_refreshed_five_minutes_before_it_expires(
        provider: FcmProvider, tokens: AccessTokenSource, server: FcmServer,
        clock: FakeClock) -> None:
    await provider.send(push())  # expires_in 3600
    clock.now += 3600 - 300 - 1
    await provider.send(push())
    assert server.token_requests == 1

    clock.now += 2
    await provider.send(push())

    assert server.token_requests == 2
    assert tokens.refreshes == 2


async def test_concurrent_sends_near_expiry_share_one_refresh(
        provider: FcmProvider, tokens: AccessTokenSource, server: FcmServer,
        clock: FakeClock) -> None:
    server.expires_in = 60  # shorter than the 5-minute margin: reused for half its life
    await provider.send(push())
    clock.now += 29
    await provider.send(push())
    assert server.token_requests == 1

    clock.now += 2
    await asyncio.gather(*(provider.send(push(f"device-{i}")) for i in range(50)))

    assert server.token_requests == 2
    assert tokens.refreshes == 2
    assert len(server.received) == 52


async def test_401_invalidates_the_token_and_the_next_send_reauthenticates(
        provider: FcmProvider, server: FcmServer) -> None:
    await provider.send(push())
    server.revoke_tokens()

    with pytest.raises(TransientError, match="401 UNAUTHENTICATED"):
        await provider.send(push())
    await provider.send(push())

    assert server.token_requests == 2
    assert len(server.received) == 2


async def test_401s_of_requests_in_flight_cost_one_reauthentication(
        provider: FcmProvider, server: FcmServer) -> None:
    await provider.send(push())
    server.revoke_tokens()

    results = await asyncio.gather(*(provider.send(push()) for _ in range(20)),
                                   return_exceptions=True)
    await asyncio.gather(*(provider.send(push()) for _ in range(20)))

    assert all(isinstance(r, TransientError) for r in results)
    assert server.token_requests == 2


async def test_key_refused_by_the_token_endpoint_is_permanent(
        server: FcmServer, service_account: Path, session: HttpClient) -> None:
    forged = service_account.read_text().replace('"private_key_id": "', '"private_key_id": "x')
    service_account.write_text(forged)
    tokens = AccessTokenSource.from_file(service_account)
    provider = FcmProvider(session, tokens, project_id=PROJECT, endpoint=server.url)

    with pytest.raises(PermanentError, match="invalid_grant"):
        await provider.send(push())
    tokens.close()


# -- errors ---------------------------------------------------------------------------------

async def test_unregistered_token_raises_unregistered_device(
        provider: FcmProvider, server: FcmServer) -> None:
    server.unregister("gone")

    with pytest.raises(UnregisteredDevice, match="UNREGISTERED") as caught:
        await provider.send(push("gone"))

    assert caught.value.reason == "unregistered_device"
    assert server.received == []


async def test_malformed_registration_token_raises_unregistered_device(
        provider: FcmProvider) -> None:
    with pytest.raises(UnregisteredDevice, match="not a valid FCM registration token"):
        await provider.send(push("not a token"))


async def test_invalid_payload_is_permanent_but_not_unregistered_device(
        provider: FcmProvider) -> None:
    with pytest.raises(PermanentError, match="INVALID_ARGUMENT") as caught:
        await provider.send(push(**{"from": "reserved key"}))

    assert not isinstance(caught.value, UnregisteredDevice)
    assert caught.value.reason == "provider_rejected"


async def test_quota_exceeded_is_transient_with_retry_after_and_then_succeeds(
        provider: FcmProvider, server: FcmServer) -> None:
    server.script("device-1", [fcm_error("QUOTA_EXCEEDED", headers={"Retry-After": "7"})])

    with pytest.raises(TransientError) as caught:
        await provider.send(push("device-1"))
    await provider.send(push("device-1"))  # the script does not repeat

    assert caught.value.retry_after == 7.0
    assert len(server.received) == 1


async def test_unavailable_503_is_transient(provider: FcmProvider, server: FcmServer) -> None:
    server.script("device-1", [fcm_error("UNAVAILABLE")])

    with pytest.raises(TransientError, match="503 UNAVAILABLE") as caught:
        await provider.send(push("device-1"))

    assert caught.value.retry_after is None


async def test_project_without_permission_is_permanent(
        session: HttpClient, tokens: AccessTokenSource, server: FcmServer) -> None:
    provider = FcmProvider(session, tokens, project_id="someone-elses", endpoint=server.url)

    with pytest.raises(PermanentError, match="PERMISSION_DENIED") as caught:
        await provider.send(push())

    assert not isinstance(caught.value, UnregisteredDevice)


ERROR_TABLE: list[tuple[str, Scripted, type[Exception], float | None]] = [
    ("unregistered", fcm_error("UNREGISTERED"), UnregisteredDevice, None),
    ("sender-id-mismatch", fcm_error("SENDER_ID_MISMATCH"), UnregisteredDevice, None),
    ("invalid-token-field", fcm_error("INVALID_ARGUMENT", "Invalid registration token",
                                      field="message.token"), UnregisteredDevice, None),
    ("invalid-payload", fcm_error("INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'",
                                  field="message.android.ttl"), PermanentError, None),
    ("third-party-auth", fcm_error("THIRD_PARTY_AUTH_ERROR"), PermanentError, None),
    ("not-found-without-errorcode", (404, rpc_error(404, "NOT_FOUND", "Not found"), {}),
     PermanentError, None),
    ("quota-retry-after", fcm_error("QUOTA_EXCEEDED", headers={"Retry-After": "7"}),
     TransientError, 7.0),
    ("unavailable-retry-after", fcm_error("UNAVAILABLE", headers={"Retry-After": "2"}),
     TransientError, 2.0),
    ("internal", fcm_error("INTERNAL"), TransientError, None),
    ("bad-gateway-without-error-body", (502, {}, {}), TransientError, None),
]


@pytest.mark.parametrize(("answer", "expected", "retry_after"),
                         [case[1:] for case in ERROR_TABLE], ids=[c[0] for c in ERROR_TABLE])
async def test_error_answers_map_to_the_error_tree(
        provider: FcmProvider, server: FcmServer, answer: Scripted, expected: type[Exception],
        retry_after: float | None) -> None:
    server.script("device-1", [answer])

    with pytest.raises(expected) as caught:
        await provider.send(push("device-1"))

    assert type(caught.value) is expected  # exactly: PermanentError must not be UnregisteredDevice
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_third_party_auth_error_keeps_the_access_token(
        provider: FcmProvider, server: FcmServer) -> None:
    server.script("ios-device", [fcm_error("THIRD_PARTY_AUTH_ERROR")])

    with pytest.raises(PermanentError):
        await provider.send(push("ios-device"))
    await provider.send(push())

    assert server.token_requests == 1


async def test_connection_refused_is_transient_and_sending_resumes_when_fcm_is_back(
        provider: FcmProvider, server: FcmServer) -> None:
    await provider.send(push())
    server.stop()

    with pytest.raises(TransientError, match="FCM unreachable"):
        await provider.send(push())
    server.start()
    await provider.send(push())

    assert len(server.received) == 2


async def test_token_endpoint_unreachable_is_transient(
        provider: FcmProvider, server: FcmServer) -> None:
    server.stop()

    with pytest.raises(TransientError, match="token endpoint"):
        await provider.send(push())


async def test_timeout_is_transient(session: HttpClient, tokens: AccessTokenSource,
                                    server: FcmServer) -> None:
    provider = FcmProvider(session, tokens, project_id=PROJECT, endpoint=server.url, timeout=0.2)
    server.delay = 0.6

    with pytest.raises(TransientError, match="Timeout"):
        await provider.send(push())


@pytest.mark.parametrize(("header", "expected"), [
    ("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None)])
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    seconds = parse_retry_after(when)

    assert seconds is not None and 28 <= seconds <= 30
