"""Template authors' API: user profile fields, per-recipient data in a bulk, previews for a user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from support import new_id

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime

GREET = {
    "default/sms.txt": "Hi {{ user.name or 'there' }}, {{ app_name }} code {{ code }}",
    "ko/sms.txt": "{{ user.name }}님, {{ app_name }} 코드 {{ code }}",
    "default/push.title.txt": "{{ app_name }}",
    "default/push.body.txt": "{{ user.attributes.plan | default('free') }} plan",
}


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    for relative, text in GREET.items():
        path = root / "greet" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
async def client(settings: Settings, templates_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    runtime = await Runtime.open(settings.model_copy(update={"templates_dir": templates_dir}))
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher",
                                 headers={"Authorization": "Bearer app-key"}) as c:
        yield c
    await runtime.close()


async def test_name_and_attributes_are_stored_and_put_merges(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/users/u1", json={"name": "Ann", "attributes": {"plan": "pro", "seats": [1, 2]}})
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["attributes"]) == ("Ann", {"plan": "pro", "seats": [1, 2]})
    await client.put("/v1/users/u1", json={"email": "ann@example.com"})  # name, attributes not given: kept
    got = (await client.get("/v1/users/u1")).json()
    assert (got["name"], got["attributes"], got["email"]) == ("Ann", {"plan": "pro", "seats": [1, 2]},
                                                             "ann@example.com")
    await client.put("/v1/users/u1", json={"attributes": {"plan": "team"}})  # given: replaced whole
    assert (await client.get("/v1/users/u1")).json()["attributes"] == {"plan": "team"}
    await client.put("/v1/users/u1", json={"name": None, "attributes": None})  # null: cleared
    got = (await client.get("/v1/users/u1")).json()
    assert (got["name"], got["attributes"]) == (None, {})


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


@pytest.mark.parametrize(("payload", "field", "says"), [
    ({"name": "x" * 201}, "name", "at most 200 characters"),
    ({"name": 5}, "name", "string"),
    ({"attributes": {"blob": "x" * 17_000}}, "attributes", "the limit is 16384"),
    ({"attributes": _deep(9)}, "attributes", "deeper than 8 levels"),
    ({"attributes": ["not", "an", "object"]}, "attributes", "dictionary"),
])
async def test_profile_bounds_are_a_422_naming_the_field(
        client: httpx.AsyncClient, payload: dict[str, object], field: str, says: str) -> None:
    r = await client.put("/v1/users/u1", json=payload)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith(f"{field}") and says in message, message
    assert (await client.get("/v1/users/u1")).status_code == 404


async def test_the_deepest_and_largest_attributes_allowed_are_stored(client: httpx.AsyncClient) -> None:
    big = {"blob": "x" * (16 * 1024 - 20)}
    assert (await client.put("/v1/users/u1", json={"attributes": _deep(8)})).status_code == 200
    assert (await client.put("/v1/users/u2", json={"attributes": big})).status_code == 200
    assert (await client.get("/v1/users/u2")).json()["attributes"] == big


def notification(recipients: list[object], **fields: object) -> dict[str, object]:
    return {"id": new_id(), "template": "greet", "recipients": recipients, "channels": ["sms"],
            "data": {"app_name": "Foo", "code": "shared"}, **fields}


async def test_recipients_with_their_own_data_are_accepted(client: httpx.AsyncClient) -> None:
    body = notification(["u1", {"id": "u2", "data": {"code": "B"}}, {"id": "u3"}, "u1"])
    r = await client.post("/v1/notifications", json=body)
    assert r.status_code == 202 and r.json()["accepted"] == 3


@pytest.mark.parametrize(("recipients", "says"), [
    ([{"id": "u1", "data": _deep(17)}], "recipients[0].data ('u1'): nested deeper than 16 levels"),
    (["u0", {"id": "u1", "data": {"blob": "x" * 70_000}}], "recipients[1].data ('u1'): is 70011 bytes"),
    ([{"id": "u1", "data": {"n": float("inf")}}], None),  # not JSON: refused by the JSON parser or the bounds
    ([{"id": "", "data": {}}], "recipients.0"),
    ([{"id": "u1", "data": {}, "extra": 1}], "recipients.0"),
    ([{"id": "u1", "data": {"code": "A"}}, {"id": "u1", "data": {"code": "B"}}],
     "user 'u1' is listed more than once with different data"),
])
async def test_bad_recipient_data_is_a_4xx_naming_the_recipient(
        client: httpx.AsyncClient, recipients: list[object], says: str | None) -> None:
    if says is None:
        content = (f'{{"id": "{new_id()}", "template": "greet", '
                   '"recipients": [{"id": "u1", "data": {"n": Infinity}}]}')
        r = await client.post("/v1/notifications", content=content,
                              headers={"Content-Type": "application/json"})
    else:
        r = await client.post("/v1/notifications", json=notification(recipients))
    assert 400 <= r.status_code < 500
    if says is not None:
        assert says in r.json()["error"]["message"], r.json()


async def test_a_part_that_fails_for_everyone_is_still_refused_at_the_gateway(client: httpx.AsyncClient) -> None:
    # push.title uses only app_name: the same for every recipient, so missing it is the request's fault
    r = await client.post("/v1/notifications", json=notification(["u1"], channels=["push"], data={}))
    assert r.status_code == 422 and "app_name" in r.json()["error"]["message"]


async def test_preview_renders_for_a_user_and_names_each_parts_locale(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/templates/greet/preview", json={
        "data": {"app_name": "Foo", "code": "7"},
        "user": {"id": "u1", "name": "지민", "locale": "ko-KR", "attributes": {"plan": "pro"}}})
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["locale"] == "ko-KR"
    assert body["channels"]["sms"] == {"text": "지민님, Foo 코드 7"}
    assert body["channels"]["push"] == {"title": "Foo", "body": "pro plan"}
    assert body["variants"] == {"sms": {"text": "ko"}, "push": {"title": "default", "body": "default"}}
    english = (await client.post("/v1/templates/greet/preview", json={
        "data": {"app_name": "Foo", "code": "7"}, "locale": "en", "channels": ["sms"]})).json()
    assert english["channels"] == {"sms": {"text": "Hi there, Foo code 7"}}
    assert english["variants"] == {"sms": {"text": "default"}}


async def test_preview_bounds_its_user(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/templates/greet/preview", json={"user": {"name": "x" * 201}})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("user.name")
    r = await client.post("/v1/templates/greet/preview", json={"user": {"attributes": _deep(9)}})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("user.attributes")
