"""The async AWS client: configuration as boto3 resolves it, SigV4 as AWS checks it, the three
wire protocols against moto_server, and error answers moto cannot give (a local server)."""

from __future__ import annotations

import asyncio
import datetime
import threading
from email.utils import format_datetime
from pathlib import Path

import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from servers.aws_errors import (
    AwsProtocolServer,
    Reply,
    json10_error,
    query_error,
    rest_json_error,
    signature_matches,
    unused_port_url,
)

from transport.aws import AwsClient, AwsConfigurationError, AwsError, AwsTransportError
from transport.pool import HttpClient

SECRET = "local-secret"
CREDENTIALS = Credentials("AKIDLOCAL", SECRET, "session-token")


def local_client(http: HttpClient, url: str, *, service: str = "sns",
                 timeout: float = 5.0, credentials: Credentials = CREDENTIALS) -> AwsClient:
    return AwsClient(http, service=service, endpoint_url=url, region="eu-west-1",
                     credentials=credentials, timeout=timeout)


def isolate_from_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS files of this machine, no instance metadata: only what the test sets."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)


# --- configuration, as boto3 resolves it ---------------------------------------------------

@pytest.mark.parametrize(("service", "signing_name"), [("sesv2", "ses"), ("sns", "sns"),
                                                       ("sqs", "sqs")])
async def test_from_environment_honours_aws_endpoint_url(
        aws: str, http: HttpClient, service: str, signing_name: str) -> None:
    client = AwsClient.from_environment(http, service)

    assert (client.endpoint_url, client.region, client.signing_name) == (
        aws, "us-east-1", signing_name)


async def test_service_specific_endpoint_wins_over_the_global_one(
        aws: str, http: HttpClient, server: AwsProtocolServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", server.url)

    sns = AwsClient.from_environment(http, "sns")
    sqs = AwsClient.from_environment(http, "sqs")
    await sns.query("Publish", {"PhoneNumber": "+15555550100", "Message": "hi"},
                    version="2010-03-31")

    assert (sns.endpoint_url, sqs.endpoint_url) == (server.url, aws)
    assert server.requests[0].form()["Action"] == "Publish"


async def test_without_an_endpoint_url_the_real_aws_endpoint_is_used(
        aws: str, http: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")

    client = AwsClient.from_environment(http, "sesv2")

    assert client.endpoint_url == "https://email.eu-central-1.amazonaws.com"
    assert client.region == "eu-central-1"


async def test_from_environment_without_a_region_fails_clearly(
        aws: str, http: HttpClient, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    isolate_from_machine(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION")

    with pytest.raises(AwsConfigurationError, match="no AWS region for sesv2.*AWS_DEFAULT_REGION"):
        AwsClient.from_environment(http, "sesv2")


async def test_from_environment_without_credentials_fails_clearly(
        aws: str, http: HttpClient, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    isolate_from_machine(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(AwsConfigurationError, match="no AWS credentials for sns"):
        AwsClient.from_environment(http, "sns")


async def test_a_profile_supplies_region_and_credentials(
        aws: str, http: HttpClient, server: AwsProtocolServer,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_from_machine(monkeypatch, tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name)
    (tmp_path / "config").write_text("[profile dispatch]\nregion = ap-northeast-2\n")
    (tmp_path / "credentials").write_text(
        "[dispatch]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "dispatch")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)

    client = AwsClient.from_environment(http, "sns")
    await client.query("Publish", {"PhoneNumber": "+15555550100", "Message": "hi"},
                       version="2010-03-31")

    assert client.region == "ap-northeast-2"
    authorization = server.requests[0].headers["authorization"]
    assert "Credential=AKIDPROFILE/" in authorization and "/ap-northeast-2/sns/" in authorization
    assert signature_matches(server.requests[0], "profile-secret")


# --- signing ------------------------------------------------------------------------------

async def test_every_protocol_is_signed_over_the_bytes_on_the_wire(
        http: HttpClient, server: AwsProtocolServer) -> None:
    client = local_client(http, server.url + "/", service="ses")

    await client.rest_json("POST", "/v2/email/outbound-emails", {"Subject": "été ✓"})
    await client.rest_json("GET", "/v2/email/identities/a%2Bb%40example.com", None)
    await client.query("Publish", {"Message": "a b&c=d ✓", "PhoneNumber": "+15555550100"},
                       version="2010-03-31")
    await client.json_target("AmazonSQS.SendMessage", {"MessageBody": "ü"})

    assert [r.raw_path for r in server.requests] == [
        "/v2/email/outbound-emails", "/v2/email/identities/a%2Bb%40example.com", "/", "/"]
    assert all(signature_matches(r, SECRET) for r in server.requests)
    assert not signature_matches(server.requests[0], "another-secret")  # the check can fail
    assert {r.headers["x-amz-security-token"] for r in server.requests} == {"session-token"}


async def test_query_parameters_arrive_as_given_however_often_they_repeat(
        http: HttpClient, server: AwsProtocolServer) -> None:
    client = local_client(http, server.url + "/")
    odd = {"Message": "50% off & more: a+b=c ✓ été\nline two", "PhoneNumber": "+15555550100",
           "MessageAttributes.entry.1.Name": "AWS.SNS.SMS.SMSType", "Empty": ""}

    for phone in ("+15555550100", "+15555550101", "+15555550100"):
        await client.query("Publish", {**odd, "PhoneNumber": phone}, version="2010-03-31")

    assert [r.form() for r in server.requests] == [
        {"Action": "Publish", "Version": "2010-03-31", **odd, "PhoneNumber": phone}
        for phone in ("+15555550100", "+15555550101", "+15555550100")]
    assert all(signature_matches(r, SECRET) for r in server.requests)


async def test_a_rest_json_body_given_as_bytes_is_sent_as_is(
        http: HttpClient, server: AwsProtocolServer) -> None:
    client = local_client(http, server.url + "/", service="ses")

    await client.rest_json("POST", "/v2/email/outbound-emails", rb'{"Subject":"\u00e9t\u00e9"}')

    assert server.requests[0].body == rb'{"Subject":"\u00e9t\u00e9"}'
    assert server.requests[0].json() == {"Subject": "été"}
    assert server.requests[0].headers["content-type"] == "application/json"
    assert signature_matches(server.requests[0], SECRET)


async def test_refreshable_credentials_are_refreshed_once_off_the_event_loop(
        http: HttpClient, server: AwsProtocolServer) -> None:
    refreshed_in: list[threading.Thread] = []

    def refresh() -> dict[str, str]:
        refreshed_in.append(threading.current_thread())
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {"access_key": "AKIDFRESH", "secret_key": "fresh-secret", "token": "fresh-token",
                "expiry_time": later.isoformat()}

    expired = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDOLD", "secret_key": "old", "token": "old-token",
         "expiry_time": "2000-01-01T00:00:00Z"}, refresh_using=refresh, method="test")
    client = local_client(http, server.url, credentials=expired)

    await asyncio.gather(*(client.json_target("AmazonSQS.SendMessage", {}) for _ in range(5)))

    assert len(refreshed_in) == 1 and refreshed_in[0] is not threading.main_thread()
    assert all("Credential=AKIDFRESH/" in r.headers["authorization"] for r in server.requests)
    assert all(signature_matches(r, "fresh-secret") for r in server.requests)


async def test_a_failed_credential_refresh_is_a_transient_transport_error(
        http: HttpClient, server: AwsProtocolServer) -> None:
    def refresh() -> dict[str, str]:
        raise ConnectionError("instance metadata service unreachable")

    expired = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIDOLD", "secret_key": "old", "token": "old-token",
         "expiry_time": "2000-01-01T00:00:00Z"}, refresh_using=refresh, method="test")

    with pytest.raises(AwsTransportError) as caught:
        await local_client(http, server.url, credentials=expired).json_target("AmazonSQS.X", {})

    assert caught.value.transient and "unreachable" in caught.value.message
    assert server.requests == []


# --- the three protocols against moto -----------------------------------------------------

async def test_sqs_json_protocol_round_trip(aws: str, http: HttpClient) -> None:
    sqs = AwsClient.from_environment(http, "sqs")
    created = await sqs.json_target("AmazonSQS.CreateQueue", {"QueueName": "chunks"})
    queue_url = created["QueueUrl"]
    bodies = ["first", "second, ünïcödé", '{"json": true}']

    sent = await sqs.json_target("AmazonSQS.SendMessageBatch", {
        "QueueUrl": queue_url,
        "Entries": [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]})
    received = await sqs.json_target("AmazonSQS.ReceiveMessage", {
        "QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0})
    deleted = await sqs.json_target("AmazonSQS.DeleteMessageBatch", {
        "QueueUrl": queue_url, "Entries": [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                           for i, m in enumerate(received["Messages"])]})

    assert len(sent["Successful"]) == 3 and not sent.get("Failed")
    assert sorted(m["Body"] for m in received["Messages"]) == sorted(bodies)
    assert len(deleted["Successful"]) == 3


async def test_sqs_error_code_comes_from_the_json_type(aws: str,
                                                       http: HttpClient) -> None:
    sqs = AwsClient.from_environment(http, "sqs")

    with pytest.raises(AwsError) as caught:
        await sqs.json_target("AmazonSQS.GetQueueUrl", {"QueueName": "missing"})

    assert (caught.value.status, caught.value.code) == (400, "QueueDoesNotExist")
    assert not caught.value.transient


async def test_query_protocol_result_and_error(aws: str, http: HttpClient) -> None:
    sns = AwsClient.from_environment(http, "sns")

    result = await sns.query("Publish", {"PhoneNumber": "+15555550100", "Message": "hello"},
                             version="2010-03-31")
    with pytest.raises(AwsError) as caught:
        await sns.query("Publish", {"PhoneNumber": "12a", "Message": "x"}, version="2010-03-31")

    assert result.tag == "PublishResult" and result.findtext("MessageId")
    assert (caught.value.status, caught.value.code) == (400, "InvalidParameter")
    assert "E164" in caught.value.message


async def test_rest_json_error_code_and_message(aws: str, http: HttpClient) -> None:
    ses = AwsClient.from_environment(http, "sesv2")

    with pytest.raises(AwsError) as caught:
        await ses.rest_json("POST", "/v2/email/outbound-emails", {
            "FromEmailAddress": "nobody@unverified.example",
            "Destination": {"ToAddresses": ["a@b.example"]},
            "Content": {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}}})

    assert (caught.value.status, caught.value.code) == (400, "MessageRejected")
    assert "nobody@unverified.example" in caught.value.message


# --- error answers moto cannot give ---------------------------------------------------------

ERROR_CASES = [
    # (protocol call, reply, status, code, transient, retry_after)
    ("rest_json", rest_json_error("TooManyRequestsException", "Too many requests", 429,
                                  retry_after="3"), 429, "TooManyRequestsException", True, 3.0),
    ("rest_json", rest_json_error("MessageRejected", "Email address is not verified.", 400),
     400, "MessageRejected", False, None),
    ("rest_json", rest_json_error("LimitExceededException", "Daily quota exceeded", 400),
     400, "LimitExceededException", True, None),
    ("query", query_error("Throttling", "Rate exceeded", 400), 400, "Throttling", True, None),
    ("query", query_error("InternalError", "Internal failure", 500, kind="Receiver",
                          retry_after="1.5"), 500, "InternalError", True, 1.5),
    ("query", query_error("AuthorizationError", "Not authorized", 403), 403,
     "AuthorizationError", False, None),
    ("json_target", json10_error("QueueDoesNotExist", "no such queue"), 400,
     "QueueDoesNotExist", False, None),
    ("json_target", Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
     502, "Unknown", True, None),
    ("query", Reply(503, b"", {}), 503, "Unknown", True, None),
]


async def call(client: AwsClient, protocol: str) -> object:
    if protocol == "rest_json":
        return await client.rest_json("POST", "/v2/email/outbound-emails", {})
    if protocol == "query":
        return await client.query("Publish", {}, version="2010-03-31")
    return await client.json_target("AmazonSQS.SendMessage", {})


@pytest.mark.parametrize(("protocol", "reply", "status", "code", "transient", "retry_after"),
                         ERROR_CASES)
async def test_error_answers_become_aws_errors(
        http: HttpClient, server: AwsProtocolServer, protocol: str, reply: Reply,
        status: int, code: str, transient: bool, retry_after: float | None) -> None:
    server.reply(reply)

    with pytest.raises(AwsError) as caught:
        await call(local_client(http, server.url), protocol)

    error = caught.value
    assert (error.status, error.code, error.transient, error.retry_after) == (
        status, code, transient, retry_after)
    assert not isinstance(error, AwsTransportError)


async def test_retry_after_as_an_http_date(http: HttpClient,
                                           server: AwsProtocolServer) -> None:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    server.reply(rest_json_error("TooManyRequestsException", "slow down", 429,
                                 retry_after=format_datetime(when, usegmt=True)))

    with pytest.raises(AwsError) as caught:
        await call(local_client(http, server.url), "rest_json")

    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


async def test_connection_refused_is_a_transport_error(http: HttpClient) -> None:
    client = local_client(http, unused_port_url())

    with pytest.raises(AwsTransportError) as caught:
        await call(client, "query")

    assert caught.value.status == 0 and caught.value.transient
    assert caught.value.code == "ConnectionRefusedError"


async def test_timeout_is_a_transport_error(http: HttpClient) -> None:
    async with AwsProtocolServer(delay=2.0) as slow:
        client = local_client(http, slow.url, timeout=0.2)
        with pytest.raises(AwsTransportError) as caught:
            await call(client, "json_target")

    assert caught.value.status == 0 and caught.value.transient
    assert caught.value.code == "TimeoutError" and "0.2 s" in caught.value.message
