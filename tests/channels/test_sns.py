"""SMS over SNS: what arrives at moto_server, the attributes on the wire (as boto3 would send
them), the body limit, and how SNS's errors become channel errors."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.credentials import Credentials
from botocore.serialize import create_serializer
from servers.aws_errors import AwsProtocolServer, MotoDump, Reply, query_error, unused_port_url

from channels.base import InvalidRecipient, Message, PermanentError, TransientError
from channels.sns import SnsProvider, fit_sms
from transport.aws import AwsClient, AwsError
from transport.pool import HttpClient

PHONE = "+15555550100"


def sms(text: str = "Foo is installed.", *, to: str = PHONE,
        category: str = "app-install") -> Message:
    return Message(channel="sms", to=to, parts={"text": text}, notification_id="app#1",
                   user_id="u1", category=category)


def local_provider(http: HttpClient, url: str, **options: Any) -> SnsProvider:
    client = AwsClient(http, service="sns", endpoint_url=url, region="us-east-1",
                       credentials=Credentials("AKID", "secret"), timeout=2)
    return SnsProvider(client, **options)


def sent_to_moto(moto_data: MotoDump) -> list[dict[str, Any]]:
    sns: Any = moto_data.dump()["sns"]
    messages: list[dict[str, Any]] = sns["SMS"]
    return messages


def boto3_publish_form(**params: Any) -> dict[str, str]:
    """The form boto3 would POST for ``sns.publish(**params)`` (botocore's own serializer)."""
    operation = botocore.session.get_session().get_service_model("sns").operation_model("Publish")
    request = create_serializer("query").serialize_to_request(params, operation)
    body: dict[str, str] = request["body"]
    return body


# --- what arrives ---------------------------------------------------------------------------

async def test_sms_arrives_at_the_number(aws: str, moto_data: MotoDump,
                                         http: HttpClient) -> None:
    provider = SnsProvider(AwsClient.from_environment(http, "sns"))

    receipt = await provider.send(sms("Foo 설치 완료 ✓"))

    assert sent_to_moto(moto_data) == [{"message": "Foo 설치 완료 ✓", "phone_number": PHONE,
                                        "message_id": receipt.provider_message_id}]


@pytest.mark.parametrize(("category", "sms_type"), [("app-install", "Transactional"),
                                                    ("security", "Transactional"),
                                                    ("marketing", "Promotional")])
async def test_sms_type_follows_the_category(
        http: HttpClient, server: AwsProtocolServer, category: str,
        sms_type: str) -> None:
    await local_provider(http, server.url).send(sms("hello", category=category))

    assert server.requests[0].form() == boto3_publish_form(
        PhoneNumber=PHONE, Message="hello",
        MessageAttributes={"AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": sms_type}})


async def test_promotional_categories_are_configurable(
        http: HttpClient, server: AwsProtocolServer) -> None:
    provider = local_provider(http, server.url, promotional_categories=frozenset({"news", "deals"}))

    await provider.send(sms(category="deals"))
    await provider.send(sms(category="marketing"))

    types = [r.form()["MessageAttributes.entry.1.Value.StringValue"] for r in server.requests]
    assert types == ["Promotional", "Transactional"]


async def test_sender_id_is_sent_when_configured(
        http: HttpClient, server: AwsProtocolServer) -> None:
    await local_provider(http, server.url, sender_id="ACME").send(sms("hi"))

    assert server.requests[0].form() == boto3_publish_form(
        PhoneNumber=PHONE, Message="hi", MessageAttributes={
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
            "AWS.SNS.SMS.SenderID": {"DataType": "String", "StringValue": "ACME"}})


async def test_attributes_are_accepted_by_moto(aws: str, moto_data: MotoDump,
                                               http: HttpClient) -> None:
    provider = SnsProvider(AwsClient.from_environment(http, "sns"), sender_id="ACME")

    await provider.send(sms(category="marketing"))

    # moto validates the attributes but records only number and text.
    assert [m["phone_number"] for m in sent_to_moto(moto_data)] == [PHONE]


@pytest.mark.parametrize("number", ["12345", "5555550100", "+0155555501", "+1 555 555 0100",
                                    "+1-555-555-0100", "+12", "+1234567890123456", "",
                                    "tel:+15555550100"])
async def test_non_e164_numbers_are_refused_without_a_request(
        http: HttpClient, server: AwsProtocolServer, number: str) -> None:
    with pytest.raises(InvalidRecipient):
        await local_provider(http, server.url).send(sms(to=number))

    assert server.requests == []


async def test_empty_text_is_refused_without_a_request(
        http: HttpClient, server: AwsProtocolServer) -> None:
    with pytest.raises(PermanentError):
        await local_provider(http, server.url).send(sms("  "))

    assert server.requests == []


# --- the body limit -------------------------------------------------------------------------

async def test_long_text_is_truncated_to_what_sns_accepts(
        aws: str, moto_data: MotoDump, http: HttpClient) -> None:
    provider = SnsProvider(AwsClient.from_environment(http, "sns"))

    await provider.send(sms("Your code is ready. " * 100))  # 2,000 characters, GSM-7

    [sent] = sent_to_moto(moto_data)
    assert 1580 < len(sent["message"]) <= 1600
    assert sent["message"].endswith("Your code is...")


async def test_long_unicode_text_ends_with_a_single_ellipsis(
        aws: str, moto_data: MotoDump, http: HttpClient) -> None:
    provider = SnsProvider(AwsClient.from_environment(http, "sns"), max_chars=100)

    await provider.send(sms("설치가 완료되었습니다 " * 20))

    [sent] = sent_to_moto(moto_data)
    assert len(sent["message"]) == 100 and sent["message"].endswith("다 설치가…")


def test_fit_sms_keeps_gsm7_text_gsm7() -> None:
    assert fit_sms("short", 10) == "short"
    assert fit_sms("exactly 10", 10) == "exactly 10"
    assert fit_sms("Hello wonderful world", 14) == "Hello wonde..."  # no boundary near the end
    assert fit_sms("Hello wonderful world", 18) == "Hello wonderful..."
    assert fit_sms("Grüße aus Köln, €5 inklusive", 18) == "Grüße aus Köln,..."  # ü, ö, € are GSM-7
    assert fit_sms("✓ done and dusted", 10) == "✓ done an…"
    assert fit_sms("plain ascii text ✓✓✓✓✓", 15) == "plain ascii..."  # the ✓ were cut off
    assert fit_sms("設置が完了しました設置が完了しました", 10) == "設置が完了しました…"


async def test_max_chars_beyond_sns_limit_is_refused(http: HttpClient) -> None:
    with pytest.raises(ValueError, match="max_chars"):
        local_provider(http, "http://127.0.0.1:1", max_chars=2000)


# --- errors ---------------------------------------------------------------------------------

SNS_ERRORS = [
    (query_error("Throttling", "Rate exceeded"), TransientError),
    (query_error("ThrottledException", "Rate exceeded", 429), TransientError),
    (query_error("InternalError", "Internal failure", 500, kind="Receiver"), TransientError),
    (Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}), TransientError),
    (query_error("InvalidParameter", f"Invalid parameter: PhoneNumber Reason: {PHONE} is not "
                 "valid to publish to"), InvalidRecipient),
    (query_error("InvalidParameterValue", f"{PHONE} is not a valid destination"), InvalidRecipient),
    (query_error("InvalidParameter", "Invalid parameter: Message too long"), PermanentError),
    (query_error("OptedOut", "The phone number has opted out"), PermanentError),
    (query_error("EndpointDisabled", "Endpoint is disabled"), PermanentError),
    (query_error("AuthorizationError", "User is not authorized to perform SNS:Publish", 403),
     PermanentError),
]


@pytest.mark.parametrize(("reply", "expected"), SNS_ERRORS,
                         ids=[f"{r.status}-{i}" for i, (r, _) in enumerate(SNS_ERRORS)])
async def test_sns_errors_map_to_channel_errors(
        http: HttpClient, server: AwsProtocolServer, reply: Reply,
        expected: type[Exception]) -> None:
    server.reply(reply)

    with pytest.raises(expected) as caught:
        await local_provider(http, server.url).send(sms())

    assert type(caught.value) is expected
    assert isinstance(caught.value.__cause__, AwsError)


async def test_throttling_carries_retry_after(http: HttpClient,
                                              server: AwsProtocolServer) -> None:
    server.reply(query_error("ThrottledException", "Rate exceeded", 429, retry_after="2"))

    with pytest.raises(TransientError) as caught:
        await local_provider(http, server.url).send(sms())

    assert caught.value.retry_after == 2.0


async def test_unreachable_sns_is_transient(http: HttpClient) -> None:
    with pytest.raises(TransientError):
        await local_provider(http, unused_port_url()).send(sms())
