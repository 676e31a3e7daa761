"""Users, devices and preferences through the HTTP API; what a user token may reach."""

from __future__ import annotations

import httpx
import pytest
from support import user_token


def as_user(user_id: str, **kw: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(user_id, **kw)}"}


async def test_contact_data_is_stored_normalised(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/users/u1", json={"email": "Ann@Example.COM", "phone": "+82 10-1234-5678",
                                               "locale": "ko-KR"})
    assert r.status_code == 200
    assert (r.json()["email"], r.json()["phone"]) == ("Ann@example.com", "+821012345678")
    assert (await client.get("/v1/users/u1")).json()["phone"] == "+821012345678"


@pytest.mark.parametrize(("payload", "field"), [
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@b@c"}, "email"),
    ({"phone": "12345"}, "phone"),
    ({"phone": "+1 555"}, "phone"),
    ({"phone": "call me"}, "phone"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"locale": "not a locale!"}, "locale"),
])
async def test_invalid_contact_data_is_a_422_naming_the_field(
        client: httpx.AsyncClient, payload: dict[str, str], field: str) -> None:
    r = await client.put("/v1/users/u1", json=payload)
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith(f"{field}:")
    assert (await client.get("/v1/users/u1")).status_code == 404


async def test_devices_are_registered_and_removed(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/users/u1/devices", json={"token": "tok-1", "platform": "ios"})
    assert r.status_code == 201
    assert [d["token"] for d in (await client.get("/v1/users/u1")).json()["devices"]] == ["tok-1"]
    assert (await client.delete("/v1/users/u1/devices/tok-1")).status_code == 204
    assert (await client.delete("/v1/users/u1/devices/tok-1")).status_code == 404
    bad = await client.post("/v1/users/u1/devices", json={"token": "t", "platform": "fax"})
    assert bad.status_code == 422 and "platform" in bad.json()["error"]["message"]


async def test_preferences_put_merges(client: httpx.AsyncClient) -> None:
    await client.put("/v1/users/u1/preferences", json={"channels": {"email": False}})
    r = await client.put("/v1/users/u1/preferences",
                         json={"categories": {"marketing": {"push": False}}})
    assert r.json() == {"channels": {"email": False}, "categories": {"marketing": {"push": False}}}
    assert (await client.get("/v1/users/u1/preferences")).json() == r.json()
    bad = await client.put("/v1/users/u1/preferences", json={"channels": {"fax": True}})
    assert bad.status_code == 422 and "fax" in bad.json()["error"]["message"]


async def test_a_user_token_reaches_its_own_data_only(client: httpx.AsyncClient) -> None:
    await client.put("/v1/users/u1", json={"email": "u1@example.com"})
    await client.put("/v1/users/u2", json={"email": "u2@example.com"})
    own = await client.get("/v1/users/u1", headers=as_user("u1"))
    assert own.status_code == 200 and own.json()["email"] == "u1@example.com"
    for method, path in [("GET", "/v1/users/u2"), ("GET", "/v1/users/u2/notifications"),
                         ("PUT", "/v1/users/u2/preferences"), ("POST", "/v1/users/u2/notifications/read-all"),
                         ("GET", "/v1/users/u2/preferences")]:
        r = await client.request(method, path, headers=as_user("u1"), json={})
        assert r.status_code == 403, (method, path)
    assert (await client.put("/v1/users/u1/preferences", json={"channels": {"sms": False}},
                             headers=as_user("u1"))).status_code == 200
    # Contact data is the services' to write.
    assert (await client.put("/v1/users/u1", json={"email": "x@example.com"},
                             headers=as_user("u1"))).status_code == 403


async def test_expired_or_forged_user_tokens_are_401(client: httpx.AsyncClient) -> None:
    expired = await client.get("/v1/users/u1/notifications", headers=as_user("u1", ttl=-10))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    forged = user_token("u1", secret="another-secret-that-is-32-bytes-long!")
    r = await client.get("/v1/users/u1/notifications", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
