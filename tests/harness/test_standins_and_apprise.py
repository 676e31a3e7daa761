"""The benchmark's stand-ins speak each provider's protocol to its real clients, and count what
arrives; the ceiling client and the Apprise peer run against them (small N, a few seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3  # type: ignore[import-untyped]
import pytest

from bench.ceiling import measure_ceiling
from bench.peers.apprise_peer import run_apprise
from bench.standins import JWT_BEARER, StandIns

AWS = {"region_name": "us-east-1", "aws_access_key_id": "AKIDTEST",
       "aws_secret_access_key": "test-secret"}


@pytest.fixture(scope="module")
def server() -> Iterator[StandIns]:
    with StandIns(record=True) as standins:
        yield standins


@pytest.fixture
def standins(server: StandIns) -> StandIns:
    server.reset()
    return server


def recipients(n: int) -> list[dict[str, Any]]:
    return [{"id": f"u{i}", "email": f"u{i}@example.com", "phone": f"+8210{i:08d}",
             "token": f"tok-{i}", "locale": None} for i in range(1, n + 1)]


def test_boto3_ses_v2_ses_v1_and_sns_calls_succeed_and_are_counted(standins: StandIns) -> None:
    sesv2 = boto3.client("sesv2", endpoint_url=standins.url, **AWS)
    ses = boto3.client("ses", endpoint_url=standins.url, **AWS)
    sns = boto3.client("sns", endpoint_url=standins.url, **AWS)

    answers = [
        sesv2.send_email(FromEmailAddress="no-reply@example.com",
                         Destination={"ToAddresses": ["a@example.com"]},
                         Content={"Simple": {"Subject": {"Data": "Hi"},
                                             "Body": {"Text": {"Data": "Hello"}}}}),
        ses.send_email(Source="no-reply@example.com",
                       Destination={"ToAddresses": ["b@example.com"]},
                       Message={"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}}),
        ses.send_raw_email(RawMessage={"Data": b"To: c@example.com\r\nSubject: Hi\r\n\r\nHello"}),
        sns.publish(PhoneNumber="+821012345678", Message="Hello"),
    ]

    assert all(answer["MessageId"] for answer in answers)
    assert standins.stats() == {"email": 3, "sms": 1, "push": 0, "token": 0, "other": 0}
    assert standins.recipients() == {
        "email": {"a@example.com": 1, "b@example.com": 1, "c@example.com": 1},
        "sms": {"+821012345678": 1}, "push": {}}


async def test_fcm_sends_need_a_token_from_the_token_endpoint(standins: StandIns) -> None:
    send_url = f"{standins.url}/v1/projects/bench/messages:send"
    message = {"message": {"token": "tok-1", "notification": {"title": "Hi", "body": "Hello"}}}
    async with aiohttp.ClientSession() as session:
        async with session.post(send_url, json=message) as refused:
            assert refused.status == 401
        async with session.post(f"{standins.url}/token", data={"grant_type": JWT_BEARER}) as bad:
            assert bad.status == 400  # no assertion
        form = {"grant_type": JWT_BEARER, "assertion": "header.claims.signature"}
        async with session.post(f"{standins.url}/token", data=form) as granted:
            token = (await granted.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(send_url, json=message, headers=headers) as sent:
            assert sent.status == 200
            assert (await sent.json())["name"].startswith("projects/bench/messages/")

    assert standins.stats() == {"email": 0, "sms": 0, "push": 1, "token": 1, "other": 0}
    assert standins.recipients()["push"] == {"tok-1": 1}


def test_the_service_account_file_points_google_auth_at_the_token_endpoint(
        standins: StandIns, tmp_path: Path) -> None:
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    path = standins.write_service_account(tmp_path / "sa.json", "bench")
    load = service_account.Credentials.from_service_account_file
    credentials = load(str(path),  # type: ignore[no-untyped-call]
                       scopes=["https://www.googleapis.com/auth/firebase.messaging"])
    credentials.refresh(Request())

    assert credentials.token
    assert standins.stats()["token"] == 1


def test_the_ceiling_is_measured_for_every_channel(standins: StandIns) -> None:
    rates = measure_ceiling(standins.url, seconds=0.3, concurrency=16)

    assert set(rates) == {"email", "sms", "push"}
    assert all(rate > 0 for rate in rates.values())


def test_apprise_delivers_each_recipient_its_email_sms_and_push_once(standins: StandIns) -> None:
    users = recipients(20)

    result = run_apprise(standins, users, workers=2)

    assert (result.recipients, result.deliveries, result.errors) == (20, 60, 0)
    assert result.seconds > 0 and result.per_second > 0
    assert standins.recipients() == {
        "email": {u["email"]: 1 for u in users},
        "sms": {u["phone"]: 1 for u in users},
        "push": {u["token"]: 1 for u in users}}
