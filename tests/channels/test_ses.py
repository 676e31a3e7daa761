"""Email over SES v2: what arrives at moto_server, what goes on the wire, and how SES's
errors become channel errors."""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.credentials import Credentials
from botocore.validate import ParamValidator
from servers.aws_errors import AwsProtocolServer, MotoDump, Reply, rest_json_error, unused_port_url

from channels.base import InvalidRecipient, Message, PermanentError, TransientError
from channels.ses import SesProvider
from transport.aws import AwsClient, AwsError
from transport.pool import HttpClient

SENDER = "no-reply@example.com"


@pytest.fixture
def verified_sender(aws: str) -> str:
    boto3.client("sesv2").create_email_identity(EmailIdentity=SENDER)
    return SENDER


def email(to: str = "user@example.org", *, unsubscribe_url: str | None = None,
          **parts: str) -> Message:
    parts = parts or {"subject": "Your app is installing", "text": "Installing Foo…",
                      "html": "<p>Installing <b>Foo</b>…</p>"}
    return Message(channel="email", to=to, parts=parts, notification_id="app#1", user_id="u1",
                   category="app-install", unsubscribe_url=unsubscribe_url)


def local_provider(http: HttpClient, url: str, **options: Any) -> SesProvider:
    client = AwsClient(http, service="sesv2", signing_name="ses", endpoint_url=url,
                       region="us-east-1", credentials=Credentials("AKID", "secret"), timeout=2)
    return SesProvider(client, sender=SENDER, **options)


def sent_to_moto(moto_data: MotoDump) -> list[dict[str, Any]]:
    ses: Any = moto_data.dump()["ses"]
    messages: list[dict[str, Any]] = ses["Message"]
    return messages


def assert_valid_send_email_request(payload: dict[str, Any]) -> None:
    """The payload fits SES v2's own model of SendEmail (botocore's service definition)."""
    model = botocore.session.get_session().get_service_model("sesv2")
    shape = model.operation_model("SendEmail").input_shape
    report = ParamValidator().validate(payload, shape)
    assert not report.has_errors(), report.generate_report()


# --- what arrives ---------------------------------------------------------------------------

async def test_email_arrives_with_sender_recipient_subject_and_html(
        verified_sender: str, moto_data: MotoDump, http: HttpClient) -> None:
    provider = SesProvider(AwsClient.from_environment(http, "sesv2"), sender=verified_sender)

    receipt = await provider.send(email(subject="설치 중: Foo ✓", text="텍스트",
                                        html="<p>설치 <b>중</b></p>"))

    [sent] = sent_to_moto(moto_data)
    assert sent["id"] == receipt.provider_message_id
    assert sent["source"] == SENDER
    assert sent["destinations"] == {"ToAddresses": ["user@example.org"]}
    assert (sent["subject"], sent["body"]) == ("설치 중: Foo ✓", "<p>설치 <b>중</b></p>")


async def test_text_only_email_arrives_with_its_text(
        verified_sender: str, moto_data: MotoDump, http: HttpClient) -> None:
    provider = SesProvider(AwsClient.from_environment(http, "sesv2"), sender=verified_sender)

    await provider.send(email(subject="Plain", text="Just text."))

    [sent] = sent_to_moto(moto_data)
    assert (sent["subject"], sent["body"]) == ("Plain", "Just text.")


async def test_all_three_parts_go_on_the_wire_in_utf8(
        http: HttpClient, server: AwsProtocolServer) -> None:
    await local_provider(http, server.url).send(email(subject="Été\n", text="t ✓", html="<p>h</p>"))

    [request] = server.requests
    assert request.raw_path == "/v2/email/outbound-emails"
    assert request.json()["Content"]["Simple"] == {
        "Subject": {"Data": "Été", "Charset": "UTF-8"},
        "Body": {"Text": {"Data": "t ✓", "Charset": "UTF-8"},
                 "Html": {"Data": "<p>h</p>", "Charset": "UTF-8"}}}
    assert_valid_send_email_request(request.json())


async def test_unsubscribe_url_sends_rfc8058_one_click_headers(
        http: HttpClient, server: AwsProtocolServer) -> None:
    url = "https://notify.example.com/v1/unsubscribe?t=abc.def"

    await local_provider(http, server.url).send(email(unsubscribe_url=url))

    payload = server.requests[0].json()
    assert payload["Content"]["Simple"]["Headers"] == [
        {"Name": "List-Unsubscribe", "Value": f"<{url}>"},
        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]
    assert_valid_send_email_request(payload)


async def test_unsubscribe_headers_are_accepted_by_moto(
        verified_sender: str, moto_data: MotoDump, http: HttpClient) -> None:
    provider = SesProvider(AwsClient.from_environment(http, "sesv2"), sender=verified_sender)

    await provider.send(email(unsubscribe_url="https://notify.example.com/u?t=1"))

    # moto 5.2.5 accepts Content.Simple.Headers but does not record them (see channels/ses.py).
    [sent] = sent_to_moto(moto_data)
    assert sent["destinations"] == {"ToAddresses": ["user@example.org"]}


async def test_no_unsubscribe_url_no_list_headers(
        http: HttpClient, server: AwsProtocolServer) -> None:
    await local_provider(http, server.url).send(email())

    assert "Headers" not in server.requests[0].json()["Content"]["Simple"]


async def test_configuration_set_is_passed(http: HttpClient,
                                           server: AwsProtocolServer) -> None:
    provider = local_provider(http, server.url, configuration_set="transactional-events")

    await provider.send(email())

    payload = server.requests[0].json()
    assert payload["ConfigurationSetName"] == "transactional-events"
    assert payload["FromEmailAddress"] == SENDER
    assert_valid_send_email_request(payload)


async def test_no_configuration_set_none_sent(http: HttpClient,
                                              server: AwsProtocolServer) -> None:
    await local_provider(http, server.url).send(email())

    assert "ConfigurationSetName" not in server.requests[0].json()


async def test_a_bulk_sends_each_recipient_its_own_request(
        http: HttpClient, server: AwsProtocolServer) -> None:
    provider = local_provider(http, server.url, configuration_set="bulk")
    other = {"subject": "Ünïcode \"quoted\"", "text": "t\n✓", "html": "<p>\u2028</p>"}
    messages = [email("a@example.org"), email("b@example.org", unsubscribe_url="https://n.example/u?t=b"),
                email("c@example.org", **other), email("d@example.org"),
                email("e@example.org", unsubscribe_url="https://n.example/u?t=e", **other)]

    for message in messages:
        await provider.send(message)

    assert [r.json() for r in server.requests] == [provider.payload(m) for m in messages]
    assert [r.body for r in server.requests] == [
        json.dumps(provider.payload(m), separators=(",", ":")).encode() for m in messages]
    assert [r.json()["Destination"]["ToAddresses"] for r in server.requests] == [
        [m.to] for m in messages]
    for request in server.requests:
        assert_valid_send_email_request(request.json())


async def test_an_incomplete_email_is_refused_every_time(
        http: HttpClient, server: AwsProtocolServer) -> None:
    provider = local_provider(http, server.url)

    for to in ("a@example.org", "b@example.org"):
        with pytest.raises(PermanentError, match="subject"):
            await provider.send(email(to, subject=" ", text="body"))
    await provider.send(email("c@example.org", subject="s", text="body"))

    assert [r.json()["Destination"]["ToAddresses"] for r in server.requests] == [["c@example.org"]]


@pytest.mark.parametrize("parts", [{"subject": "", "text": "body"}, {"subject": "s", "html": ""}])
async def test_incomplete_email_is_refused_without_a_request(
        http: HttpClient, server: AwsProtocolServer, parts: dict[str, str]) -> None:
    with pytest.raises(PermanentError):
        await local_provider(http, server.url).send(email(**parts))

    assert server.requests == []


# --- errors from moto (real SES error shapes) -----------------------------------------------

async def test_unverified_sender_is_a_permanent_error(aws: str,
                                                      http: HttpClient) -> None:
    provider = SesProvider(AwsClient.from_environment(http, "sesv2"), sender="x@unverified.example")

    with pytest.raises(PermanentError) as caught:
        await provider.send(email())

    assert type(caught.value) is PermanentError and caught.value.reason == "provider_rejected"
    assert isinstance(caught.value.__cause__, AwsError)
    assert caught.value.__cause__.code == "MessageRejected"


async def test_malformed_address_is_an_invalid_recipient(
        verified_sender: str, http: HttpClient) -> None:
    provider = SesProvider(AwsClient.from_environment(http, "sesv2"), sender=verified_sender)

    with pytest.raises(InvalidRecipient) as caught:
        await provider.send(email(to="not-an-address"))

    assert caught.value.reason == "invalid_contact"


# --- errors moto cannot produce -------------------------------------------------------------

SES_ERRORS = [
    (rest_json_error("TooManyRequestsException", "Too many requests.", 429), TransientError),
    (rest_json_error("Throttling", "Maximum sending rate exceeded.", 400), TransientError),
    (rest_json_error("LimitExceededException", "Daily message quota exceeded.", 400),
     TransientError),
    (rest_json_error("InternalFailure", "Internal failure", 500), TransientError),
    (Reply(503, b"Service Unavailable", {"Content-Type": "text/plain"}), TransientError),
    (rest_json_error("MessageRejected", "Email address is not verified. The following "
                     "identities failed the check in region US-EAST-1: user@example.org"),
     PermanentError),
    (rest_json_error("MailFromDomainNotVerifiedException", "MAIL FROM domain not verified"),
     PermanentError),
    (rest_json_error("AccountSuspendedException", "Account suspended"), PermanentError),
    (rest_json_error("SendingPausedException", "Sending paused"), PermanentError),
    (rest_json_error("NotFoundException", "Configuration set <x> does not exist.", 404),
     PermanentError),
    (rest_json_error("BadRequestException", "Subject contains invalid characters"),
     PermanentError),
    (rest_json_error("BadRequestException", f"Illegal address: {SENDER}"), PermanentError),
    (rest_json_error("BadRequestException", "Illegal address"), InvalidRecipient),
    (rest_json_error("BadRequestException", "Missing final '@domain'"), InvalidRecipient),
    (rest_json_error("InvalidParameterValue", "Local address contains control or whitespace"),
     InvalidRecipient),
]


@pytest.mark.parametrize(("reply", "expected"), SES_ERRORS,
                         ids=[f"{r.status}-{i}" for i, (r, _) in enumerate(SES_ERRORS)])
async def test_ses_errors_map_to_channel_errors(
        http: HttpClient, server: AwsProtocolServer, reply: Reply,
        expected: type[Exception]) -> None:
    server.reply(reply)

    with pytest.raises(expected) as caught:
        await local_provider(http, server.url).send(email())

    assert type(caught.value) is expected
    assert isinstance(caught.value.__cause__, AwsError)


async def test_throttling_carries_retry_after(http: HttpClient,
                                              server: AwsProtocolServer) -> None:
    server.reply(rest_json_error("TooManyRequestsException", "Too many requests.", 429,
                                 retry_after="7"))

    with pytest.raises(TransientError) as caught:
        await local_provider(http, server.url).send(email())

    assert caught.value.retry_after == 7.0


async def test_unreachable_ses_is_transient(http: HttpClient) -> None:
    provider = local_provider(http, unused_port_url())

    with pytest.raises(TransientError) as caught:
        await provider.send(email())

    assert caught.value.retry_after is None
